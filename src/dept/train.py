"""`dept train`: one training run on Accelerate, for every method and backbone kind.

A plain loop rather than transformers' Trainer: DePT needs two learning rates, rank-classification
evaluation, and adapter-only checkpoints (the Trainer would save the frozen backbone at every
checkpoint). Accelerate gives DDP/FSDP, mixed precision and device placement.

The data order is a pure function of (seed, step), so a killed run resumed from its last
checkpoint replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from dept import methods
from dept.backbones import load_backbone
from dept.data import encode, pad_batch, pad_id
from dept.model import model_kind
from dept.optim import create_scheduler
from dept.options import MethodOptions, TrainOptions
from dept.scoring import autocast, evaluate, label_count, lm_loss

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
BEST = "best"
RUN_FILE = "run.json"


__all__ = ["MethodOptions", "TrainOptions", "Run", "train", "resolve_precision"]


def resolve_precision(precision: str) -> str:
    """auto = bf16 where the hardware runs it natively (CUDA bf16, or a CPU with AVX-512 bf16/AMX)."""
    if precision != "auto":
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"--precision must be auto, bf16 or fp32, not {precision!r}.")
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def batch_rows(step: int, micro: int, opts: TrainOptions, n: int, rank: int, world: int) -> list[int]:
    """Training rows for one micro-batch of one process: a deterministic walk through per-epoch
    permutations, so the global batch is the same whatever the number of processes."""
    global_batch = opts.batch_size * opts.grad_accum
    start = step * global_batch + micro * opts.batch_size
    positions = range(start, start + opts.batch_size)
    rows = []
    cache: dict[int, torch.Tensor] = {}
    for pos in positions:
        epoch = pos // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed * 1_000_003 + epoch))
        rows.append(int(cache[epoch][pos % n]))
    return rows[rank::world]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _atomic_dir(target: Path, write) -> None:
    """Write a folder beside `target`, then swap it in: a kill leaves the old or the new one."""
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _trim_log(path: Path, step: int) -> None:
    """Drop what a killed run logged after its last checkpoint (all of it for a fresh run)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _restorable(target: Path) -> Optional[Path]:
    old = target.with_name(f".{target.name}.old")
    return target if target.exists() else (old if old.exists() else None)


