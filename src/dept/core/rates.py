"""Default learning rates of the soft prompt and the low-rank pair, scaled to the backbone.

With Adam a parameter moves about `lr` per step whatever the size of its gradient, so a rate is
only meaningful relative to the scale of what it changes. The prompt P lives among the token
embeddings and the offsets (α/√r)·A·B are added to them, so both defaults are proportional to the
RMS of the backbone's input embeddings (what the embedding layer outputs, multipliers such as
Gemma's √d included): 0.136 on SmolLM2-135M, 1.03 on Gemma-3-270m.

The prompt constant comes from a `dept tune` search for DePT on SmolLM2-135M, SST-2, at a budget of a
few hundred steps, which is what `dept train` runs by default. That search's low-rank rate (7.5e-5)
left A·B at 1e-3 of the embeddings' scale after 300 steps, too small to matter; 10x it won on
validation on SST-2 and STS-B at 300 steps (benchmarks/quality/cpu/lowrank_rate/), while 10x and 100x the
new default lost 40 and 48 validation points on STS-B, seed 0 (benchmarks/quality/cpu/lowrank_removal/). Good rates move with the
step budget (the official T5 runs, 30k steps, use 0.3 and 1e-4); scaling both by 300 / steps did not
beat these constants at 150 or 600 steps (benchmarks/quality/cpu/budget_rule/): for long runs, tune.
LoRA's and full fine-tuning's rate does not depend on the embedding scale and keeps its constant.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

PROMPT_RATE_PER_RMS = 6.0  # lr_prompt = 6 x RMS(E)
LOWRANK_RATE_PER_RMS = 7.5e-4  # lr_lowrank = 7.5e-4 x RMS(E)


@torch.no_grad()
def embedding_rms(model: nn.Module, chunk: int = 8192) -> float:
    """RMS of the input embedding layer's output over the whole vocabulary."""
    layer = model.get_input_embeddings()
    vocab = layer.weight.shape[0]
    total, count = 0.0, 0
    for start in range(0, vocab, chunk):
        ids = torch.arange(start, min(start + chunk, vocab), device=layer.weight.device)
        rows = layer(ids).float()
        total += float((rows**2).sum())
        count += rows.numel()
    return (total / count) ** 0.5


def default_rates(rms: float) -> dict[str, float]:
    return {"lr_prompt": PROMPT_RATE_PER_RMS * rms, "lr_lowrank": LOWRANK_RATE_PER_RMS * rms}


def with_default_rates(opts, backbone: nn.Module):
    """`opts` (a dataclass with `lr_prompt` and `lr_lowrank`, e.g. dept.options.MethodOptions) with each rate
    the user left unset (None) filled in from the backbone's embedding scale."""
    missing = [name for name in ("lr_prompt", "lr_lowrank") if getattr(opts, name) is None]
    if not missing:
        return opts
    defaults = default_rates(embedding_rms(backbone))
    return dataclasses.replace(opts, **{name: float(f"{defaults[name]:.3g}") for name in missing})
