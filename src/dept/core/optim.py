"""AdamW with DePT's two learning rates (prompt vs low-rank pair; a classifier head has its own) and the linear
warmup schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

# A classifier head is an ordinary linear layer, far from the prompt's scale: LoRA's kind of rate.
LR_HEAD = 1e-3  # = dept.options.MethodOptions.lr_head


def parameter_groups(
    model: nn.Module,
    lr_prompt: float,
    lr_lowrank: float,
    weight_decay: float = 0.0,
    *,
    lr_head: float = LR_HEAD,
) -> list[dict]:
    """Prompt vectors learn at `lr_prompt`, A and B at `lr_lowrank`, a classifier's trainable head
    (an ordinary linear layer, far from the prompt's scale) at `lr_head`."""
    prompt, lowrank, head = [], [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = prompt if name.endswith("prompt_embeddings") else head if ".head." in name else lowrank
            group.append(param)
    if not prompt and not lowrank and not head:
        raise ValueError("The model has no trainable parameters; call set_adapter() or load with is_trainable=True.")
    groups = [
        {"params": prompt, "lr": lr_prompt, "weight_decay": weight_decay, "name": "prompt"},
        {"params": lowrank, "lr": lr_lowrank, "weight_decay": weight_decay, "name": "lowrank"},
        {"params": head, "lr": lr_head, "weight_decay": weight_decay, "name": "head"},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(
    model: nn.Module,
    lr_prompt: float,
    lr_lowrank: float,
    weight_decay: float = 0.0,
    eps: float = 1e-6,
    *,
    lr_head: float = LR_HEAD,
) -> torch.optim.AdamW:
    groups = parameter_groups(model, lr_prompt, lr_lowrank, weight_decay, lr_head=lr_head)
    return torch.optim.AdamW(groups, eps=eps)


def create_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup to each group's lr, then linear decay to zero (the official schedule)."""
    return get_linear_schedule_with_warmup(optimizer, min(warmup_steps, total_steps), total_steps)


__all__: Iterable[str] = ["parameter_groups", "create_optimizer", "create_scheduler"]
