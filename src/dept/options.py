"""The options of a training run, defined once: defaults, allowed values and range checks.

No torch here, so the command line can take its defaults from these dataclasses without paying for
the heavy imports, and refuse a mistake before any data or backbone loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dept.precision import PRECISIONS

METHODS = ("dept", "pt", "lora", "full")
SCORINGS = ("rank", "generate")
SPLITS = ("train", "validation", "test")
POLICIES = ("mixed", "adapter", "none")  # how `dept serve` batches requests (dept.serve.scheduler)
CUSTOM_PREFIXES = ("csv:", "tsv:", "jsonl:")


class UsageError(ValueError):
    """A mistake in what the user asked for; the command line prints it as one line, without a traceback."""


def check_choice(flag: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}; got {value!r}.")


def check_at_least(flag: str, value: Optional[float], low: float) -> None:
    if value is not None and value < low:
        raise UsageError(f"{flag} must be at least {low:g}; got {value}.")


def check_learning_rate(flag: str, value: float) -> None:
    """A non-finite or non-positive rate can only produce a NaN adapter (or none at all)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a finite number above 0; got {value}.")


def is_custom_task(task: str) -> bool:
    return task.startswith(CUSTOM_PREFIXES)


def default_output_dir(task: str, method: str) -> str:
    """runs/<task>/<method>; a custom csv:/jsonl: task is named by its file (or folder) stem."""
    _, _, path = task.partition(":")
    name = Path(path).stem if is_custom_task(task) else task
    return str(Path("runs") / name / method)


@dataclass
class MethodOptions:
    method: str = "dept"
    budget: int = 100
    prompt_length: int = 60
    rank: Optional[int] = None
    max_length: int = 256
    lora_rank: int = 8
    lr_prompt: float = 3e-2
    lr_lowrank: float = 1e-3
    lr: float = 5e-4  # LoRA and full fine-tuning
    init_from: Optional[str] = None
    reset_lowrank_b: bool = False
    prompt_init: str = "text"
    seed: int = 42

    def validate(self) -> None:
        from dept.config import PROMPT_INITS

        check_choice("--method", self.method, METHODS)
        check_choice("prompt_init", self.prompt_init, PROMPT_INITS)
        for flag, value in (
            ("--budget", self.budget),
            ("--prompt-length", self.prompt_length),
            ("--max-length", self.max_length),
            ("--lora-rank", self.lora_rank),
        ):
            check_at_least(flag, value, 1)
        check_at_least("--rank", self.rank, 0)
        if self.rank is not None and self.rank > self.max_length:
            raise UsageError(
                f"--rank {self.rank} is above --max-length {self.max_length}: A (s x r) cannot have a "
                f"higher rank than s; choose --rank <= {self.max_length}."
            )
        if self.method == "dept" and self.rank is None and self.prompt_length > self.budget:
            raise UsageError(
                f"--prompt-length {self.prompt_length} exceeds the --budget of {self.budget} prompt tokens; "
                "choose --prompt-length <= --budget (or set --rank)."
            )
        for flag, value in (("--lr-prompt", self.lr_prompt), ("--lr-lowrank", self.lr_lowrank), ("--lr", self.lr)):
            check_learning_rate(flag, value)
        if self.init_from is not None and not Path(self.init_from).is_dir():
            raise UsageError(f"--init-from {self.init_from} is not a folder; give an adapter folder such as RUN/best.")


@dataclass
class TrainOptions:
    task: str = "glue/stsb"
    model: str = "smollm2-135m"
    output_dir: Optional[str] = None  # default: runs/<task>/<method>
    data_dir: Optional[str] = None
    split_rule: str = "paper"
    method: MethodOptions = field(default_factory=MethodOptions)
    max_steps: int = 300
    batch_size: int = 16
    grad_accum: int = 1
    warmup_steps: Optional[int] = None  # default: min(500, max_steps // 10)
    max_grad_norm: float = 1.0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    eval_every: int = 100
    save_every: Optional[int] = None  # default: eval_every
    eval_samples: Optional[int] = None
    test_samples: Optional[int] = None
    eval_batch_size: int = 32
    patience: Optional[int] = None
    scoring: str = "rank"
    k_shot: Optional[int] = None
    seed: int = 42
    resume: bool = False
    overwrite: bool = False
    log_every: int = 10
    zero_shot: bool = False
    tensorboard: bool = False
    test: bool = True
    task_options: dict = field(default_factory=dict)  # custom csv:/jsonl: tasks: text_fields, label_field

    @property
    def out(self) -> Path:
        return Path(self.output_dir or default_output_dir(self.task, self.method.method))

    def validate(self) -> None:
        """Refuse impossible options before any data or backbone loads; each message names the flag."""
        from dept.tasks.splits import SPLIT_RULES

        check_choice("--precision", self.precision, PRECISIONS)
        check_choice("--scoring", self.scoring, SCORINGS)
        check_choice("--split-rule", self.split_rule, SPLIT_RULES)
        for flag, value in (
            ("--max-steps", self.max_steps),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--eval-every", self.eval_every),
            ("--save-every", self.save_every),
            ("--patience", self.patience),
            ("--k-shot", self.k_shot),
            ("log_every", self.log_every),
            ("eval_batch_size", self.eval_batch_size),
        ):
            check_at_least(flag, value, 1)
        for flag, value in (
            ("--warmup-steps", self.warmup_steps),
            ("--eval-samples", self.eval_samples),
            ("--test-samples", self.test_samples),
        ):
            check_at_least(flag, value, 0)
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm < 0:
            raise UsageError(
                f"--max-grad-norm must be a finite number >= 0 (0 = no clipping); got {self.max_grad_norm}."
            )
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run in the output folder and --overwrite replaces it; pass one.")
        if self.task_options and not is_custom_task(self.task):
            raise UsageError(f"--text-fields/--label-field apply to csv:/tsv:/jsonl: tasks, not {self.task!r}.")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise UsageError(
                f"--data-dir {self.data_dir} is not a folder; give the folder that holds glue/ and superglue/."
            )
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--output-dir {self.out} is a file; give a folder for the run.")
        self.method.validate()
