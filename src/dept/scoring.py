"""Evaluation shared by every method (DePT, PT, LoRA, full fine-tuning, zero-shot).

Rank classification scores each label string by its exact log-probability. Candidates that share
all but their last token are scored by one row (the last position's distribution covers them all),
so single-token labels cost one forward per example. Causal rows of one example (STS-B's 26 scores
take six) share one pass over the source and continue from its KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from dept.core.model import DePTModel
from dept.data import Encoded, encode, pad_batch, pad_id, target_ids
from dept.methods.calls import last_logits, prefill
from dept.precision import autocast
from dept.tasks.registry import MAX_REGRESSION_CANDIDATES, REGRESSION_STEP, regression_candidates


@dataclass
class ScoreRow:
    """One forward row: an example's source ids, the target tokens before the last (`prefix`), and the
    candidates whose last token it scores in one distribution."""

    example: int
    source: list[int]
    prefix: tuple[int, ...]
    members: list[tuple[int, int]]  # (candidate index, its last token)
    adapter: Optional[str] = None  # a DePTModel adapter name, for rows of different adapters in one batch


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def rank_scores(
    model,
    tokenizer,
    kind: str,
    sources: Sequence[str],
    candidates: Sequence[str],
    max_length: int,
    batch_size: int = 16,
    precision: str = "fp32",
    adapter_names: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """(N, C) log-probabilities of each candidate string given each source."""
    if not sources:
        return torch.empty(0, len(candidates))
    lists = [candidates] * len(sources)
    return torch.stack(
        rank_each(model, tokenizer, kind, sources, lists, max_length, batch_size, precision, adapter_names)
    )


@torch.no_grad()
def rank_each(
    model,
    tokenizer,
    kind: str,
    sources: Sequence[str],
    candidate_lists: Sequence[Sequence[str]],
    max_length: int,
    batch_size: int = 16,
    precision: str = "fp32",
    adapter_names: Optional[Sequence[str]] = None,
) -> list[torch.Tensor]:
    """Per source, the log-probabilities of its own candidate strings: sources of different tasks
    (and, through `adapter_names`, of different DePT adapters) share batches, as a server needs.
    `batch_size` counts rows, and for causal models sources (each with all its candidate rows)."""
    plans: dict[tuple[str, ...], tuple[dict, int]] = {}
    rows = []
    for i, (source, candidates) in enumerate(zip(sources, candidate_lists)):
        key = tuple(candidates)
        if key not in plans:
            plans[key] = _candidate_groups(tokenizer, key, kind)
        groups, longest = plans[key]
        src = encode(tokenizer, source, None, kind, max_length - (longest if kind == "causal" else 0)).input_ids
        adapter = adapter_names[i] if adapter_names is not None else None
        rows += [ScoreRow(i, src, prefix, members, adapter) for prefix, members in groups.items()]
    scores = [torch.full((len(c),), float("-inf")) for c in candidate_lists]
    for row, lp in score_rows(model, rows, kind, pad_id(tokenizer), batch_size, precision):
        p = len(row.prefix)
        prefix_score = sum(float(lp[k, t]) for k, t in enumerate(row.prefix))
        for c, last in row.members:
            scores[row.example][c] = prefix_score + float(lp[p, last])
    return scores


def score_rows(
    model, rows: Sequence[ScoreRow], kind: str, pad: int, batch_size: int = 16, precision: str = "fp32"
) -> Iterator[tuple[ScoreRow, torch.Tensor]]:
    """Each row with the log-softmax at the positions that predict its prefix tokens, then its last
    token. Causal rows go `batch_size` sources at a time, the rows of one source sharing its pass; a
    DePT model offsets the source tokens only. (Rank scoring, and lm-eval's `dept` model, use this.)"""
    device = next(model.parameters()).device
    chunks = _source_chunks(rows, batch_size) if kind == "causal" else _chunks(rows, batch_size)
    start = _decoder_start(model)
    for chunk in chunks:
        with autocast(device, precision):
            logprobs = _prefix_logprobs(model, chunk, kind, pad, device, start)
        yield from zip(chunk, logprobs)


def _source_chunks(rows: Sequence[ScoreRow], size: int) -> Iterator[Sequence[ScoreRow]]:
    """Rows of `size` sources at a time: rows that share a source stay together (one source pass)."""
    chunk: list[ScoreRow] = []
    sources: set = set()
    for row in rows:
        key = (row.example, row.adapter)
        if key not in sources and len(sources) == size:
            yield chunk
            chunk, sources = [], set()
        chunk.append(row)
        sources.add(key)
    if chunk:
        yield chunk


def _candidate_groups(tokenizer, candidates: Sequence[str], kind: str) -> tuple[dict, int]:
    """Candidates grouped by all but their last token (one row scores a group), and the longest one's length."""
    cand_ids = [target_ids(tokenizer, c, kind) for c in candidates]
    if any(not ids for ids in cand_ids):
        raise ValueError(f"A label string tokenizes to nothing: {list(candidates)}")
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for c, ids in enumerate(cand_ids):
        groups.setdefault(tuple(ids[:-1]), []).append((c, ids[-1]))
    return groups, max(len(ids) for ids in cand_ids)


def _decoder_start(model) -> int:
    config = getattr(model, "base_model", model).config
    config = getattr(config, "get_text_config", lambda **_: config)()
    start = getattr(config, "decoder_start_token_id", None)
    return 0 if start is None else start


def _prefix_logprobs(model, rows: Sequence[ScoreRow], kind: str, pad: int, device, start_id: int) -> list[torch.Tensor]:
    """For each row, log-softmax at the p+1 positions that predict prefix tokens then the last token."""
    names = {"adapter_names": [r.adapter for r in rows]} if rows[0].adapter is not None else {}
    if kind == "causal" and len({(r.example, r.adapter) for r in rows}) < len(rows):
        return _shared_source_logprobs(model, rows, pad, device)
    if kind == "causal":
        # Labels -100 mark the source: a DePT model offsets those tokens only, as in training.
        encoded = [Encoded(r.source + list(r.prefix), [-100] * len(r.source) + list(r.prefix)) for r in rows]
        batch = {k: v.to(device) for k, v in pad_batch(encoded, kind, pad).items()}
        keep = max(len(r.prefix) for r in rows) + 1
        logits = last_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"], keep, **names)
        lp = logits.float().log_softmax(-1)
        return [lp[i, keep - 1 - len(r.prefix) :] for i, r in enumerate(rows)]
    batch = pad_batch([Encoded(r.source, []) for r in rows], kind, pad)
    width = max(len(r.prefix) for r in rows) + 1
    decoder = torch.tensor([[start_id, *r.prefix] + [pad] * (width - 1 - len(r.prefix)) for r in rows])
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        decoder_input_ids=decoder.to(device),
        **names,
    ).logits
    lp = logits.float().log_softmax(-1)
    return [lp[i, : len(r.prefix) + 1] for i, r in enumerate(rows)]


