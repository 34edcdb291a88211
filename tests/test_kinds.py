"""dept.core.kinds: a model's kind from what it is (encoder-decoder, decoder, bidirectional encoder), and
the padding side that follows from it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertLMHeadModel,
    GPT2Config,
    GPT2LMHeadModel,
    MarianConfig,
    MarianMTModel,
    PegasusConfig,
    PegasusForConditionalGeneration,
    RobertaConfig,
    RobertaForCausalLM,
    RobertaForMaskedLM,
    T5Config,
)

from dept import DePTConfig, DePTModel
from dept.backbones import load_backbone
from dept.core.kinds import kind_from_config, model_kind, pools_last_token

from conftest import randomize_update, tiny_llama, tiny_t5
from tiny import make_tiny_tokenizer

ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99)
REFUSAL = r"is a bidirectional encoder \(config\.is_decoder=False\); teacher forcing would see the answer"


def _bert(**fields) -> BertConfig:
    return BertConfig(**ENCODER, **fields)


def _roberta(**fields) -> RobertaConfig:
    return RobertaConfig(**ENCODER, pad_token_id=1, **fields)


def _build(cls, config):
    torch.manual_seed(0)
    return cls(config).eval()


# --------------------------------------------------------------------------- encoders with an LM head


ENCODER_LMS = [
    (BertForMaskedLM, _bert),
    (BertLMHeadModel, _bert),  # as AutoModelForCausalLM loads a BERT checkpoint: is_decoder stays False
    (RobertaForMaskedLM, _roberta),
    (RobertaForCausalLM, _roberta),
]


@pytest.mark.parametrize(("cls", "make_config"), ENCODER_LMS, ids=[c.__name__ for c, _ in ENCODER_LMS])
def test_encoder_with_lm_head_is_refused(cls, make_config):
    model = _build(cls, make_config())
    assert not getattr(model.config, "is_decoder", False)
    with pytest.raises(TypeError, match=REFUSAL) as info:
        model_kind(model)
    message = str(info.value)
    assert "\n" not in message and cls.__name__ in message
    assert "kind='classification'" in message and "is_decoder=True" in message
    with pytest.raises(TypeError, match=REFUSAL):
        DePTModel(model, DePTConfig(prompt_length=3, rank=2, max_length=16, prompt_init="random"))


@pytest.mark.parametrize("make_config", [_bert, _roberta], ids=["bert", "roberta"])
@pytest.mark.parametrize("arch", ["ForMaskedLM", "LMHeadModel", "ForCausalLM", None])
def test_kind_from_config_loads_an_encoder_as_classifier(make_config, arch, caplog):
    config = make_config()
    if arch is not None:
        config.architectures = [type(config).__name__.removesuffix("Config") + arch]
    with caplog.at_level(logging.INFO, logger="dept.core.kinds"):
        assert kind_from_config(config) == "classification"
    assert any("bidirectional encoder" in r.getMessage() for r in caplog.records)


def test_encoder_classifier_stays_classification():
    model = _build(BertForSequenceClassification, _bert(num_labels=3))
    assert model_kind(model) == "classification"
    assert kind_from_config(_bert(architectures=["BertForSequenceClassification"])) == "classification"
    assert not pools_last_token(model)


def test_real_bert_decoder_stays_causal():
    config = _bert(is_decoder=True, architectures=["BertLMHeadModel"])
    assert kind_from_config(config) == "causal"
    model = _build(BertLMHeadModel, config)
    assert model_kind(model) == "causal"
    assert DePTModel(model).padding_side == "left"


def test_decoders_and_encoder_decoders_keep_their_kind():
    gpt2 = _build(GPT2LMHeadModel, GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=64))
    llama = tiny_llama()
    for model in (gpt2, llama):
        assert model_kind(model) == "causal"
        assert kind_from_config(model.config) == "causal"
    assert model_kind(tiny_t5()) == "seq2seq"
    assert kind_from_config(T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8)) == "seq2seq"


def test_load_backbone_of_a_bert_folder_gives_a_classifier(tmp_path: Path, caplog):
    folder = tmp_path / "bert"
    tokenizer = make_tiny_tokenizer(pad_token="<pad>")
    config = BertConfig(**{**ENCODER, "vocab_size": len(tokenizer)}, pad_token_id=tokenizer.pad_token_id)
    _build(BertForMaskedLM, config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with caplog.at_level(logging.INFO, logger="dept"):
        model, _ = load_backbone(folder)
    assert isinstance(model, BertForSequenceClassification)
    assert model_kind(model) == "classification"
    assert any("bidirectional encoder" in r.getMessage() for r in caplog.records)
    assert DePTModel(model, DePTConfig(prompt_length=3, rank=2, max_length=16, prompt_init="random")).kind == (
        "classification"
    )
    # Forcing the causal class gives an encoder with an LM head: refused before any training.
    causal, _ = load_backbone(folder, kind="causal")
    with pytest.raises(TypeError, match=REFUSAL):
        model_kind(causal)


# --------------------------------------------------------------------------- encoder-decoder padding

SEQ2SEQ_FIELDS = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=64,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

ENCODER_DECODERS = {
    "marian": lambda: _build(MarianMTModel, MarianConfig(**SEQ2SEQ_FIELDS)),
    "pegasus": lambda: _build(PegasusForConditionalGeneration, PegasusConfig(**SEQ2SEQ_FIELDS)),
    "bart": lambda: _build(
        BartForConditionalGeneration,
        BartConfig(**{**SEQ2SEQ_FIELDS, "decoder_start_token_id": 2}, bos_token_id=2, forced_eos_token_id=None),
    ),
}


@pytest.mark.parametrize("name", list(ENCODER_DECODERS))
def test_encoder_decoder_row_alone_equals_row_in_padded_batch(name):
    model = ENCODER_DECODERS[name]()
    dm = DePTModel(model, DePTConfig(prompt_length=3, rank=2, max_length=16, prompt_init="random"))
    randomize_update(dm)
    short, long = [5, 6, 7], [10, 11, 12, 13, 14, 15, 16]

    def pad(row: list[int], value: int) -> list[int]:
        fill = [value] * (len(long) - len(row))
        return fill + row if dm.padding_side == "left" else row + fill

    ids = torch.tensor([pad(long, 0), pad(short, 0)])
    mask = torch.tensor([pad([1] * len(long), 0), pad([1] * len(short), 0)])
    start = model.config.decoder_start_token_id
    decoder = torch.tensor([[start, 3, 4, 8]] * 2)
    with torch.no_grad():
        batched = dm(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        alone = dm(input_ids=torch.tensor([short]), decoder_input_ids=decoder[:1]).logits
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=1e-5)

    gen = dict(max_new_tokens=4, do_sample=False)
    batched_tokens = dm.generate(input_ids=ids, attention_mask=mask, **gen)
    alone_tokens = dm.generate(input_ids=torch.tensor([short]), **gen)
    assert batched_tokens[1, : alone_tokens.shape[1]].tolist() == alone_tokens[0].tolist()
    # Encoder-decoders are right-padded, always: their encoder positions count from the first slot.
    assert dm.kind == "seq2seq" and dm.padding_side == "right" and not pools_last_token(model)
