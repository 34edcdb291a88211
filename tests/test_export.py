"""Exported prompt embeddings are exactly what DePTModel feeds its causal backbone: the backbone on
them alone gives DePTModel's logits and greedy tokens, as vLLM's `prompt_embeds` input will."""

import base64
import io
import json
import math

import pytest
import torch
from safetensors import safe_open
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel

import dept.backbones
from dept import DePTConfig, DePTModel, export_prompt_embeds
from dept.cli import main
from dept.data import encode

from conftest import randomize_update, tiny_bert_classifier
from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer

TEXTS = ["the movie was great", "question: is the sky blue? answer:", "Hello world!"]
SHORT = DePTConfig(prompt_length=3, rank=2, max_length=64, prompt_init="vocab")
LONG = DePTConfig(prompt_length=7, rank=4, max_length=48, prompt_init="random", seed=3)
ADEPT = DePTConfig(prompt_length=5, rank=3, max_length=48, prompt_init="vocab", seed=4, update="token")


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def dm(tok):
    """Three adapters with different prompt lengths and ranks (two DePT, one ADePT), all with a non-zero update."""
    model = DePTModel(make_tiny_llama(tokenizer=tok), SHORT)
    model.add_adapter("long", LONG)
    model.add_adapter("adept", ADEPT)
    randomize_update(model, "default", seed=1)
    randomize_update(model, "long", seed=2)
    randomize_update(model, "adept", seed=3)
    return model.eval()


@pytest.mark.parametrize("name, config", [("default", SHORT), ("long", LONG), ("adept", ADEPT)])
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


# ----- backbones whose embedding layer is not a plain lookup ------------------------------------------


def tiny_gemma3(tok):
    """Gemma3TextScaledWordEmbedding multiplies the lookup by sqrt(d) inside get_input_embeddings()."""
    config = Gemma3TextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=128,
        sliding_window=4,  # shorter than the prompted rows, so the sliding layer really slides
        layer_types=["sliding_attention", "full_attention"],
        **_special_ids(tok),
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def tiny_gpt2(tok):
    """GPT-2 adds its learned absolute positions (wpe) to inputs_embeds inside the model."""
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **_special_ids(tok))
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


def _special_ids(tok):
    return dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None)


def _token_rows(model, ids):
    """What the backbone's own forward starts from for `ids`, before anything position-wise is added."""
    if isinstance(model, Gemma3ForCausalLM):
        return model.get_input_embeddings().weight[ids] * math.sqrt(model.config.hidden_size)
    return model.get_input_embeddings().weight[ids]  # GPT-2: wte alone, wpe is the model's to add


@pytest.fixture(scope="module", params=[tiny_gemma3, tiny_gpt2], ids=["gemma3", "gpt2"])
def other(request, tok):
    model = DePTModel(request.param(tok), LONG)
    randomize_update(model, seed=4)
    return model