def _shared_source_logprobs(model, rows: Sequence[ScoreRow], pad: int, device) -> list[torch.Tensor]:
    """Causal rows that share a source (candidates with different prefixes, e.g. STS-B's 26 scores
    in six rows): each source runs once and leaves a KV cache; the candidate prefixes continue from
    it. The same log-probabilities as one sequence per row (DePT offsets on the source only), at the
    cost of one source pass per example instead of one per row."""
    firsts: dict[tuple, ScoreRow] = {}
    for r in rows:
        firsts.setdefault((r.example, r.adapter), r)
    keys = list(firsts)
    batch = pad_batch([Encoded(firsts[k].source, []) for k in keys], "causal", pad)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    names = [k[1] for k in keys] if keys[0][1] is not None else None
    p = prefill(model, ids, mask, names)
    out, mask, positions, backbone, cache_arg = p.out, p.attention_mask, p.position_ids, p.backbone, p.cache_arg
    first = out.logits[:, -1].float().log_softmax(-1)
    longest = max(len(r.prefix) for r in rows)
    slot = {key: i for i, key in enumerate(keys)}
    where = torch.tensor([slot[(r.example, r.adapter)] for r in rows], device=device)
    if longest == 0:
        return [first[i][None] for i in where.tolist()]
    cache = out[cache_arg]
    cache.batch_select_indices(where)  # one copy of its source's cache per row
    prefix_mask = torch.tensor([[1] * len(r.prefix) + [0] * (longest - len(r.prefix)) for r in rows], device=device)
    tokens = torch.tensor([list(r.prefix) + [pad] * (longest - len(r.prefix)) for r in rows], device=device)
    steps = positions[where, -1:] + 1 + torch.arange(longest, device=device)
    more = (
        backbone(
            input_ids=tokens,
            attention_mask=torch.cat([mask[where], prefix_mask.to(mask.dtype)], dim=1),
            position_ids=steps,
            use_cache=True,
            **{cache_arg: cache},
        )
        .logits.float()
        .log_softmax(-1)
    )
    return [torch.cat([first[w][None], more[i, : len(r.prefix)]]) for i, (w, r) in enumerate(zip(where.tolist(), rows))]


