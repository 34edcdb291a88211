"""Exported prompt embeddings are exactly what DePTModel feeds its causal backbone: the backbone on
them alone gives DePTModel's logits and greedy tokens, as vLLM's `prompt_embeds` input will."""

import pytest
import torch

from dept import DePTConfig, DePTModel, export_prompt_embeds
from dept.data import encode

from conftest import randomize_update, tiny_bert_classifier
from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer

TEXTS = ["the movie was great", "question: is the sky blue? answer:", "Hello world!"]
SHORT = DePTConfig(prompt_length=3, rank=2, max_length=64, prompt_init="vocab")
LONG = DePTConfig(prompt_length=7, rank=4, max_length=48, prompt_init="random", seed=3)


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def dm(tok):
    """Two adapters with different prompt lengths and ranks, both with a non-zero update."""
    model = DePTModel(make_tiny_llama(tokenizer=tok), SHORT)
    model.add_adapter("long", LONG)
    randomize_update(model, "default", seed=1)
    randomize_update(model, "long", seed=2)
    return model


@pytest.mark.parametrize("name, config", [("default", SHORT), ("long", LONG)])
def test_backbone_on_the_export_is_the_dept_model(dm, tok, name, config):
    embeds = export_prompt_embeds(dm, tok, TEXTS, adapter_name=name)
    backbone = dm.base_model
    for text, e in zip(TEXTS, embeds):
        ids = torch.tensor([encode(tok, text, None, "causal", config.max_length).input_ids])
        assert e.shape == (config.prompt_length + ids.shape[1], dm.hidden_size)
        assert e.dtype == backbone.dtype and e.device.type == "cpu" and not e.requires_grad
        with torch.no_grad():
            expected = dm(input_ids=ids, source_mask=torch.ones_like(ids), adapter_names=[name]).logits
            got = backbone(inputs_embeds=e.unsqueeze(0)).logits
        assert torch.equal(got, expected)

        options = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
        ours = dm.generate(input_ids=ids, adapter_names=[name], **options)
        theirs = backbone.generate(inputs_embeds=e.unsqueeze(0), pad_token_id=dm._pad_token_id(), **options)
        assert theirs.sequences.tolist() == ours.sequences.tolist()
        for a, b in zip(theirs.scores, ours.scores):
            torch.testing.assert_close(a, b)


def test_adapters_differ(dm, tok):
    short, long = (export_prompt_embeds(dm, tok, TEXTS[:1], adapter_name=n)[0] for n in ("default", "long"))
    assert long.shape[0] - short.shape[0] == LONG.prompt_length - SHORT.prompt_length


@pytest.mark.parametrize(
    "make", [lambda: make_tiny_t5(tokenizer=make_tiny_tokenizer(pad_token="<pad>")), tiny_bert_classifier]
)
def test_encoder_backbones_are_refused(make, tok):
    model = DePTModel(make(), DePTConfig(prompt_length=2, rank=1, max_length=16, prompt_init="vocab"))
    with pytest.raises(ValueError, match="decoder-only .* vLLM"):
        export_prompt_embeds(model, tok, ["a text"])


def test_long_text_is_refused_naming_both_lengths(dm, tok):
    text = " ".join(["the movie was great"] * 20)
    n = len(tok(text)["input_ids"])
    assert n > LONG.max_length
    with pytest.raises(ValueError, match=rf"texts\[1\] is {n} tokens .* max_length of {LONG.max_length} .*'long'"):
        export_prompt_embeds(dm, tok, ["ok", text], adapter_name="long")


def test_other_mistakes(dm, tok):
    with pytest.raises(KeyError, match="nope"):
        export_prompt_embeds(dm, tok, ["a"], adapter_name="nope")
    with pytest.raises(TypeError, match="list"):
        export_prompt_embeds(dm, tok, "a")
    with pytest.raises(ValueError, match="no tokens"):
        export_prompt_embeds(dm, tok, [""])
    broken = DePTModel(dm.base_model, SHORT)
    with torch.no_grad():
        broken.adapters["default"].prompt_embeddings[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        export_prompt_embeds(broken, tok, ["a"])


# ----- vLLM itself, where it is installed ------------------------------------------------------------------


def test_vllm_generates_what_dept_generates(tmp_path, tok):
    pytest.importorskip("vllm", reason="vllm is not installed (a multi-GB CUDA package; pip install vllm to run this)")
    from vllm import LLM, SamplingParams

    # head_dim 64: attention kernels refuse the 8 of the smaller tiny model.
    shape = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=2)
    model = DePTModel(make_tiny_llama(tmp_path, tokenizer=tok, **shape), SHORT)
    randomize_update(model)
    embeds = export_prompt_embeds(model, tok, TEXTS)
    llm = LLM(str(tmp_path), enable_prompt_embeds=True, dtype="float32", enforce_eager=True, max_model_len=128)
    outputs = llm.generate([{"prompt_embeds": e} for e in embeds], SamplingParams(temperature=0, max_tokens=4))
    for text, output in zip(TEXTS, outputs):
        ids = torch.tensor([tok(text)["input_ids"]])
        ours = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)[0].tolist()
        theirs = list(output.outputs[0].token_ids)
        stop = min(len(ours), len(theirs))
        assert theirs[:stop] == ours[:stop] and stop > 0