class Run:
    """State of one training run; `fit()` is the whole job."""

    def __init__(self, opts: TrainOptions):
        self.opts = opts
        self.out = opts.out
        from dept.tasks import get_task

        self.task = get_task(opts.task, **opts.task_options)
        self.precision = resolve_precision(opts.precision)
        # Autocast is ours (scoring.autocast), so runs of different precision can share a process.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        set_seed(opts.seed)
        splits = self.task.load(data_dir=opts.data_dir, split_rule=opts.split_rule, seed=opts.seed)
        self.train_set = splits["train"]
        if opts.k_shot:
            from dept.tasks import k_shot

            self.train_set = k_shot(self.train_set, opts.k_shot, seed=opts.seed)
        self.val_set = splits["validation"][: opts.eval_samples] if opts.eval_samples is not None else splits["validation"]
        self.test_set = splits["test"][: opts.test_samples] if opts.test_samples is not None else splits["test"]
        for name, split in (("train", self.train_set), ("validation", self.val_set)):
            if not split:
                raise ValueError(f"The {name} split of {opts.task} is empty; check the data source.")
        self.backbone, self.tokenizer = load_backbone(opts.model)
        self.kind = model_kind(self.backbone)
        self.model = methods.build(opts.method, self.backbone, self.tokenizer, self.kind)
        if opts.gradient_checkpointing:
            target = self.model if hasattr(self.model, "gradient_checkpointing_enable") else self.backbone
            target.gradient_checkpointing_enable()
        self.encoded = [self._encode(e) for e in self.train_set]
        self.optimizer = methods.optimizer_for(opts.method, self.model)
        warmup = opts.warmup_steps if opts.warmup_steps is not None else min(500, opts.max_steps // 10)
        self.scheduler = create_scheduler(self.optimizer, warmup, opts.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.state: dict[str, Any] = {"step": 0, "best": None, "best_step": None, "bad_evals": 0, "train_seconds": 0.0,
                                      "zero_shot": None}

    # ----- pieces ------------------------------------------------------------------------------
    def _encode(self, example):
        if self.kind == "classification":
            return encode(self.tokenizer, example.source, None, self.kind, self.opts.method.max_length), example.label
        return encode(self.tokenizer, example.source, example.target, self.kind, self.opts.method.max_length), None

    def _batch(self, rows: list[int]) -> dict:
        items = [self.encoded[i] for i in rows]
        labels = [lab for _, lab in items] if self.kind == "classification" else None
        batch = pad_batch([enc for enc, _ in items], self.kind, pad_id(self.tokenizer), labels)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _evaluate(self, examples, model=None) -> dict[str, float]:
        metrics, _ = evaluate(model or self.unwrapped, self.tokenizer, self.kind, self.task, examples,
                              self.opts.method.max_length, self.opts.scoring, self.opts.eval_batch_size, self.precision)
        return metrics

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "step":
                        self.writer.add_scalar(key, value, record["step"])

    def _save_checkpoint(self) -> None:
        if not self.accelerator.is_main_process:
            return

        def write(tmp: Path) -> None:
            methods.save(self.opts.method, self.unwrapped, tmp / "model", self.tokenizer)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
            (tmp / "state.json").write_text(json.dumps(self.state))

        _atomic_dir(self.out / CHECKPOINT, write)

    def _restore(self) -> bool:
        path = _restorable(self.out / CHECKPOINT)
        if path is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
            return False
        methods.load_weights(self.opts.method, self.unwrapped, path / "model")
        saved = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        self.state = json.loads((path / "state.json").read_text())
        logger.info("resumed from %s at step %d", path, self.state["step"])
        return True

    def _eval_and_select(self) -> dict:
        metrics = {}
        if self.accelerator.is_main_process:
            metrics = self._evaluate(self.val_set)
            score = metrics[self.task.main_metric]
            if self.state["best"] is None or score > self.state["best"]:
                self.state.update(best=score, best_step=self.state["step"], best_metrics=metrics, bad_evals=0)
                _atomic_dir(self.out / BEST, lambda tmp: methods.save(self.opts.method, self.unwrapped, tmp, self.tokenizer))
            else:
                self.state["bad_evals"] += 1
            self._log({"step": self.state["step"], **{f"val_{k}": v for k, v in metrics.items()}})
        self.state = self._broadcast(self.state)
        return metrics

    def _broadcast(self, obj):
        if self.accelerator.num_processes == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    # ----- the job -----------------------------------------------------------------------------
    def fit(self) -> dict:
        opts = self.opts
        self.out.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if opts.tensorboard and self.accelerator.is_main_process:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
            self.writer = SummaryWriter(self.out / "tensorboard")
        if self.accelerator.is_main_process:
            (self.out / RUN_FILE).write_text(json.dumps(_jsonable(opts), indent=2))
        resumed = opts.resume and self._restore()
        if self.accelerator.is_main_process:
            _trim_log(self.out / "metrics.jsonl", self.state["step"])
        if opts.zero_shot and not resumed and self.accelerator.is_main_process:
            # Before any step: LoRA and full fine-tuning change the backbone in place.
            zero_shot = {"validation": self._evaluate(self.val_set, model=self.backbone)}
            if opts.test and self.test_set:
                zero_shot["test"] = self._evaluate(self.test_set, model=self.backbone)
            self.state["zero_shot"] = zero_shot
            logger.info("zero-shot %s", zero_shot["validation"])
        device = self.accelerator.device
        bar = tqdm(total=opts.max_steps, initial=self.state["step"], desc=f"{opts.method.method} {opts.task}",
                   disable=not self.accelerator.is_main_process)
        self.model.train()
        n = len(self.encoded)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        stop = False
        while self.state["step"] < opts.max_steps and not stop:
            started = time.perf_counter()
            batches = [self._batch(batch_rows(self.state["step"], micro, opts, n, rank, world))
                       for micro in range(opts.grad_accum)]
            # Sum over every target of the global batch, divided by their global count: the same
            # gradient for any number of processes and micro-batches (DDP averages, hence * world).
            counts = torch.tensor([float(label_count(b, self.kind)) for b in batches], device=device)
            total = float(self.accelerator.reduce(counts.sum(), reduction="sum")) if world > 1 else float(counts.sum())
            loss_sum = 0.0
            for micro, batch in enumerate(batches):
                sync = micro == opts.grad_accum - 1
                with self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext():
                    with autocast(device, self.precision):
                        loss = lm_loss(self.model, batch, self.kind, reduction="sum")
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"Loss is {loss.item()} at step {self.state['step']} of {opts.task}; lower the learning "
                            f"rates (--lr-prompt/--lr-lowrank/--lr) or use --precision fp32. The last checkpoint in "
                            f"{self.out / CHECKPOINT} is intact; fix and rerun with --resume."
                        )
                    self.accelerator.backward(loss * world / max(total, 1.0))
                loss_sum += loss.item()
            samples = opts.batch_size * opts.grad_accum
            mean_loss = loss_sum * world / max(total, 1.0)
            if opts.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), opts.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state["step"] += 1
            elapsed = time.perf_counter() - started
            self.state["train_seconds"] += elapsed
            step = self.state["step"]
            lrs = {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", **{k: f"{v:.2e}" for k, v in lrs.items()},
                            sps=f"{samples / elapsed:.1f}")
            if step % opts.log_every == 0 or step == 1:
                self._log({"step": step, "loss": mean_loss, **lrs, "samples_per_s": samples / elapsed})
            if step % opts.eval_every == 0 or step == opts.max_steps:
                self._eval_and_select()
                self._save_checkpoint()
                self.accelerator.wait_for_everyone()
                if opts.patience and self.state["bad_evals"] >= opts.patience:
                    logger.info("early stop at step %d: no gain in %d evaluations", step, opts.patience)
                    stop = True
        bar.close()
        return self._finish(device)

    def _finish(self, device) -> dict:
        results: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            best = _restorable(self.out / BEST)
            if best is not None:
                methods.load_weights(self.opts.method, self.unwrapped, best)
            results = {
                "task": self.opts.task, "method": self.opts.method.method, "model": self.opts.model,
                "steps": self.state["step"], "trainable_parameters": methods.num_trainable(self.unwrapped),
                "train_seconds": round(self.state["train_seconds"], 2), "peak_memory_mb": round(peak_memory_mb(device), 1),
                "main_metric": self.task.main_metric, "best_validation": self.state["best"],
                "best_step": self.state["best_step"], "precision": self.precision, "scoring": self.opts.scoring,
                "processes": self.accelerator.num_processes,
            }
            zero_shot = self.state.get("zero_shot") or {}
            if "validation" in zero_shot:
                results["zero_shot_validation"] = zero_shot["validation"]
            results["validation"] = self.state.get("best_metrics")
            if self.opts.test and self.test_set:
                results["test"] = self._evaluate(self.test_set)
                if "test" in zero_shot:
                    results["zero_shot_test"] = zero_shot["test"]
            (self.out / "results.json").write_text(json.dumps(results, indent=2))
            from dept.plots import training_curve

            training_curve(self.out / "metrics.jsonl", self.out / "training_curve.png", self.task.main_metric)
        self.accelerator.wait_for_everyone()
        return results


def _jsonable(obj) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def train(opts: TrainOptions) -> dict:
    return Run(opts).fit()