@torch.no_grad()
def classifier_scores(
    model,
    tokenizer,
    sources: Sequence[str],
    max_length: int,
    batch_size: int = 16,
    precision: str = "fp32",
    adapter_names: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """Encoder classifiers: log-softmax of the head's logits."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        batch = pad_batch(
            [encode(tokenizer, s, None, "classification", max_length) for s in chunk],
            "classification",
            pad_id(tokenizer),
        )
        names = {"adapter_names": adapter_names[start : start + batch_size]} if adapter_names is not None else {}
        with autocast(device, precision):
            logits = model(**{k: v.to(device) for k, v in batch.items()}, **names).logits
        out.append(logits.float().log_softmax(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    kind: str,
    sources: Sequence[str],
    max_length: int,
    max_new_tokens: int = 20,
    batch_size: int = 16,
    precision: str = "fp32",
) -> list[str]:
    """Greedy generation, the paper's protocol (max 20 new tokens, exact string match)."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    texts: list[str] = []
    for chunk in _chunks(list(sources), batch_size):
        batch = pad_batch(
            [encode(tokenizer, s, None, kind, max_length - max_new_tokens * (kind == "causal")) for s in chunk],
            kind,
            pad,
        )
        with autocast(device, precision):
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        if kind == "causal" and not isinstance(model, DePTModel):
            # A plain (or LoRA) causal LM returns its input first, whatever the output's length; a
            # DePTModel generates from embeddings and returns only the new tokens.
            out = out[:, batch["input_ids"].shape[1] :]
        texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return [t.strip() for t in texts]


def candidates_for(task) -> tuple[list[str], Optional[torch.Tensor]]:
    """Label strings to rank and, for regression, the value each stands for."""
    if not task.is_regression:
        return list(task.label_words), None
    low, high = task.value_range or (0.0, 5.0)
    count = regression_candidates(low, high) if math.isfinite(high - low) else math.inf
    if count > MAX_REGRESSION_CANDIDATES:
        raise ValueError(
            f"{task.name}: its value range {low:g}..{high:g} needs {count:,} score strings to rank, over the "
            f"limit of {MAX_REGRESSION_CANDIDATES}."
        )
    values = sorted({float(task.target_fn(low + REGRESSION_STEP * i)) for i in range(count)})
    return [task.target_fn(v) for v in values], torch.tensor(values)


def evaluate(
    model,
    tokenizer,
    kind: str,
    task,
    examples: Sequence,
    max_length: int,
    scoring: str = "rank",
    batch_size: int = 16,
    precision: str = "fp32",
) -> tuple[dict[str, float], list]:
    """Metrics and per-example predictions. Regression with rank scoring reads out the expected
    value over the numeric label strings. Generation runs for the task's `max_new_tokens` where it has
    one (instruction data: its longest training completion, dept.chat), else 20 tokens."""
    if not examples:
        raise ValueError(f"No examples to evaluate for {task.name}.")
    sources = [e.source for e in examples]
    was_training = model.training
    model.eval()
    try:
        if scoring == "generate":
            new_tokens = getattr(task, "max_new_tokens", None) or 20
            predictions: list = generate_texts(
                model, tokenizer, kind, sources, max_length, new_tokens, batch_size=batch_size, precision=precision
            )
        elif kind == "classification":
            predictions = (
                classifier_scores(model, tokenizer, sources, max_length, batch_size, precision).argmax(-1).tolist()
            )
        else:
            candidates, values = candidates_for(task)
            scores = rank_scores(model, tokenizer, kind, sources, candidates, max_length, batch_size, precision)
            if values is None:
                predictions = scores.argmax(-1).tolist()
            else:
                predictions = (scores.softmax(-1) * values).sum(-1).tolist()
    finally:
        model.train(was_training)
    groups = [e.meta.get(task.group_key) for e in examples] if getattr(task, "group_key", None) else None
    return task.metrics(predictions, list(examples), groups=groups) if groups else task.metrics(
        predictions, list(examples)
    ), predictions
