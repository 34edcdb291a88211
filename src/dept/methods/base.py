"""What every method `dept train` compares knows about itself: how to build its trainable model, its
parameter groups and rates, how to save and restore what it trained, and what its saved folders hold.

Torch-free at import (torch, transformers and peft load inside the methods that need them), so the
command line reads the registry's names and checks without paying for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from dept.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from dept.options import MethodOptions


class Method:
    """A way to adapt a backbone. Subclasses fill in what differs; the defaults are a plain
    transformers model trained at one rate (`lr`)."""

    name: str = ""
    summary: str = ""
    #: Trains a DePTModel adapter (a prompt and maybe an update): served, exported, used by --init-from.
    trains_prompt = False
    #: The rate options it trains with, which `dept tune` searches.
    searched_rates: tuple[str, ...] = ("lr",)
    #: `dept tune --search-shape` can search its prompt length m.
    searches_shape = False
    #: Its saved folder holds the backbone too (eval needs no --model).
    saves_backbone = False

    def validate(self, opts: MethodOptions) -> None:
        """Refuse options this method cannot honour (before any data or backbone loads)."""
        if opts.init_from is not None:
            raise UsageError(f"--init-from starts from a prompt adapter; --method {self.name} cannot use it.")

    def prompt_tokens(self, opts: MethodOptions) -> tuple[int, str]:
        """Positions its prompt takes ahead of the input, and the flag that sets them."""
        return 0, ""

    def backbone_dtype(self, precision: str):
        """bf16 runs keep a frozen backbone in bf16 (autocast would cast its weights every matmul anyway)."""
        import torch

        return torch.bfloat16 if precision == "bf16" else torch.float32

    def with_default_rates(self, opts: MethodOptions, backbone) -> MethodOptions:
        return opts

    def build(self, opts: MethodOptions, backbone, tokenizer, kind: str) -> nn.Module:
        raise NotImplementedError

    def check_init(self, opts: MethodOptions, model, hidden_size: int) -> None:
        """--init-from: the run's shape options must be those of the adapter it loaded."""

    def optimizer(self, opts: MethodOptions, model: nn.Module):
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW([{"params": params, "lr": opts.lr, "name": "all"}], weight_decay=0.0, eps=1e-6)

    def rates_used(self, opts: MethodOptions, kind: str) -> dict[str, Optional[float]]:
        """The rates a run trained with, as results.json records them (None: not used by this method)."""
        return {"lr_prompt": None, "lr_lowrank": None, "lr": opts.lr, "lr_head": None}

    def save(self, model: nn.Module, path: Path, tokenizer=None) -> None:
        model.save_pretrained(path)

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """Put saved weights back into the model being trained (best checkpoint, resume), in place."""
        raise NotImplementedError

    def inspect_saved(self, folder: Path) -> dict[str, Any]:
        """Check a saved folder before any backbone loads; returns what it says of itself
        (`max_length`, `kind`: None where it does not say)."""
        raise NotImplementedError

    def load_saved(self, folder: Path, backbone: Optional[str], run: dict):
        """(model, tokenizer) ready to score, from a folder this method saved."""
        raise NotImplementedError


def num_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
