"""The compared methods, built as their users build them, and the three steps that are timed.

Ours (PT l=100, DePT m=60, ADePT m=60, PT l=60) wrap the backbone without modifying it, so they share one
copy; PEFT prompt tuning, LoRA and full fine-tuning modify it (injected layers, trained weights)
and get their own. LoRA is the project's one LoRA baseline (`dept.methods.lora_config`): rank r on
every linear layer, the same as `dept train --method lora`. Dropout is off for every method: the
comparison is about cost, not regularisation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from dept._extras import requires
from dept.bench.options import METHOD_LABELS, BenchOptions
from dept.bench.workloads import Batch
from dept.precision import autocast

OURS = ("pt", "pt_m", "dept", "adept")
UPDATES = {"dept": "position", "adept": "token"}  # ours with a low-rank update, at the budget-matched rank
MODIFIES_BACKBONE = ("peft_pt", "lora", "full")  # PEFT injects layers / full FT trains weights


@dataclass
class BenchMethod:
    """A method ready to run: the module users would call, its optimizer and how to call it."""

    key: str
    label: str
    module: nn.Module
    optimizer: Optional[torch.optim.Optimizer]
    trainable: int
    extra: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def dept_rank(opts: BenchOptions, hidden_size: int, update: str = "position") -> int:
    """The budget-matched rank (DePTConfig.from_budget): DePT r = floor((l − m)·d / (s + d)), ADePT
    r = floor(((l − m)·d − d) / (2d + 1))."""
    from dept.core.config import DePTConfig

    budget = DePTConfig.from_budget(opts.budget_tokens, opts.prompt_length, hidden_size, opts.max_length, update=update)
    return budget.rank


def method_label(key: str, opts: BenchOptions, rank: int, token_rank: int = 0) -> str:
    return METHOD_LABELS[key].format(
        l=opts.budget_tokens, m=opts.prompt_length, r=rank, token_rank=token_rank, lora_rank=opts.lora_rank
    )


def _ours(backbone: nn.Module, key: str, hidden: int, opts: BenchOptions) -> nn.Module:
    from dept.core.config import DePTConfig
    from dept.core.model import DePTModel

    update = UPDATES.get(key, "position")
    config = DePTConfig(
        prompt_length=opts.budget_tokens if key == "pt" else opts.prompt_length,
        rank=dept_rank(opts, hidden, update) if key in UPDATES else 0,
        max_length=opts.max_length,
        prompt_init="vocab",
        seed=opts.seed,
        update=update,
    )
    return DePTModel(backbone, config)


def _peft(backbone: nn.Module, kind: str, key: str, opts: BenchOptions) -> nn.Module:
    from dept.methods import lora_config

    with requires("bench"):
        from peft import PromptTuningConfig, TaskType, get_peft_model

    if key == "lora":
        return get_peft_model(backbone, lora_config(kind, opts.lora_rank))
    task_type = TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_2_SEQ_LM
    return get_peft_model(backbone, PromptTuningConfig(task_type=task_type, num_virtual_tokens=opts.budget_tokens))


def _full(backbone: nn.Module) -> nn.Module:
    """Full fine-tuning keeps fp32 master weights (mixed precision comes from autocast)."""
    model = backbone.float()
    model.requires_grad_(True)
    return model


def build_method(key: str, backbone: nn.Module, kind: str, opts: BenchOptions, private_copy: bool) -> BenchMethod:
    """Wrap `backbone` for method `key`; with `private_copy`, methods that modify the backbone
    get their own copy of it."""
    from dept.core.optim import create_optimizer

    hidden = backbone.get_input_embeddings().weight.shape[1]
    rank, token_rank = dept_rank(opts, hidden), dept_rank(opts, hidden, "token")
    if key in OURS:
        module = _ours(backbone, key, hidden, opts)
    else:
        owned = copy.deepcopy(backbone) if private_copy else backbone
        module = _full(owned) if key == "full" else _peft(owned, kind, key, opts)
    module.eval()
    params = [p for p in module.parameters() if p.requires_grad]
    if key in OURS:
        optimizer = create_optimizer(module, lr_prompt=0.3, lr_lowrank=1e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=0.3 if key == "peft_pt" else 1e-4, eps=1e-6, weight_decay=0.0)
    trainable = sum(p.numel() for p in params)
    extra = {"rank": token_rank if key == "adept" else rank}
    return BenchMethod(key, method_label(key, opts, rank, token_rank), module, optimizer, trainable, extra)


# --------------------------------------------------------------------------- one step of each kind


def train_step(method: BenchMethod, batch: Batch, device: str, precision: str) -> None:
    """Forward + backward + clip + AdamW step, as a training loop runs it."""
    assert method.optimizer is not None
    method.optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = method.module(**_loss_inputs(method, batch)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
    method.optimizer.step()


def score(method: BenchMethod, batch: Batch, device: str, precision: str) -> None:
    """One scoring forward with labels, no autograd (what evaluation by loss/likelihood runs).
    Our wrapper computes logits only where labels are; PEFT and plain transformers compute every
    position's logits when given labels, as users run them."""
    with torch.no_grad(), autocast(device, precision):
        method.module(**_loss_inputs(method, batch))


def _loss_inputs(method: BenchMethod, batch: Batch) -> dict:
    """A causal DePT model is asked for the logits the loss reads only, as `dept train` does."""
    call = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    if method.key in OURS and method.module.kind == "causal":
        from dept.core.loss import logits_needed

        call["logits_to_keep"] = logits_needed(batch.labels)
    return call


def generate(method: BenchMethod, batch: Batch, device: str, precision: str, new_tokens: int) -> None:
    """Greedy generation of exactly `new_tokens` tokens per row (min = max, so eos cannot end it early)."""
    with torch.no_grad(), autocast(device, precision):
        method.module.generate(
            input_ids=batch.gen_input_ids, attention_mask=batch.gen_attention_mask, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False,
        )  # fmt: skip
