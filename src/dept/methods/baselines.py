"""The baselines `dept train` runs beside the prompt methods: LoRA (peft) and full fine-tuning (transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from dept._extras import requires
from dept.errors import UsageError
from dept.methods.base import Method

LORA_TARGET_MODULES = "all-linear"


def lora_config(kind: str, rank: int):
    """The LoRA baseline, the same in training and in `dept bench`: rank `rank` on every linear
    layer of the backbone (peft's "all-linear", output layer excluded), alpha 2r, no dropout."""
    with requires("train"):
        from peft import LoraConfig, TaskType

    task_types = {"causal": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM, "classification": TaskType.SEQ_CLS}
    return LoraConfig(
        task_type=task_types[kind], r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES
    )


class LoRA(Method):
    name = "lora"
    summary = "LoRA (peft) on every linear layer"

    def build(self, opts, backbone, tokenizer, kind: str):
        with requires("train"):
            from peft import get_peft_model

        # An (in x r)(r x out) update has rank at most min(in, out); past the width it only costs memory.
        hidden_size = backbone.get_input_embeddings().weight.shape[1]
        if opts.lora_rank > hidden_size:
            raise UsageError(
                f"--lora-rank {opts.lora_rank} is above {hidden_size}, the backbone's hidden size, which bounds "
                f"the rank of its LoRA updates; choose --lora-rank <= {hidden_size}."
            )
        return get_peft_model(backbone, lora_config(kind, opts.lora_rank))

    def load_weights(self, model, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))

    def inspect_saved(self, folder: Path) -> dict[str, Any]:
        from dept.core.checkpoint import read_weights

        if not (folder / "adapter_config.json").is_file():
            raise UsageError(
                f"No adapter_config.json in {folder}; expected the LoRA adapter a --method lora run saves."
            )
        read_weights(folder)
        return {"max_length": None, "kind": None}

    def load_saved(self, folder: Path, backbone: Optional[str], run: dict):
        from dept.backbones import load_backbone

        model, tokenizer = load_backbone(backbone)
        with requires("train"):
            from peft import PeftModel

        try:
            return PeftModel.from_pretrained(model, folder), tokenizer
        except (RuntimeError, ValueError) as err:  # size mismatches, target modules the backbone lacks
            trained_on = run.get("model") or "a backbone run.json does not name"
            raise UsageError(
                f"The LoRA adapter {folder} (trained on {trained_on}) does not fit the backbone "
                f"{backbone}: {str(err).strip().splitlines()[-1].strip()}"
            ) from None


class FullFineTuning(Method):
    name = "full"
    summary = "full fine-tuning (every weight)"
    saves_backbone = True

    def backbone_dtype(self, precision: str):
        """It trains the backbone's weights, so they stay fp32 (Adam's small updates vanish in bf16)."""
        import torch

        return torch.float32

    def build(self, opts, backbone, tokenizer, kind: str):
        for param in backbone.parameters():
            param.requires_grad_(True)
        return backbone

    def save(self, model, path: Path, tokenizer=None) -> None:
        model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)

    def load_weights(self, model, path: Path) -> None:
        from safetensors.torch import load_file

        state = {}
        for file in sorted(path.glob("*.safetensors")):
            state.update(load_file(file))
        load_full_state(model, state, path)

    def inspect_saved(self, folder: Path) -> dict[str, Any]:
        if not (folder / "config.json").is_file():
            raise UsageError(f"No config.json in {folder}; a --method full run saves a whole model folder.")
        return {"max_length": None, "kind": None}

    def load_saved(self, folder: Path, backbone: Optional[str], run: dict):
        from dept.backbones import load_backbone

        return load_backbone(str(folder))


def load_full_state(model, state: dict, path: Path) -> None:
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
