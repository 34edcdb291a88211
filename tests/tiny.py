"""Tiny random models and a tokenizer for fast, offline tests.

Why: there is no model hub here, and real backbones take seconds to load.
These builders make few-kilobyte models in milliseconds so unit tests can
exercise the real transformers code paths (causal, seq2seq, classification).

    tok = make_tiny_tokenizer(tmp_path)                  # byte-level BPE, exact round-trip
    model = make_tiny_llama(tmp_path, tokenizer=tok)     # saved next to the tokenizer
    t5 = make_tiny_t5(tokenizer=make_tiny_tokenizer(pad_token="<pad>", add_eos=True))

Special-token ids are fixed: <pad>=0 (only when asked), </s>, <unk>, <s> next.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

SENTENCES = [
    "the movie was great and the actors were wonderful",
    "the film was terrible, boring and far too long",
    "premise: a man is playing a guitar. hypothesis: a person plays music.",
    "question: is the sky blue? answer: yes",
    "sentence: this is a grammatical sentence. label: acceptable",
    "Hello world! Numbers 0123456789 and symbols: ,.;:?!'\"()[]{}-_",
]


def make_tiny_tokenizer(
    path: str | os.PathLike[str] | None = None,
    *,
    vocab_size: int = 320,
    pad_token: str | None = None,
    add_eos: bool = False,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a few sentences; any text round-trips exactly.

    No pad token by default (like most decoder-only tokenizers), so loaders'
    pad handling is exercised; pass ``pad_token="<pad>"`` for T5-style use.
    ``add_eos`` appends ``</s>`` to every encoded sequence, as T5 does.
    Saved to ``path`` when given.
    """
    specials = (["<pad>"] if pad_token else []) + ["</s>", "<unk>", "<s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    if add_eos:
        eos_id = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        pad_token=pad_token,
        padding_side=padding_side,
    )
    if path is not None:
        fast.save_pretrained(path)
    return fast


def _vocab_and_ids(tokenizer: PreTrainedTokenizerFast | None, vocab_size: int) -> dict[str, Any]:
    if tokenizer is None:
        return {"vocab_size": vocab_size}
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }


def _finish(model: PreTrainedModel, path, tokenizer) -> PreTrainedModel:
    model.eval()
    if path is not None:
        model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    return model


def make_tiny_llama(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    classification: bool = False,
    num_labels: int = 2,
    vocab_size: int = 320,
    seed: int = 0,
    **config: Any,
) -> PreTrainedModel:
    """A 2-layer Llama (hidden 32) with random weights; ``classification`` gives ...ForSequenceClassification.

    Vocab and special ids come from ``tokenizer`` when given. Saved (with the
    tokenizer) to ``path`` when given. ``config`` overrides LlamaConfig fields.
    """
    fields: dict[str, Any] = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        num_labels=num_labels,
    )
    fields.update(_vocab_and_ids(tokenizer, vocab_size))
    fields.update(config)
    cfg = LlamaConfig(**fields)
    cls = LlamaForSequenceClassification if classification else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg)
    return _finish(model, path, tokenizer)


def make_tiny_t5(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    vocab_size: int = 320,
    seed: int = 0,
    **config: Any,
) -> PreTrainedModel:
    """A 2+2-layer T5 (d_model 32) with random weights; decoder starts from the pad id, as in T5.

    Use a tokenizer with ``pad_token="<pad>"`` (id 0). Saved (with the
    tokenizer) to ``path`` when given. ``config`` overrides T5Config fields.
    """
    fields: dict[str, Any] = dict(
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    fields.update(_vocab_and_ids(tokenizer, vocab_size))
    fields.pop("bos_token_id", None)
    if tokenizer is not None:
        fields["decoder_start_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fields.update(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(T5Config(**fields))
    return _finish(model, path, tokenizer)
