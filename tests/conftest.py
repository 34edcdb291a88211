"""Tiny random backbones shared by the tests: fast, offline, deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
DATA_DIR = Path(os.environ.get("DEPT_DATA_DIR", SHARED / "data"))
OFFICIAL_DIR = SHARED / "reference" / "dept-official"

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def tiny_t5(seed: int = 0, d_model: int = 32) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=100,
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(config).eval()


def tiny_bert_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture(params=["causal", "seq2seq"])
def backbone(request):
    return tiny_llama() if request.param == "causal" else tiny_t5()


@pytest.fixture
def no_backbone(monkeypatch):
    """Fail the test if a command loads a backbone: mistakes must be refused before that."""

    import dept.backbones
    import dept.runs.train

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was loaded")

    monkeypatch.setattr(dept.backbones, "load_backbone", refuse)
    monkeypatch.setattr(dept.runs.train, "load_backbone", refuse)


def randomize_update(dm, name: str = "default", seed: int = 1) -> None:
    """Give the update's zero-initialised tensors (B; ADePT's a and b too) non-zero values, so tests see it."""
    gen = torch.Generator().manual_seed(seed)
    adapter = dm.adapters[name]
    with torch.no_grad():
        adapter.lora_embedding_B.copy_(torch.randn(adapter.lora_embedding_B.shape, generator=gen))
        for key in ("lora_embedding_a", "lora_embedding_b"):
            if hasattr(adapter, key):
                getattr(adapter, key).copy_(torch.randn(getattr(adapter, key).shape, generator=gen) * 0.5)


def batch():
    """Two rows, the second right-padded; and the second row alone, unpadded."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return ids, mask


def decoder_ids(rows: int) -> torch.Tensor:
    return torch.tensor([[0, 3, 4]] * rows)


def run(dm, ids, mask=None, **kwargs):
    """Logits for the real tokens of each row: decoder logits for seq2seq, the last slots for causal."""
    if dm.kind == "seq2seq":
        return dm(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids(ids.shape[0]), **kwargs).logits
    return dm(input_ids=ids, attention_mask=mask, **kwargs).logits
