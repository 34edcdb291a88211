"""What `dept eval` and `dept predict` score: a trained adapter (or LoRA adapter, or fully fine-tuned
model) with the settings of the run that made it, checked before any backbone loads."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from dept import rundir
from dept._extras import requires
from dept.options import UsageError

logger = logging.getLogger("dept.cli")


def _run_settings(adapter: Path) -> dict:
    """The run.json of the training run that produced `adapter` (it sits in the run folder)."""
    for folder in (adapter, *adapter.parents[:2]):
        if (folder / "run.json").is_file():
            try:
                run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
            except ValueError as err:  # not JSON, or not UTF-8
                raise UsageError(f"{folder / 'run.json'} is not valid JSON ({err}).") from None
            if not isinstance(run, dict):
                raise UsageError(f"{folder / 'run.json'} does not hold a JSON object.")
            return run
    return {}


def _adapter_folder(adapter: Path) -> Path:
    """`dept eval --adapter RUN` takes the folder `dept train` printed and scores its best/."""
    if (adapter / "run.json").is_file() and not any(
        (adapter / f).is_file() for f in ("adapter_config.json", "config.json")
    ):
        if not (adapter / "best").is_dir():
            raise UsageError(
                f"{adapter} is a run folder without best/ (no evaluation has finished yet); "
                f"pass a checkpoint such as {adapter / 'checkpoint' / 'model'}."
            )
        logger.warning("%s is a run folder: using its best validation checkpoint %s", adapter, adapter / "best")
        return adapter / "best"
    return adapter


class Trained:
    """What eval and predict need to know about an adapter, checked before any backbone loads."""

    def __init__(self, adapter: Path, model: Optional[str]):
        self.adapter = _adapter_folder(adapter)
        self.run = rundir.with_split_seed(_run_settings(self.adapter))
        self.method = (self.run.get("method") or {}).get("method", "dept")
        self.max_length = None  # the adapter's own s, for dept adapters
        self.kind = None  # the backbone kind a dept adapter was saved with, where it says
        if self.method in ("dept", "pt"):
            from dept.checkpoint import read_adapter

            config, _, backbone = read_adapter(self.adapter)  # names a missing, truncated, corrupt or NaN file
            self.max_length = config.max_length
            self.kind = backbone.get("kind")
        elif self.method == "lora":
            from dept.checkpoint import read_weights

            if not (self.adapter / "adapter_config.json").is_file():
                raise UsageError(
                    f"No adapter_config.json in {self.adapter}; expected the LoRA adapter a --method lora run saves."
                )
            read_weights(self.adapter)
        elif not (self.adapter / "config.json").is_file():
            raise UsageError(f"No config.json in {self.adapter}; a --method full run saves a whole model folder.")
        self.backbone = model or self.run.get("model")
        if self.backbone is None and self.method != "full":
            raise UsageError(f"No run.json next to {self.adapter} names its backbone; pass --model.")

    def setting(self, key: str, flag: str, given, default):
        """A data setting from the run's run.json (so eval sees the run's splits); a flag overrides it, with a warning."""
        stored = (self.run.get("method") or {}).get(key) if key == "max_length" else self.run.get(key)
        if given is None:
            return stored if stored is not None else default
        if stored is not None and given != stored:
            logger.warning("%s %s overrides the run's %s=%s (run.json).", flag, given, key, stored)
        return given

    def load(self):
        """Backbone + trained weights: dept adapters, peft LoRA adapters or full models."""
        from dept.backbones import load_backbone
        from dept.model import DePTModel

        if self.method == "full":
            return load_backbone(str(self.adapter))
        backbone, tokenizer = load_backbone(self.backbone)
        if self.method == "lora":
            with requires("train"):
                from peft import PeftModel

            try:
                return PeftModel.from_pretrained(backbone, self.adapter), tokenizer
            except (RuntimeError, ValueError) as err:  # size mismatches, target modules the backbone lacks
                trained_on = self.run.get("model") or "a backbone run.json does not name"
                raise UsageError(
                    f"The LoRA adapter {self.adapter} (trained on {trained_on}) does not fit the backbone "
                    f"{self.backbone}: {str(err).strip().splitlines()[-1].strip()}"
                ) from None
        return DePTModel.from_pretrained(backbone, self.adapter, tokenizer=tokenizer), tokenizer


def model_kind_of(model) -> str:
    """The kind of a DePTModel, a PEFT model or a plain transformers model."""
    from dept.kinds import model_kind

    return getattr(model, "kind", None) or model_kind(
        model.get_base_model() if hasattr(model, "get_base_model") else model
    )