def test_other_backbones_on_the_export_are_the_dept_model(other, tok):
    """vLLM (like transformers) uses prompt_embeds as the embedding module's output: Gemma's sqrt(d) is
    in it, GPT-2's positions are not. The export must be that, and so reproduce DePTModel."""
    embeds = export_prompt_embeds(other, tok, TEXTS)
    backbone, adapter, m = other.base_model, other.adapters["default"], LONG.prompt_length
    rows = [encode(tok, text, None, "causal", LONG.max_length).input_ids for text in TEXTS]
    width = max(map(len, rows))
    padded = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():  # all texts in one left-padded batch, the real slots of each row compared below
        batch = other.prompted_inputs(padded, mask)
    for i, (row, e) in enumerate(zip(rows, embeds)):
        ids = torch.tensor([row])
        n = m + len(row)
        assert e.shape == (n, other.hidden_size) and e.dtype == backbone.dtype
        torch.testing.assert_close(e, batch.inputs_embeds[i][batch.attention_mask[i].bool()])

        with torch.no_grad():
            positions = torch.arange(len(row))
            offsets = adapter.offsets(None, positions, torch.ones_like(positions))
        assert offsets.abs().min() > 0  # a non-zero update on every token
        torch.testing.assert_close(e[:m], adapter.prompt_embeddings)
        torch.testing.assert_close(e[m:], _token_rows(backbone, ids[0]) + offsets)

        with torch.no_grad():
            expected = other(input_ids=ids, source_mask=torch.ones_like(ids)).logits
            got = backbone(inputs_embeds=e.unsqueeze(0), position_ids=torch.arange(n).unsqueeze(0)).logits
        assert got.shape == expected.shape == (1, n, other.vocab_size)
        torch.testing.assert_close(got, expected)

        options = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
        ours = other.generate(input_ids=ids, **options)
        theirs = backbone.generate(inputs_embeds=e.unsqueeze(0), pad_token_id=other._pad_token_id(), **options)
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
    # ADePT's offsets have no position table: the whole text is exported, as the model runs it.
    (embeds,) = export_prompt_embeds(dm, tok, [text], adapter_name="adept")
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        expected = dm.prompted_inputs(ids, torch.ones_like(ids), adapter_names=["adept"]).inputs_embeds[0]
    assert embeds.shape[0] == ADEPT.prompt_length + n and torch.equal(embeds, expected)


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


# ----- the command line --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, dm, tok):
    """A backbone folder (with its tokenizer) and the `long` adapter saved next to it."""
    root = tmp_path_factory.mktemp("export")
    make_tiny_llama(root / "model", tokenizer=tok)  # the same seed: the weights dm wraps
    dm.save_pretrained(root / "adapter", adapter_names=["long"])
    return root


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_function_output(saved, dm, tok, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXTS[1]}) + "\n" + TEXTS[2] + "\n")
    common = ["export-embeds", "--adapter", saved / "adapter" / "long", "--model", saved / "model"]
    common += ["--text", TEXTS[0], "--input", tmp_path / "in.jsonl"]
    expected = export_prompt_embeds(dm, tok, TEXTS, adapter_name="long")

    code, out, err = cli(capsys, *common, "--output", tmp_path / "e.safetensors")
    assert code == 0 and f"for vLLM serving {saved / 'model'}" in out, err
    with safe_open(tmp_path / "e.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["embeds.0", "embeds.1", "embeds.2"]
        meta = f.metadata()
        assert meta["count"] == "3" and meta["adapter"].endswith("long") and meta["backbone"] == str(saved / "model")
        for i, e in enumerate(expected):
            assert torch.equal(f.get_tensor(f"embeds.{i}"), e)

    code, out, err = cli(capsys, *common, "--format", "vllm-base64", "--output", tmp_path / "e.jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    for r, e in zip(rows, expected):
        assert torch.equal(torch.load(io.BytesIO(base64.b64decode(r["prompt_embeds"])), weights_only=True), e)


def test_cli_mistakes_are_one_line_before_the_backbone_loads(saved, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was loaded")

    monkeypatch.setattr(dept.backbones, "load_backbone", refuse)
    t5 = DePTModel(make_tiny_t5(tokenizer=make_tiny_tokenizer(pad_token="<pad>")), SHORT)
    t5.save_pretrained(tmp_path / "t5")
    adapter, out = saved / "adapter" / "long", tmp_path / "e.safetensors"
    for args, fragment in (
        (["--adapter", tmp_path / "t5", "--model", "x", "--text", "a", "--output", out], "decoder-only"),
        (["--adapter", adapter, "--model", "x", "--output", out], "No texts"),
        (["--adapter", adapter, "--model", "x", "--text", "a", "--output", out, "--format", "npy"], "--format"),
        (["--adapter", adapter, "--model", "x", "--text", "a", "--output", tmp_path], "--output"),
    ):
        code, _, err = cli(capsys, "export-embeds", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err


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
