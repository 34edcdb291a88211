"""Text-to-text examples -> token batches, for every kind of backbone.

Causal LMs see `source` then ` target` + EOS in one sequence, loss on the target only; the source is
truncated first so the label is never cut (a defect of the official code). Encoder-decoders see
`source` in the encoder and `target` as decoder labels. Batches are padded dynamically to their
longest row, causal rows on the left so their text ends at the last slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # causal: aligned with input_ids (-100 on the source); seq2seq: decoder targets


def target_ids(tokenizer, text: str, kind: str) -> list[int]:
    """Token ids of a target; a leading space keeps the answer a separate word after the source."""
    if kind == "causal":
        return tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, source: str, target: Optional[str], kind: str, max_length: int) -> Encoded:
    """Tokenize one example, truncating the source so source + target fit in `max_length`."""
    answer = [] if target is None else target_ids(tokenizer, target, kind) + _eos(tokenizer)
    return encode_ids(tokenizer(source)["input_ids"], answer, kind, max_length)


def encode_ids(source_ids: Sequence[int], answer: Sequence[int], kind: str, max_length: int) -> Encoded:
    """One example from token ids (`answer` = target ids + EOS, or empty): causal rows are
    source + answer with the loss on the answer; otherwise the source, cut to `max_length` keeping
    its last token (the EOS an encoder was trained with), and the answer as decoder labels."""
    source_ids, answer = list(source_ids), list(answer)
    if kind == "causal":
        answer = answer[: max_length - 1]
        source_ids = source_ids[: max_length - len(answer)]
        return Encoded(source_ids + answer, [-100] * len(source_ids) + answer)
    if len(source_ids) > max_length:
        source_ids = source_ids[: max_length - 1] + source_ids[-1:]
    return Encoded(source_ids, answer)


def pad_id(tokenizer) -> int:
    """The id padding slots hold; they are masked out, so any id works when there is none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _eos(tokenizer) -> list[int]:
    return [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]


def pad_batch(
    rows: Sequence[Encoded], kind: str, pad_id: int, label_ids: Optional[Sequence[int]] = None, width: int = 0
) -> dict:
    """Stack rows into tensors, padded to the longest row (or to `width` if that is longer).
    `label_ids` replaces text labels for encoder classifiers."""
    width = max(width, *(len(r.input_ids) for r in rows))
    left = kind == "causal"

    def pad(seq: list[int], value: int, to: int) -> list[int]:
        fill = [value] * (to - len(seq))
        return fill + seq if left else seq + fill

    batch = {
        "input_ids": torch.tensor([pad(r.input_ids, pad_id, width) for r in rows]),
        "attention_mask": torch.tensor([pad([1] * len(r.input_ids), 0, width) for r in rows]),
    }
    if label_ids is not None:
        batch["labels"] = torch.tensor(list(label_ids))
    elif kind == "causal":
        batch["labels"] = torch.tensor([pad(r.labels, -100, width) for r in rows])
    elif any(r.labels for r in rows):
        target_width = max(len(r.labels) for r in rows)
        batch["labels"] = torch.tensor([r.labels + [-100] * (target_width - len(r.labels)) for r in rows])
    return batch


def count_truncated(tokenizer, examples, kind: str, max_length: int, encoded=None) -> int:
    """How many rows lose source tokens to max_length (encode() cuts the source, never the label)."""
    if encoded is None:
        encoded = [
            encode(tokenizer, e.source, None if kind == "classification" else e.target, kind, max_length)
            for e in examples
        ]
    full = tokenizer([e.source for e in examples])["input_ids"] if examples else []
    kept = [enc.labels.count(-100) if kind == "causal" else len(enc.input_ids) for enc in encoded]
    return sum(k < len(f) for k, f in zip(kept, full))


def count_long(tokenizer, sources: Sequence[str], limit: int) -> int:
    """How many sources have more than `limit` tokens (encode() cuts them to fit)."""
    return sum(len(ids) > limit for ids in tokenizer(list(sources))["input_ids"]) if sources else 0


def batch_rows(step: int, micro: int, opts, n: int, rank: int, world: int) -> list[int]:
    """Training rows for one micro-batch of one process: a deterministic walk through per-epoch
    permutations, so the global batch is the same whatever the number of processes, and a resumed run
    replays the batches an uninterrupted one would have seen. `opts`: batch_size, grad_accum, seed."""
    global_batch = opts.batch_size * opts.grad_accum
    start = step * global_batch + micro * opts.batch_size
    positions = range(start, start + opts.batch_size)
    rows = []
    cache: dict[int, torch.Tensor] = {}
    for pos in positions:
        epoch = pos // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed * 1_000_003 + epoch))
        rows.append(int(cache[epoch][pos % n]))
    return rows[rank::world]
