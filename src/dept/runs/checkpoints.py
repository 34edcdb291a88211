"""The resumable checkpoint of a training run: written atomically, never of a diverged model, and
restored with the rates of the run that resumes it (a mixin of `dept.runs.train.Run`)."""

from __future__ import annotations

import errno
import json
import logging
import math
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError

from dept.options import UsageError
from dept.runs import rundir

logger = logging.getLogger(__name__)

# A trainable parameter whose RMS grows past this many times its starting scale (the larger of the
# backbone's embedding RMS and the parameters' own RMS at the start) has diverged: no run needs it.
DIVERGENCE_FACTOR = 1e4


def rms(param: torch.Tensor) -> float:
    """Root mean square of a tensor (inf when its squares overflow, NaN when it holds a NaN)."""
    return float(torch.linalg.vector_norm(param.detach().float())) / math.sqrt(param.numel()) if param.numel() else 0.0


class Checkpoints:
    """Needs from the run: opts, out, state, scale, saved_step, method, unwrapped, tokenizer, optimizer,
    scheduler, accelerator."""

    def _advice(self) -> str:
        fix = "lower the learning rates (--lr-prompt/--lr-lowrank/--lr) or use --precision fp32"
        if self.saved_step is None:
            return f"No checkpoint was saved yet: {fix} and rerun with --overwrite."
        return (
            f"The last checkpoint before it diverged is {self.out / rundir.CHECKPOINT} (step {self.saved_step}): "
            f"{fix} and rerun with --resume."
        )

    def _check_finite(self) -> None:
        """Never save a diverged model (NaN, inf, or exploded far past its starting scale): such a
        checkpoint would become best/ and break every --resume."""
        limit = DIVERGENCE_FACTOR * self.scale
        for name, param in self.unwrapped.named_parameters():
            size = rms(param) if param.requires_grad else 0.0
            if size <= limit:
                continue
            what = (
                "is not finite"
                if not torch.isfinite(param).all()
                else f"has exploded (RMS {size:.3g}, over {DIVERGENCE_FACTOR:g} x the starting scale {self.scale:.3g})"
            )
            raise FloatingPointError(
                f"Parameter {name} {what} after step {self.state['step']} of {self.opts.task}; it was not saved. "
                f"{self._advice()}"
            )

    def _save_checkpoint(self) -> None:
        """The resumable checkpoint (state["pending_eval"]: saved before this step's evaluation, which a
        resume then redoes)."""
        self._check_finite()
        self.saved_step = self.state["step"]
        if not self.accelerator.is_main_process:
            return

        def write(tmp: Path) -> None:
            try:
                self.method.save(self.unwrapped, tmp / "model", self.tokenizer)
                trainer_state = {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                }
                torch.save(trainer_state, tmp / "trainer_state.pt")
            except (RuntimeError, SafetensorError) as err:  # how torch and safetensors report a failed write
                raise OSError(errno.EIO, _first_line(err)) from err
            (tmp / "state.json").write_text(json.dumps(self.state))

        rundir.atomic_dir(self.out / rundir.CHECKPOINT, write)

    def _save_state(self) -> None:
        """Put this step's evaluation (best, bad_evals) into the checkpoint saved just before it."""
        self.state["pending_eval"] = False
        folder = rundir.restorable(self.out / rundir.CHECKPOINT)
        if self.accelerator.is_main_process and folder is not None:
            rundir.atomic_file(folder / "state.json", lambda tmp: tmp.write_text(json.dumps(self.state)))

    def _restore(self) -> bool:
        path = rundir.restorable(self.out / rundir.CHECKPOINT)
        if path is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
            return False
        file = path / "state.json"
        try:
            state = json.loads(file.read_text(encoding="utf-8"))
            step = state["step"]
            file = path / "trainer_state.pt"
            saved = torch.load(file, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            rng = saved["rng"]
            file = path / "model"
            self.method.load_weights(self.unwrapped, file)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise UsageError(
                f"--resume: {file} is unreadable ({_first_line(err)}); the checkpoint is torn or corrupt. "
                f"Pass --overwrite to start again, or put back a copy of {path}."
            ) from err
        self._apply_learning_rates()
        torch.set_rng_state(rng)
        self.state = state
        self.saved_step = step
        logger.info("resumed from %s at step %d", path, step)
        return True

    def _apply_learning_rates(self) -> None:
        """The restored optimizer carries the old run's rates; a --resume may change them (and max_steps),
        so put this run's rates on the restored schedule (the same numbers when nothing changed)."""
        m = self.opts.method
        rates = {"prompt": m.lr_prompt, "lowrank": m.lr_lowrank, "head": m.lr_head, "all": m.lr}
        for i, group in enumerate(self.optimizer.param_groups):
            group["initial_lr"] = self.scheduler.base_lrs[i] = rates[group["name"]]
            group["lr"] = rates[group["name"]] * self.scheduler.lr_lambdas[i](self.scheduler.last_epoch)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
