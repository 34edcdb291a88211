"""How each kind of model is called on a batch: the training loss every method shares, the last logits
of causal rows, and the prefill that rank scoring and serving continue from.

A DePTModel is told which tokens are the source (label -100), so its offsets go there only, and
counts `logits_to_keep` in its own [prompt ; input] layout; any other model (a plain backbone, a PEFT
LoRA model, a fully fine-tuned one) gets the positions as an index tensor. Causal rows are
left-padded, so the last L logits of either line up with the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dept.core.kinds import cache_name, takes_logits_to_keep
from dept.core.loss import causal_loss, keep_positions, logits_needed
from dept.core.model import DePTModel


def unwrapped(model):
    """The model under a DDP wrapper."""
    return getattr(model, "module", model)


def label_count(batch: dict, kind: str) -> int:
    """How many targets `lm_loss(..., reduction="sum")` adds up for this batch."""
    labels = batch["labels"]
    if kind == "classification":
        return labels.shape[0]
    return int((labels[:, 1:] != -100).sum()) if kind == "causal" else int((labels != -100).sum())


def lm_loss(model, batch: dict, kind: str, reduction: str = "mean") -> torch.Tensor:
    """Loss on the batch's labels for any model."""
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
    """The last `keep` logits of left-padded causal rows. `extra` goes to the model as is (a DePT
    model's `adapter_names`)."""
    call = dict(input_ids=input_ids, attention_mask=attention_mask, **extra)
    if isinstance(unwrapped(model), DePTModel):
        call.update(source_mask=labels == -100, logits_to_keep=keep)  # a count of slots in its own layout
    else:
        call["logits_to_keep"] = keep_positions(keep, input_ids.shape[1], input_ids.device)
    return model(**call).logits[:, -keep:]


@dataclass
class Prefilled:
    """A causal model's pass over whole sources: its output (with the KV cache under `cache_arg`), the
    attention mask and position ids of that layout, and the backbone that continues the cache."""

    out: Any
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    backbone: Any
    cache_arg: str


def prefill(model, input_ids, attention_mask, adapter_names=None) -> Prefilled:
    """Sources through a causal model with a KV cache, logits of the last slot only. A DePTModel's
    cache is continued by its plain backbone: new tokens get no offsets (the source-only rule)."""
    inner = unwrapped(model)
    if isinstance(inner, DePTModel):
        out, mask, positions = inner.prefill(input_ids, attention_mask, adapter_names)
        backbone = inner.base_model
    else:
        backbone, mask = inner, attention_mask
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # under PEFT
        last = {"logits_to_keep": torch.tensor([-1], device=input_ids.device)}  # see DePTModel.generate
        keep = last if takes_logits_to_keep(base) else {}
        out = inner(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return Prefilled(out, mask, positions, backbone, cache_name(base))
