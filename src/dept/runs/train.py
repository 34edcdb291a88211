"""`dept train`: one training run on Accelerate, for every method and backbone kind.

A plain loop rather than transformers' Trainer: DePT needs two learning rates, rank-classification
evaluation, and adapter-only checkpoints (the Trainer would save the frozen backbone at every
checkpoint). Accelerate gives DDP/FSDP, mixed precision and device placement.

The data order is a pure function of (seed, step), so a killed run resumed from its last
checkpoint replays exactly the batches an uninterrupted run would have seen.

A run never loses or mixes work: it holds an OS lock on its output folder, refuses a folder that
already holds a run unless told to --resume (same task, method, model and adapter shape) or to
--overwrite it, and never saves a diverged model (parameters that are not finite or have exploded).
The resumable checkpoint is saved before each evaluation, so a failing evaluation costs no training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, Optional

import torch

from dept._extras import requires
from dept.backbones import load_backbone
from dept.chat import prepare
from dept.core.kinds import model_kind
from dept.core.optim import create_scheduler
from dept.core.rates import embedding_rms
from dept.data import batch_rows, count_truncated, encode, pad_batch, pad_id
from dept.methods import get_method, num_trainable
from dept.methods.calls import label_count, lm_loss
from dept.options import MethodOptions, TrainOptions, UsageError
from dept.precision import autocast, avoid_broken_attention_kernels, resolve_precision
from dept.runs import rundir
from dept.runs.checkpoints import Checkpoints, rms
from dept.scoring import evaluate

with requires("train"):
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["MethodOptions", "TrainOptions", "Run", "train"]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Run(Checkpoints):
    """State of one training run; `fit()` is the whole job.

    `on_eval(step, score)` is called after each validation with the task's main metric, so a caller
    (`dept tune`) can follow the run and stop it by raising (single process only).
    """

    def __init__(self, opts: TrainOptions, on_eval: Optional[Callable[[int, float], None]] = None):
        opts.validate()
        self.on_eval = on_eval
        self.out = opts.out
        self.commit = rundir.code_commit()  # the code this process imported, not a checkout edited mid-run
        from dept.tasks import get_task, instructions

        self.task = get_task(opts.task, **opts.task_options)
        self.opts = opts = dataclasses.replace(opts, scoring=instructions.scoring_for(self.task, opts.scoring))
        self.precision = resolve_precision(opts.precision)
        # Autocast is ours (dept.precision.autocast), so runs of different precision can share a process.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        avoid_broken_attention_kernels()
        self.lock: Optional[rundir.FolderLock] = None
        try:
            self._claim_output()
            self._load()
        except BaseException:
            self.close()
            raise

    def _claim_output(self) -> None:
        """Lock the output folder and check it can take this run, before anything loads or is written."""
        refusal = None
        if self.accelerator.is_main_process:
            try:
                self.lock = rundir.FolderLock(self.out)
                rundir.check_output(self.out, self.opts)
            except Exception as err:  # every process stops, not only the main one
                refusal = err
        refusal = self._broadcast(refusal)
        if refusal is not None:
            raise refusal

    def _load(self) -> None:
        opts = self.opts
        set_seed(opts.seed)
        # An explicit data folder means those files: no silent fallback to the hub (and its retries).
        splits = self.task.load(
            data_dir=opts.data_dir, split_rule=opts.split_rule, seed=opts.split_seed, use_hub=opts.data_dir is None
        )
        self.train_set = splits["train"]
        if opts.k_shot:
            from dept.tasks import k_shot

            self.train_set = k_shot(self.train_set, opts.k_shot, seed=opts.seed)
        self.val_set = (
            splits["validation"][: opts.eval_samples] if opts.eval_samples is not None else splits["validation"]
        )
        self.test_set = splits["test"][: opts.test_samples] if opts.test_samples is not None else splits["test"]
        for name, split in (("train", self.train_set), ("validation", self.val_set)):
            if not split:
                raise UsageError(f"The {name} split of {opts.task} is empty; check the data source.")
        self.method = method = get_method(opts.method.method)
        self.backbone, self.tokenizer = load_backbone(opts.model, dtype=method.backbone_dtype(self.precision))
        self._check_positions()
        self.opts = opts = dataclasses.replace(opts, method=method.with_default_rates(opts.method, self.backbone))
        self.kind = model_kind(self.backbone)
        sets = (self.train_set, self.val_set, self.test_set)  # chat template, instruction rows' lengths (dept.chat)
        prepare(self.task, self.tokenizer, self.kind, splits["train"], sets, opts.chat_template, opts.method.max_length)
        scale = embedding_rms(self.backbone)
        self.model = method.build(opts.method, self.backbone, self.tokenizer, self.kind)
        method.check_init(opts.method, self.model, self.backbone.get_input_embeddings().weight.shape[1])
        self.scale = max([scale, *(rms(p) for p in self.model.parameters() if p.requires_grad)])
        if opts.gradient_checkpointing:
            target = self.model if hasattr(self.model, "gradient_checkpointing_enable") else self.backbone
            target.gradient_checkpointing_enable()
        self.encoded = [self._encode(e) for e in self.train_set]
        self._warn_truncation()
        self.optimizer = method.optimizer(opts.method, self.model)
        warmup = opts.warmup_steps if opts.warmup_steps is not None else min(500, opts.max_steps // 10)
        self.scheduler = create_scheduler(self.optimizer, warmup, opts.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.state: dict[str, Any] = {
            "step": 0,
            "best": None,
            "best_step": None,
            "bad_evals": 0,
            "train_seconds": 0.0,
            "zero_shot": None,
        }
        self.saved_step: Optional[int] = None  # step of the checkpoint on disk (all saves are finite)

    def _check_positions(self) -> None:
        """Prompt + input must fit the backbone's positions: refused before any adapter is allocated."""
        m = self.opts.method
        config = self.backbone.config
        limit = getattr(getattr(config, "get_text_config", lambda **_: config)(), "max_position_embeddings", None)
        prompt, flag = self.method.prompt_tokens(m)
        if isinstance(limit, int) and prompt + m.max_length > limit:
            flags = f"--max-length {m.max_length}" + (f" + the prompt's {prompt} tokens ({flag})" if prompt else "")
            raise UsageError(
                f"{flags} is more than the {limit} positions of {self.opts.model} (max_position_embeddings); "
                "choose smaller sizes."
            )

    def _warn_truncation(self) -> None:
        """One warning per run: silently cut inputs (RTE's second sentence) would be a silent loss."""
        max_length, kind = self.opts.method.max_length, self.kind
        cut = count_truncated(self.tokenizer, self.train_set, kind, max_length, [enc for enc, _ in self.encoded])
        held_out = self.val_set + self.test_set
        cut_eval = count_truncated(self.tokenizer, held_out, kind, max_length)
        if (cut or cut_eval) and self.accelerator.is_main_process:
            logger.warning(
                "%s: %d of %d training rows and %d of %d validation/test rows are longer than max_length=%d "
                "tokens; their source text is cut to fit (raise --max-length to keep it).",
                self.opts.task,
                cut,
                len(self.train_set),
                cut_eval,
                len(held_out),
                max_length,
            )

    def close(self) -> None:
        """Release the output folder (also done by the OS if the process dies)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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
        metrics, _ = evaluate(
            model or self.unwrapped,
            self.tokenizer,
            self.kind,
            self.task,
            examples,
            self.opts.method.max_length,
            self.opts.scoring,
            self.opts.eval_batch_size,
            self.precision,
        )
        return metrics

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "step":
                        self.writer.add_scalar(key, value, record["step"])

    def _eval_and_select(self) -> dict:
        metrics = {}
        if self.accelerator.is_main_process:
            metrics = self._evaluate(self.val_set)
            score = metrics[self.task.main_metric]
            if self.state["best"] is None or score > self.state["best"]:
                self.state.update(best=score, best_step=self.state["step"], best_metrics=metrics, bad_evals=0)
                rundir.atomic_dir(
                    self.out / rundir.BEST,
                    lambda tmp: self.method.save(self.unwrapped, tmp, self.tokenizer),
                )
            else:
                self.state["bad_evals"] += 1
            self._log({"step": self.state["step"], **{f"val_{k}": v for k, v in metrics.items()}})
            if self.on_eval is not None:
                self.on_eval(self.state["step"], score)
        self.state = self._broadcast(self.state)
        return metrics

    def _broadcast(self, obj):
        if self.accelerator.num_processes == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    # ----- the job -----------------------------------------------------------------------------
    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        opts = self.opts
        self.out.mkdir(parents=True, exist_ok=True)
        if opts.overwrite and self.accelerator.is_main_process:
            rundir.clear_output(self.out)
        main = self.accelerator.is_main_process
        self.writer = rundir.tensorboard_writer(self.out) if opts.tensorboard and main else None
        if self.accelerator.is_main_process:
            run = json.dumps(rundir.jsonable(opts), indent=2)
            rundir.atomic_file(self.out / rundir.RUN_FILE, lambda tmp: tmp.write_text(run, encoding="utf-8"))
        resumed = opts.resume and self._restore()
        pending_eval = bool(self.state.get("pending_eval"))  # a run stopped during its evaluation: redo it
        if self.accelerator.is_main_process:
            rundir.trim_log(self.out / "metrics.jsonl", self.state["step"], evals=not pending_eval)
        if opts.zero_shot and not resumed and self.accelerator.is_main_process:
            # Before any step: LoRA and full fine-tuning change the backbone in place.
            zero_shot = {"validation": self._evaluate(self.val_set, model=self.backbone)}
            if opts.test and self.test_set:
                zero_shot["test"] = self._evaluate(self.test_set, model=self.backbone)
            self.state["zero_shot"] = zero_shot
            logger.info("zero-shot %s", zero_shot["validation"])
        device = self.accelerator.device
        bar = tqdm(
            total=opts.max_steps,
            initial=self.state["step"],
            desc=f"{opts.method.method} {opts.task}",
            disable=not self.accelerator.is_main_process,
        )
        try:
            self._train(bar, pending_eval)
        finally:
            bar.close()  # before any error line, so that starts a line of its own
        return self._finish(device)

    def _evaluate_step(self) -> bool:
        """Evaluate after the checkpoint is saved, record it there; True when patience says stop."""
        self._eval_and_select()
        self._save_state()
        stop = bool(self.opts.patience) and self.state["bad_evals"] >= self.opts.patience
        if stop:
            logger.info("early stop at step %d: no gain in %d evaluations", self.state["step"], self.opts.patience)
        return stop

    def _train(self, bar, pending_eval: bool) -> None:
        opts, device = self.opts, self.accelerator.device
        self.model.train()  # the backbone's own dropout on, as the official code trains
        n = len(self.encoded)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        stop = pending_eval and self._evaluate_step()
        while self.state["step"] < opts.max_steps and not stop:
            started = time.perf_counter()
            batches = [
                self._batch(batch_rows(self.state["step"], micro, opts, n, rank, world))
                for micro in range(opts.grad_accum)
            ]
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
                            f"Loss is {loss.item()} at step {self.state['step']} of {opts.task}. {self._advice()}"
                        )
                    self.accelerator.backward(loss * world / max(total, 1.0))
                loss_sum += loss.item()
            samples = opts.batch_size * opts.grad_accum
            mean_loss = loss_sum * world / max(total, 1.0)
            grad_norm = None  # before clipping, as transformers.Trainer logs it: says how often the clip bites
            if opts.max_grad_norm:
                grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), opts.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state["step"] += 1
            elapsed = time.perf_counter() - started
            self.state["train_seconds"] += elapsed
            step = self.state["step"]
            lrs = {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            bar.update(1)
            bar.set_postfix(
                loss=f"{mean_loss:.4f}", **{k: f"{v:.2e}" for k, v in lrs.items()}, sps=f"{samples / elapsed:.1f}"
            )
            if step % opts.log_every == 0 or step == 1:
                norm = {} if grad_norm is None else {"grad_norm": float(grad_norm)}
                self._log({"step": step, "loss": mean_loss, **norm, **lrs, "samples_per_s": samples / elapsed})
            eval_now = step % opts.eval_every == 0 or step == opts.max_steps
            save_now = eval_now or step % (opts.save_every or opts.eval_every) == 0
            if save_now:  # before evaluating: an evaluation that fails costs no training
                self.state["pending_eval"] = eval_now
                self._save_checkpoint()
            if eval_now:
                stop = self._evaluate_step()
            if save_now:
                self.accelerator.wait_for_everyone()

    def _finish(self, device) -> dict:
        results: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            best = rundir.restorable(self.out / rundir.BEST)
            if best is not None:
                self.method.load_weights(self.unwrapped, best)
            results = {
                "task": self.opts.task,
                "method": self.opts.method.method,
                "model": self.opts.model,
                "steps": self.state["step"],
                "trainable_parameters": num_trainable(self.unwrapped),
                "train_seconds": round(self.state["train_seconds"], 2),
                "peak_memory_mb": round(peak_memory_mb(device), 1),
                "main_metric": self.task.main_metric,
                "best_validation": self.state["best"],
                "best_step": self.state["best_step"],
                "precision": self.precision,
                "seed": self.opts.seed,
                "split_seed": self.opts.split_seed,
                **self.method.rates_used(self.opts.method, self.kind),
                "scoring": self.opts.scoring,
                "processes": self.accelerator.num_processes,
                "commit": self.commit,
            }
            zero_shot = self.state.get("zero_shot") or {}
            if "validation" in zero_shot:
                results["zero_shot_validation"] = zero_shot["validation"]
            results["validation"] = self.state.get("best_metrics")
            if self.opts.test and self.test_set:
                results["test"] = self._evaluate(self.test_set)
                if "test" in zero_shot:
                    results["zero_shot_test"] = zero_shot["test"]
            text = json.dumps(results, indent=2)
            rundir.atomic_file(self.out / "results.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
            from dept.runs.plots import training_curve

            training_curve(self.out / "metrics.jsonl", self.out / "training_curve.png", self.task.main_metric)
        self.accelerator.wait_for_everyone()
        return results


def train(opts: TrainOptions, on_eval: Optional[Callable[[int, float], None]] = None) -> dict:
    return Run(opts, on_eval).fit()
