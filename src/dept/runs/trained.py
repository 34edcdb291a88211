"""What `dept eval` and `dept predict` score: a trained adapter (or LoRA adapter, or fully fine-tuned
model) with the settings of the run that made it, checked before any backbone loads."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from dept.methods import get_method
from dept.options import UsageError
from dept.runs import rundir

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
        self.method = get_method((self.run.get("method") or {}).get("method", "dept"))
        saved = self.method.inspect_saved(self.adapter)
        self.max_length = saved["max_length"]  # the adapter's own s, where it says
        self.kind = saved["kind"]  # the backbone kind the adapter was saved with, where it says
        self.backbone = model or self.run.get("model")
        if self.backbone is None and not self.method.saves_backbone:
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
        """(model, tokenizer) with the trained weights: a DePTModel, a PEFT LoRA model or a full model."""
        return self.method.load_saved(self.adapter, self.backbone, self.run)


def model_kind_of(model) -> str:
    """The kind of a DePTModel, a PEFT model or a plain transformers model."""
    from dept.core.kinds import model_kind

    return getattr(model, "kind", None) or model_kind(
        model.get_base_model() if hasattr(model, "get_base_model") else model
    )
