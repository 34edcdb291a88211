"""A DePTModel under transformers.Trainer and TRL's SFTTrainer, as a PEFT model trains there.

What the stock trainers would get wrong, and these classes do instead:

- one learning rate for everything: the optimizer here has DePT's groups (prompt; low-rank pair;
  a classifier's head), at `lr_prompt` / `lr_lowrank` (default: dept's rates for the backbone, as
  `dept train` uses; `TrainingArguments.learning_rate` is not used), with the arguments' AdamW betas,
  epsilon and weight decay, and the arguments' schedule on every group;
- a checkpoint of the whole state dict, frozen backbone included (a DePTModel is no PreTrainedModel):
  checkpoints and `save_model` write the adapter folder `DePTModel.from_pretrained` reads (plus the
  tokenizer and the trainer's own resume state), and `resume_from_checkpoint` / best-model loading
  put the adapter back in place;
- TRL's fused LM head patched onto the model it is given: it goes on the backbone instead, so the
  prompt and offsets still run first.

Causal rows may be padded on either side; the source tokens (label -100) get the offsets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch

from dept._extras import requires
from dept.core.model import DePTModel
from dept.core.optim import LR_HEAD, parameter_groups
from dept.core.rates import default_rates, embedding_rms
from dept.data import Encoded, pad_batch, pad_id

with requires("hf"):
    from transformers import Trainer
    from trl import SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

logger = logging.getLogger(__name__)

__all__ = ["DePTTrainer", "DePTSFTTrainer", "collator"]


class _DePTTraining:
    """What both trainers share; mixed in before the transformers/TRL class."""

    def __init__(
        self,
        *args,
        lr_prompt: Optional[float] = None,
        lr_lowrank: Optional[float] = None,
        lr_head: float = LR_HEAD,
        **kwargs,
    ):
        self.dept_rates = {"lr_prompt": lr_prompt, "lr_lowrank": lr_lowrank, "lr_head": lr_head}
        super().__init__(*args, **kwargs)
        if not isinstance(self._dept_model(), DePTModel):
            raise TypeError(f"{type(self).__name__} trains a dept.DePTModel, not a {type(self.model).__name__}.")

    def _dept_model(self, model=None) -> DePTModel:
        model = self.model if model is None else model
        return self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            dept_model = self._dept_model(model)
            rates = dict(self.dept_rates)
            if rates["lr_prompt"] is None or rates["lr_lowrank"] is None:
                defaults = default_rates(embedding_rms(dept_model.base_model))
                rates.update({k: float(f"{v:.3g}") for k, v in defaults.items() if rates[k] is None})  # as dept train
                logger.info("DePT learning rates for this backbone: %s", rates)
            self.dept_rates = rates
            groups = parameter_groups(dept_model, rates["lr_prompt"], rates["lr_lowrank"], self.args.weight_decay,
                                      lr_head=rates["lr_head"])  # fmt: skip
            self.optimizer = torch.optim.AdamW(
                groups, betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon
            )
        return self.optimizer

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        """The adapter folder, never the backbone (`state_dict`, the whole model's, is not used)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._dept_model().save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        Path(output_dir, "training_args.json").write_text(self.args.to_json_string(), encoding="utf-8")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._restore_adapter(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        self._restore_adapter(self.state.best_model_checkpoint)

    def _restore_adapter(self, folder: str, model=None) -> None:
        """The saved weights into the adapter being trained, in place (the optimizer holds its tensors)."""
        from dept.core.checkpoint import check_shapes, fill_adapter, read_adapter

        dept_model = self._dept_model(model)
        config, tensors, _ = read_adapter(Path(folder))
        check_shapes(config, tensors, dept_model.hidden_size, Path(folder))
        fill_adapter(dept_model.adapters[dept_model.active_adapter], tensors, Path(folder))
        logger.info("adapter %r restored from %s", dept_model.active_adapter, folder)


class DePTTrainer(_DePTTraining, Trainer):
    """transformers.Trainer for a DePTModel: `DePTTrainer(model=dept_model, args=..., train_dataset=...,
    data_collator=collator(tokenizer, dept_model), lr_prompt=..., lr_lowrank=...)`."""


class DePTSFTTrainer(_DePTTraining, SFTTrainer):
    """trl.SFTTrainer for a DePTModel. On prompt/completion data the loss is on the completion only, so
    the prompt tokens are the source and get the offsets (dept's source-only rule)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dept_model = self._dept_model()
        if "forward" in vars(dept_model):  # TRL patched the wrapper's forward: the fused head goes on the backbone
            del dept_model.forward
            add_fused_lm_head(dept_model.base_model, outputs=("log_probs", "entropy", "is_top1"))


def collator(tokenizer, model: DePTModel):
    """Batches padded the way `model` takes them (left for causal LMs; labels -100 on the source) from
    dept.data.Encoded rows, (Encoded, class id) pairs for classifiers (what `dept train` encodes), or
    dicts with input_ids and labels."""
    pad, kind = pad_id(tokenizer), model.kind

    def collate(rows):
        pairs = [row if isinstance(row, tuple) else (row, None) for row in rows]
        encoded = [e if isinstance(e, Encoded) else Encoded(list(e["input_ids"]), list(e["labels"])) for e, _ in pairs]
        return pad_batch(encoded, kind, pad, [c for _, c in pairs] if kind == "classification" else None)

    return collate
