"""The causal LM loss and the few logits it needs: only the slots the loss reads are projected onto the
vocabulary. How each kind of model is called on a batch is `dept.methods.calls`."""

from __future__ import annotations

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
