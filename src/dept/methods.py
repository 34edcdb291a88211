"""The four ways to adapt a backbone that `dept train` compares: DePT and vanilla prompt tuning
(our library), LoRA (peft) and full fine-tuning (transformers). Each builds a trainable model,
its optimizer, and knows how to save and reload what it trained."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dept._extras import requires
from dept.config import DePTConfig
from dept.model import DePTModel
from dept.optim import create_optimizer
from dept.options import METHODS, MethodOptions, UsageError

logger = logging.getLogger(__name__)

LORA_TARGET_MODULES = "all-linear"


def dept_config(opts: MethodOptions, hidden_size: int) -> DePTConfig:
    """pt: l = budget tokens, r = 0. dept: m = prompt_length and the budget-matched rank unless given."""
    common = dict(max_length=opts.max_length, prompt_init=opts.prompt_init, seed=opts.seed)
    if opts.method == "pt":
        return DePTConfig(prompt_length=opts.budget, rank=0, **common)
    if opts.rank is None:
        return DePTConfig.from_budget(opts.budget, opts.prompt_length, hidden_size, **common)
    limit = min(opts.max_length, hidden_size)
    if opts.rank > limit:
        raise UsageError(
            f"--rank {opts.rank} is above min(s={opts.max_length}, d={hidden_size}) = {limit}: A·B cannot "
            f"have a higher rank; choose --rank <= {limit}."
        )
    config = DePTConfig(prompt_length=opts.prompt_length, rank=opts.rank, **common)
    used, budget = config.num_trainable(hidden_size), opts.budget * hidden_size
    if used > budget:
        # An explicit rank is the user's call; say what it costs against the budget PT would get.
        logger.warning(
            "DePT m=%d, r=%d trains %d parameters, %d over the budget of %d prompt tokens (%d parameters); "
            "leave --rank out for the budget-matched rank.",
            opts.prompt_length,
            opts.rank,
            used,
            used - budget,
            opts.budget,
            budget,
        )
    return config


def build(opts: MethodOptions, backbone, tokenizer, kind: str) -> nn.Module:
    if opts.method not in METHODS:
        raise UsageError(f"Unknown method {opts.method!r}; choose one of {', '.join(METHODS)}.")
    if opts.method in ("dept", "pt"):
        if opts.init_from:
            model = DePTModel.from_pretrained(backbone, opts.init_from, is_trainable=True, tokenizer=tokenizer)
            adapter = model.adapters[model.active_adapter]
            if opts.reset_lowrank_b and adapter.config.rank:
                with torch.no_grad():
                    adapter.lora_embedding_B.zero_()
            return model
        hidden = backbone.get_input_embeddings().weight.shape[1]
        return DePTModel(backbone, dept_config(opts, hidden), tokenizer=tokenizer)
    if opts.method == "lora":
        with requires("train"):
            from peft import get_peft_model

        return get_peft_model(backbone, lora_config(kind, opts.lora_rank))
    for param in backbone.parameters():
        param.requires_grad_(True)
    return backbone


def lora_config(kind: str, rank: int):
    """The LoRA baseline, the same in training and in `dept bench`: rank `rank` on every linear
    layer of the backbone (peft's "all-linear", output layer excluded), alpha 2r, no dropout."""
    with requires("train"):
        from peft import LoraConfig, TaskType

    task_type = {"causal": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM, "classification": TaskType.SEQ_CLS}[
        kind
    ]
    return LoraConfig(
        task_type=task_type, r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES
    )


def optimizer_for(opts: MethodOptions, model: nn.Module) -> torch.optim.Optimizer:
    if opts.method in ("dept", "pt"):
        return create_optimizer(model, opts.lr_prompt, opts.lr_lowrank, lr_head=opts.lr_head)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": params, "lr": opts.lr, "name": "all"}], weight_decay=0.0, eps=1e-6)


def save(opts: MethodOptions, model: nn.Module, path: Path, tokenizer=None) -> None:
    """dept/pt: adapter folder (safetensors + JSON); lora: peft adapter; full: the whole model."""
    model.save_pretrained(path)
    if opts.method == "full" and tokenizer is not None:
        tokenizer.save_pretrained(path)


def load_weights(opts: MethodOptions, model: nn.Module, path: Path) -> None:
    """Put saved weights back into the model being trained (best checkpoint, resume), in place."""
    if opts.method in ("dept", "pt"):
        from dept.checkpoint import fill_adapter, read_adapter

        fill_adapter(model.adapters[model.active_adapter], read_adapter(path)[1], path)
        return
    from safetensors.torch import load_file

    if opts.method == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        return
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    load_full_state(model, state, path)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every weight of the model from `state`, or an error: a silent partial load would score the last
    step's weights as the best. Keys a save leaves out because they are tied to a saved one are fine."""
    own = model.state_dict()
    result = model.load_state_dict(state, strict=False)
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        parts = [
            f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
            for what, keys in (("missing", missing), ("unexpected", result.unexpected_keys))
            if keys
        ]
        raise ValueError(
            f"{path} does not hold this model's weights: {'; '.join(parts)}. It was saved from another model."
        )


def num_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
