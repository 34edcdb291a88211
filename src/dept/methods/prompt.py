"""The prompt methods of this library, one DePTModel each: PT (a prompt of l tokens), DePT (a shorter
prompt plus a position-wise update) and ADePT (the same with a token-wise update), at equal budgets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from dept.errors import UsageError
from dept.methods.base import Method

if TYPE_CHECKING:
    from dept.core.config import DePTConfig
    from dept.options import MethodOptions

logger = logging.getLogger(__name__)


class PromptMethod(Method):
    """A DePTModel adapter. `update` is None for prompt tuning (rank 0, the prompt is the whole budget),
    else the DePTConfig.update of the short prompt's companion, at the budget-matched rank unless given."""

    trains_prompt = True

    def __init__(self, name: str, summary: str, update: Optional[str]):
        self.name, self.summary, self.update = name, summary, update
        self.searched_rates = ("lr_prompt", "lr_lowrank") if update else ("lr_prompt",)
        self.searches_shape = update is not None

    def validate(self, opts: MethodOptions) -> None:
        if self.update and opts.rank is None and opts.prompt_length > opts.budget:
            raise UsageError(
                f"--prompt-length {opts.prompt_length} exceeds the --budget of {opts.budget} prompt tokens; "
                "choose --prompt-length <= --budget (or set --rank)."
            )
        if self.update == "position" and opts.rank is not None and opts.rank > opts.max_length:
            raise UsageError(
                f"--rank {opts.rank} is above --max-length {opts.max_length}: A (s x r) cannot have a "
                f"higher rank than s; choose --rank <= {opts.max_length}."
            )

    def prompt_tokens(self, opts: MethodOptions) -> tuple[int, str]:
        return (opts.prompt_length, "--prompt-length") if self.update else (opts.budget, "--budget")

    def config(self, opts: MethodOptions, hidden_size: int) -> DePTConfig:
        """PT: l = budget tokens, r = 0. DePT/ADePT: m = prompt_length and the budget-matched rank unless given."""
        from dept.core.config import DePTConfig

        common = dict(max_length=opts.max_length, prompt_init=opts.prompt_init, seed=opts.seed)
        if self.update is None:
            return DePTConfig(prompt_length=opts.budget, rank=0, **common)
        common["update"] = self.update
        if opts.rank is None:
            return DePTConfig.from_budget(opts.budget, opts.prompt_length, hidden_size, **common)
        # A·B (s×r)(r×d), or ReLU(e·A)·B (d×r)(r×d): the rank cannot exceed either side.
        limit = min(opts.max_length, hidden_size) if self.update == "position" else hidden_size
        if opts.rank > limit:
            raise UsageError(
                f"--rank {opts.rank} is above {limit}, the highest rank the {self.name} update can have on this "
                f"backbone (hidden size {hidden_size}); choose --rank <= {limit}."
            )
        config = DePTConfig(prompt_length=opts.prompt_length, rank=opts.rank, **common)
        used, budget = config.num_trainable(hidden_size), opts.budget * hidden_size
        if used > budget:
            # An explicit rank is the user's call; say what it costs against the budget PT would get.
            logger.warning(
                "%s m=%d, r=%d trains %d parameters, %d over the budget of %d prompt tokens (%d parameters); "
                "leave --rank out for the budget-matched rank.",
                self.name,
                opts.prompt_length,
                opts.rank,
                used,
                used - budget,
                opts.budget,
                budget,
            )
        return config

    def with_default_rates(self, opts: MethodOptions, backbone) -> MethodOptions:
        from dept.core.rates import with_default_rates

        return with_default_rates(opts, backbone)

    def build(self, opts: MethodOptions, backbone, tokenizer, kind: str):
        import torch

        from dept.core.model import DePTModel

        if not opts.init_from:
            hidden = backbone.get_input_embeddings().weight.shape[1]
            return DePTModel(backbone, self.config(opts, hidden), tokenizer=tokenizer)
        model = DePTModel.from_pretrained(backbone, opts.init_from, is_trainable=True, tokenizer=tokenizer)
        if opts.reset_lowrank_b:
            adapter = model.adapters[model.active_adapter]
            with torch.no_grad():  # the update's output side: the offsets start from zero again
                for name in ("lora_embedding_B", "lora_embedding_b"):
                    if getattr(adapter, name, None) is not None:
                        getattr(adapter, name).zero_()
        return model

    def check_init(self, opts: MethodOptions, model, hidden_size: int) -> None:
        if not opts.init_from:
            return
        loaded = model.adapters[model.active_adapter].config
        asked = self.config(opts, hidden_size)
        shape = ("prompt_length", "rank", "max_length", "update")
        if any(getattr(loaded, k) != getattr(asked, k) for k in shape if loaded.rank or k != "update"):
            flags = f"--prompt-length {loaded.prompt_length} --rank {loaded.rank}" if self.update else ""
            flags = flags or f"--budget {loaded.prompt_length}"
            raise UsageError(
                f"--init-from {opts.init_from} holds an adapter with m={loaded.prompt_length}, r={loaded.rank}, "
                f"s={loaded.max_length} ({loaded.update}-wise update), but this run's options give "
                f"m={asked.prompt_length}, r={asked.rank}, s={asked.max_length} ({asked.update}-wise); pass "
                f"{flags} --max-length {loaded.max_length} (and the --method that trained it) to continue that adapter."
            )

    def optimizer(self, opts: MethodOptions, model):
        from dept.core.optim import create_optimizer

        return create_optimizer(model, opts.lr_prompt, opts.lr_lowrank, lr_head=opts.lr_head)

    def rates_used(self, opts: MethodOptions, kind: str) -> dict[str, Optional[float]]:
        return {
            "lr_prompt": opts.lr_prompt,
            "lr_lowrank": opts.lr_lowrank if self.update else None,
            "lr": None,
            "lr_head": opts.lr_head if kind == "classification" else None,
        }

    def load_weights(self, model, path: Path) -> None:
        from dept.core.checkpoint import fill_adapter, read_adapter

        fill_adapter(model.adapters[model.active_adapter], read_adapter(path)[1], path)

    def inspect_saved(self, folder: Path) -> dict[str, Any]:
        from dept.core.checkpoint import read_adapter

        config, _, backbone = read_adapter(folder)  # names a missing, truncated, corrupt or NaN file
        return {"max_length": config.max_length, "kind": backbone.get("kind")}

    def load_saved(self, folder: Path, backbone: Optional[str], run: dict):
        from dept.backbones import load_backbone
        from dept.core.model import DePTModel

        model, tokenizer = load_backbone(backbone)
        return DePTModel.from_pretrained(model, folder, tokenizer=tokenizer), tokenizer
