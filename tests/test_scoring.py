"""Rank scoring is exact; encoding never cuts the label; regression reads out an expected value."""

import pytest
import torch

from dept import DePTConfig, DePTModel
from dept.data import encode, pad_batch, target_ids
from dept.methods.calls import lm_loss
from dept.scoring import candidates_for, rank_scores
from dept.tasks import get_task

from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer

CANDIDATES = ["good", "bad", "3.8", "3.6", "4.0", "not_entailment", "entailment"]
SOURCES = ["the movie was great and the actors were wonderful", "question: is the sky blue?"]


def models():
    tok = make_tiny_tokenizer(add_eos=True)
    llama = make_tiny_llama(tokenizer=tok)
    t5 = make_tiny_t5(tokenizer=make_tiny_tokenizer(pad_token="<pad>", add_eos=True))
    t5_tok = make_tiny_tokenizer(pad_token="<pad>", add_eos=True)
    return [("causal", llama, tok), ("seq2seq", t5, t5_tok)]


def wrapped(model) -> bool:
    return isinstance(model, DePTModel)


def brute_force(model, tok, kind, source, candidate):
    """Full-sequence log-probability of one candidate, one forward per candidate."""
    enc = encode(tok, source, None, kind, 64)
    cand = target_ids(tok, candidate, kind)
    if kind == "causal":
        ids = torch.tensor([enc.input_ids + cand])
        # DePT offsets the source only: the candidate is an answer, not input.
        source_only = (
            {"source_mask": torch.tensor([[1] * len(enc.input_ids) + [0] * len(cand)])} if wrapped(model) else {}
        )
        logprobs = model(input_ids=ids, **source_only).logits[0, -len(cand) - 1 : -1].float().log_softmax(-1)
    else:
        start = model.config.decoder_start_token_id
        logprobs = (
            model(input_ids=torch.tensor([enc.input_ids]), decoder_input_ids=torch.tensor([[start] + cand[:-1]]))
            .logits[0]
            .float()
            .log_softmax(-1)
        )
    return float(sum(logprobs[i, t] for i, t in enumerate(cand)))


@pytest.mark.parametrize("case", range(2), ids=["causal", "seq2seq"])
@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "dept"])
def test_rank_scores_equal_brute_force_log_likelihood(case, wrap):
    kind, model, tok = models()[case]
    if wrap:
        model = DePTModel(model, DePTConfig(prompt_length=3, rank=2, max_length=64, prompt_init="vocab"))
        with torch.no_grad():
            model.adapters["default"].lora_embedding_B.normal_()
    with torch.no_grad():
        scores = rank_scores(model, tok, kind, SOURCES, CANDIDATES, 64, batch_size=3)
        for i, source in enumerate(SOURCES):
            for c, cand in enumerate(CANDIDATES):
                assert scores[i, c].item() == pytest.approx(brute_force(model, tok, kind, source, cand), abs=1e-4)


def test_causal_encoding_truncates_the_source_not_the_label():
    tok = make_tiny_tokenizer(add_eos=True)
    enc = encode(tok, "a very long source sentence " * 20, "not_entailment", "causal", max_length=16)
    answer = target_ids(tok, "not_entailment", "causal") + [tok.eos_token_id]
    assert len(enc.input_ids) == 16 and enc.input_ids[-len(answer) :] == answer
    assert enc.labels == [-100] * (16 - len(answer)) + answer


def test_causal_batches_are_left_padded_and_loss_uses_labels_only():
    tok = make_tiny_tokenizer(add_eos=True)
    model = make_tiny_llama(tokenizer=tok)
    rows = [encode(tok, s, "good", "causal", 64) for s in SOURCES]
    batch = pad_batch(rows, "causal", 0)
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][:, 0].all()
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(
        full[:, :-1].reshape(-1, full.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(lm_loss(model, batch, "causal"), expected)


def test_stsb_candidates_cover_the_rounded_grid():
    candidates, values = candidates_for(get_task("glue/stsb"))
    assert len(candidates) == 26 and candidates[0] == "0.0" and candidates[-1] == "5.0"
    assert values[1].item() == pytest.approx(0.2)


@pytest.mark.parametrize("wrap", ["plain", "dept", "lora", "dept-mixed"])
def test_rows_sharing_a_source_score_as_one_sequence_per_row(wrap):
    """STS-B's 26 candidates take six rows per example: in a batch those rows share one source pass
    (a KV cache); with batch_size=1 every row is its own full sequence. Both must agree."""
    tok = make_tiny_tokenizer(add_eos=True)
    model = make_tiny_llama(tokenizer=tok)
    names = None
    if wrap == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    elif wrap.startswith("dept"):
        model = DePTModel(model, DePTConfig(prompt_length=3, rank=2, max_length=64, prompt_init="vocab"))
        model.add_adapter("other", DePTConfig(prompt_length=5, rank=1, max_length=64, prompt_init="vocab", seed=2))
        with torch.no_grad():
            for adapter in model.adapters.values():
                adapter.lora_embedding_B.normal_()
        names = ["default", "other"] if wrap == "dept-mixed" else None
    candidates, _ = candidates_for(get_task("glue/stsb"))
    with torch.no_grad():
        shared = rank_scores(model, tok, "causal", SOURCES, candidates, 64, batch_size=64, adapter_names=names)
        alone = rank_scores(model, tok, "causal", SOURCES, candidates, 64, batch_size=1, adapter_names=names)
    torch.testing.assert_close(shared, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "dept"])
def test_generated_text_never_holds_the_prompt(wrap):
    """A plain causal LM returns prompt + new tokens; when every row stops at once (EOS first) the
    output is shorter than max_new_tokens, and the prompt must still be cut off."""
    from dept.scoring import generate_texts

    tok = make_tiny_tokenizer()
    model = make_tiny_llama(tokenizer=tok, tie_word_embeddings=False).eval()
    with torch.no_grad():  # every logit 0 but EOS's: greedy decoding emits EOS first
        model.lm_head.weight.zero_()
        model.model.norm.weight.fill_(1.0)
    model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([tok.eos_token_id]), 1.0))
    source = "the movie was great"
    assert len(tok(source)["input_ids"]) >= 5
    if wrap:
        model = DePTModel(model, DePTConfig(prompt_length=3, rank=2, max_length=64, prompt_init="vocab"), tokenizer=tok)
    assert generate_texts(model, tok, "causal", [source], max_length=64) == [""]
    assert generate_texts(model, tok, "causal", [source, "a longer second source text"], max_length=64) == ["", ""]
