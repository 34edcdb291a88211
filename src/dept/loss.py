"""The training loss every method shares (DePT, PT, LoRA, full fine-tuning), and the few logits it needs.

Causal rows are left-padded, so the last L logits of any model (DePT's [prompt ; input] layout
included) line up with the input; only the slots the loss reads are projected onto the vocabulary.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F


def logits_needed(labels: torch.Tensor) -> int:
    """Slots from one before the first labelled position to the end: all a causal loss reads
    when rows are left-padded."""
    labelled = (labels != -100).any(0).nonzero()
    first = int(labelled[0]) if len(labelled) else labels.shape[1] - 1
    return labels.shape[1] - max(first, 1) + 1


def keep_positions(keep: int, total: int, device) -> int | torch.Tensor:
    """`logits_to_keep` for a transformers model: the last `keep` positions as an index tensor.

    An int makes transformers take the view `hidden[:, -keep:]`, which is not contiguous; a linear
    layer on it whose weight needs no grad (the frozen output embedding) cannot be folded into one
    matmul and falls back to a bmm over a batch-expanded copy of the weight (batch×d×vocab: for a
    49k vocabulary, gigabytes and seconds per call on CPU). Indexing with a tensor gathers a small
    contiguous copy instead. 0 (all), 1 and `total` give foldable tensors and stay ints."""
    if keep <= 1 or keep >= total:
        return keep
    return torch.arange(total - keep, total, device=device)


def causal_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy; `labels` are aligned with `logits` slot by slot (-100 = no target)."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction=reduction,
    )


def label_count(batch: dict, kind: str) -> int:
    """How many targets `lm_loss(..., reduction="sum")` adds up for this batch."""
    labels = batch["labels"]
    if kind == "classification":
        return labels.shape[0]
    return int((labels[:, 1:] != -100).sum()) if kind == "causal" else int((labels != -100).sum())


def lm_loss(model, batch: dict, kind: str, reduction: str = "mean") -> torch.Tensor:
    """Loss on the batch's labels for any model. A DePT model is told which tokens are the source
    (label -100), so its offsets go there only, as in rank scoring and generation."""
    labels = batch["labels"]
    if kind != "causal":
        call = {k: v for k, v in batch.items() if k != "labels" or kind == "seq2seq"}
        logits = model(**call).logits
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction=reduction
        )
    keep = logits_needed(labels)
    logits = last_logits(model, batch["input_ids"], batch["attention_mask"], labels, keep)
    return causal_loss(logits, labels[:, labels.shape[1] - keep :], reduction)


def last_logits(model, input_ids, attention_mask, labels, keep: int, **extra) -> torch.Tensor:
    """The last `keep` logits of left-padded causal rows, from any model. A DePT model (possibly
    wrapped by DDP) also learns which tokens are the source (label -100): only those get offsets.
    `extra` goes to the model as is (a DePT model's `adapter_names`)."""
    call = dict(input_ids=input_ids, attention_mask=attention_mask, **extra)
    inner = getattr(model, "module", model)
    if "source_mask" in inspect.signature(inner.forward).parameters:
        call.update(source_mask=labels == -100, logits_to_keep=keep)  # a count of slots in its own layout
    else:
        call["logits_to_keep"] = keep_positions(keep, input_ids.shape[1], input_ids.device)
    return model(**call).logits[:, -keep:]
