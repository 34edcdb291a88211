"""The options of a training run, defined once: defaults, allowed values and range checks.

No torch here, so the command line can take its defaults from these dataclasses without paying for
the heavy imports, and refuse a mistake before any data or backbone loads.
"""

from __future__ import annotations

import difflib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from dept.errors import (  # noqa: F401  (re-exported: the options' users import them from here)
    MAX_LEARNING_RATE,
    UsageError,
    check_at_least,
    check_at_most,
    check_choice,
    check_learning_rate,
    not_utf8,
    read_text,
)
from dept.methods import METHODS as REGISTRY
from dept.methods import get_method
from dept.precision import PRECISIONS

METHODS = tuple(REGISTRY)  # dept, pt, adept, lora, full
SCORINGS = ("rank", "generate")
SPLITS = ("train", "validation", "test")
POLICIES = ("mixed", "adapter", "none")  # how `dept serve` batches requests (dept.serve.scheduler)
CUSTOM_PREFIXES = ("csv:", "tsv:", "jsonl:")
CUSTOM_TASK_OPTIONS = ("text_fields", "label_field", "task_type")  # task_options a custom task takes
# Ceilings no real run reaches, so an absurd size is refused before anything is allocated.
MAX_TOKENS = 2**20  # --max-length, --prompt-length, --budget (the backbone's own position limit is checked too)
MAX_GLOBAL_BATCH = 2**16  # --batch-size x --grad-accum: sequences per optimizer step


def is_custom_task(task: str) -> bool:
    return task.startswith(CUSTOM_PREFIXES)


def default_output_dir(task: str, method: str) -> str:
    """runs/<task>/<method>; a custom csv:/jsonl: task is named by its file (or folder) stem."""
    _, _, path = task.partition(":")
    name = Path(path).stem if is_custom_task(task) else task
    return str(Path("runs") / name / method)


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, flag: bool = True, **cli: Any) -> Any:
    """A field that documents itself: its metadata is what `dept train/tune` make of it (dept.cli.flags): the
    help text and what else the flag needs (choices=..., envvar=...); flag=False: --config and Python only."""
    return field(default=default, default_factory=factory, metadata={"help": help, "flag": flag, **cli})


@dataclass
class MethodOptions:
    method: str = option(
        "dept", "DePT, prompt tuning, ADePT, LoRA or full fine-tuning (dept.methods).", choices=METHODS
    )
    budget: int = option(100, "PT prompt length l whose parameter count DePT and ADePT match.")
    prompt_length: int = option(60, "DePT/ADePT prompt length m.")
    rank: Optional[int] = option(None, "DePT/ADePT rank r of the update (default: budget-matched).")
    max_length: int = option(
        256, "Longest input s (tokens): longer sources are truncated; DePT's position-wise A covers s positions."
    )
    lora_rank: int = option(8, "Rank of --method lora's update matrices.")
    # None: scaled to the backbone's embeddings (dept.core.rates).
    lr_prompt: Optional[float] = option(None, "Soft prompt learning rate (default: 6 x the input embeddings' RMS).")
    lr_lowrank: Optional[float] = option(
        None, "Learning rate of the update (DePT A, B; ADePT A, a, B, b) (default: 7.5e-4 x the embeddings' RMS)."
    )
    lr: float = option(5e-4, "Learning rate for --method lora/full.")
    # A classifier's task head (prompt methods on ...ForSequenceClassification) is a linear layer: LoRA's kind of rate.
    lr_head: float = option(1e-3, "Learning rate of a classifier backbone's task head (prompt methods).")
    init_from: Optional[str] = option(None, "Start from this adapter folder, e.g. RUN/best (transfer; prompt methods).")
    reset_lowrank_b: bool = option(
        False, "With --init-from: zero the update's output side (B; ADePT also b), keep the prompt and A."
    )
    prompt_init: str = option("text", "How the soft prompt starts (dept.core.config.PROMPT_INITS).", flag=False)
    seed: int = option(42, "Seed of the adapter's initialisation (from the run's --seed).", flag=False)

    def validate(self) -> None:
        from dept.core.config import PROMPT_INITS

        check_choice("--method", self.method, METHODS)
        check_choice("prompt_init", self.prompt_init, PROMPT_INITS)
        for flag, value in (
            ("--budget", self.budget),
            ("--prompt-length", self.prompt_length),
            ("--max-length", self.max_length),
            ("--lora-rank", self.lora_rank),
        ):
            check_at_least(flag, value, 1)
        for flag, value in (
            ("--budget", self.budget),
            ("--prompt-length", self.prompt_length),
            ("--max-length", self.max_length),
        ):
            check_at_most(flag, value, MAX_TOKENS, "tokens")
        check_at_least("--rank", self.rank, 0)
        rates = (("--lr-prompt", self.lr_prompt), ("--lr-lowrank", self.lr_lowrank), ("--lr", self.lr))
        for flag, value in (*rates, ("--lr-head", self.lr_head)):
            if value is not None:
                check_learning_rate(flag, value)
        if self.init_from is not None and not Path(self.init_from).is_dir():
            raise UsageError(f"--init-from {self.init_from} is not a folder; give an adapter folder such as RUN/best.")
        get_method(self.method).validate(self)


@dataclass
class TrainOptions:
    task: str = option("glue/stsb", "glue/<task>, superglue/<task>, csv:PATH, tsv:PATH or jsonl:PATH.")
    model: str = option("smollm2-135m", "Named offline backbone, hub id or local directory.")
    output_dir: Optional[str] = option(None, "The run's folder (default runs/<task>/<method>).")
    data_dir: Optional[str] = option(None, "Folder of the original glue/ and superglue/ files.", envvar="DEPT_DATA_DIR")
    split_rule: str = option("paper", "paper (DePT's splits) or official (train/dev as released).")
    # The split rule's shuffle has its own seed (the paper's 42): `seed` varies initialisation, data order and
    # dropout, never which examples are validation or test, so every seed and method is scored on one test set.
    split_seed: int = option(42, "Seed of the paper split's shuffle; --seed never moves validation or test examples.")
    method: MethodOptions = option(factory=MethodOptions, help="The method and its hyperparameters.", flag=False)
    max_steps: int = option(300, "Optimizer steps.")
    batch_size: int = option(16, "Global batch size: sequences per optimizer step.")
    grad_accum: int = option(1, "Micro-batches per optimizer step.")
    warmup_steps: Optional[int] = option(None, "Linear warm-up steps (default min(500, max_steps // 10)).")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0: no clipping).")
    precision: str = option("auto", "auto = bf16 where the hardware has it.", choices=PRECISIONS)
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass: less memory, slower.")
    eval_every: int = option(100, "Evaluate every N steps.")
    save_every: Optional[int] = option(
        None, "Checkpoint every N steps, without evaluating (default: --eval-every); each evaluation is checkpointed."
    )
    eval_samples: Optional[int] = option(None, "Evaluate on the first N validation examples (default: all).")
    test_samples: Optional[int] = option(None, "Test on the first N test examples (default: all).")
    eval_batch_size: int = option(32, "Sequences per batch when scoring.", flag=False)
    patience: Optional[int] = option(None, "Stop after this many evaluations without improvement.")
    scoring: Optional[str] = option(
        None,
        "rank = label log-likelihood, generate = greedy decoding (default: generate for instruction data, else rank).",
        choices=SCORINGS,
    )
    chat_template: bool = option(
        False, "Format inputs with the tokenizer's chat template (instruct models); eval and predict do the same."
    )
    k_shot: Optional[int] = option(None, "Train on k examples per class.")
    seed: int = option(42, "Seed of initialisation, data order and dropout (not of the split).")
    resume: bool = option(False, "Continue the run in OUTPUT_DIR (same task, method, model, adapter shape).")
    overwrite: bool = option(False, "Replace the run in OUTPUT_DIR.")
    log_every: int = option(10, "Log the training loss every N steps.", flag=False)
    zero_shot: bool = option(False, "Also score the untouched backbone.")
    tensorboard: bool = option(False, "Also write TensorBoard logs to OUTPUT_DIR/tensorboard.")
    test: bool = option(True, "Score the test split at the end.", flag=False)
    task_options: dict = option(factory=dict, help="Custom tasks: text_fields, label_field, task_type.", flag=False)

    @property
    def out(self) -> Path:
        return Path(self.output_dir or default_output_dir(self.task, self.method.method))

    def validate(self) -> None:
        """Refuse impossible options before any data or backbone loads; each message names the flag."""
        from dept.tasks.splits import SPLIT_RULES

        check_choice("--precision", self.precision, PRECISIONS)
        if self.scoring is not None:
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
            ("--split-seed", self.split_seed),
            ("--eval-samples", self.eval_samples),
            ("--test-samples", self.test_samples),
        ):
            check_at_least(flag, value, 0)
        if self.batch_size * self.grad_accum > MAX_GLOBAL_BATCH:
            raise UsageError(
                f"--batch-size {self.batch_size} x --grad-accum {self.grad_accum} is more than {MAX_GLOBAL_BATCH} "
                "sequences per optimizer step; choose smaller ones."
            )
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm < 0:
            raise UsageError(
                f"--max-grad-norm must be a finite number >= 0 (0 = no clipping); got {self.max_grad_norm}."
            )
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run in the output folder and --overwrite replaces it; pass one.")
        if self.task_options and not is_custom_task(self.task):
            raise UsageError(f"--text-fields/--label-field apply to csv:/tsv:/jsonl: tasks, not {self.task!r}.")
        self._check_task_options()
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise UsageError(
                f"--data-dir {self.data_dir} is not a folder; give the folder that holds glue/ and superglue/."
            )
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--output-dir {self.out} is a file; give a folder for the run.")
        self.method.validate()

    def _check_task_options(self) -> None:
        """task_options (from --config) are the custom task's keyword arguments: known names, right types."""
        for key, value in self.task_options.items():
            if key not in CUSTOM_TASK_OPTIONS:
                close = difflib.get_close_matches(key, CUSTOM_TASK_OPTIONS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(CUSTOM_TASK_OPTIONS)}"
                raise UsageError(f"task_options: unknown option {key!r} ({hint}).")
            if key == "text_fields":
                ok = value is None or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
            else:
                ok = isinstance(value, str) or (key == "task_type" and value is None)
            if not ok:
                kind = "a non-empty list of column names" if key == "text_fields" else "a string"
                raise UsageError(f"task_options: {key} must be {kind}; got {json.dumps(value)}.")


# ----- one flat namespace of option names: --config files, best.json, tune's trials ------------------------------


def _flat_types() -> dict[str, Any]:
    """Option name -> type, the method's fields and the run's in one namespace (`seed` sets both seeds)."""
    types = typing.get_type_hints(MethodOptions)
    types.update({k: v for k, v in typing.get_type_hints(TrainOptions).items() if k != "method"})
    return types


OPTION_NAMES = frozenset(_flat_types())


def _accepts(tp: Any, value: Any) -> bool:
    if typing.get_origin(tp) is Union:
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Union:
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    return {type(None): "null", float: "a number", int: "an integer", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def check_flat(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Refuse an unknown option name or a value of the wrong type, naming the key (and its likely spelling)."""
    types = _flat_types()
    checked = {}
    for key, value in values.items():
        if key not in types:
            close = difflib.get_close_matches(key, types, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known options: {', '.join(sorted(types))}"
            raise UsageError(f"{source}: unknown option {key!r}{hint}.")
        if not _accepts(types[key], value):
            raise UsageError(f"{source}: {key} must be {_type_name(types[key])}; got {json.dumps(value)}.")
        checked[key] = float(value) if types[key] is float else value
    return checked


def read_config(path: Path) -> dict[str, Any]:
    """`dept train --config FILE`: a JSON object of option names (`lr_prompt`, `max_steps`, ...) and values."""
    try:
        data = json.loads(read_text(path, "--config"))
    except json.JSONDecodeError as err:
        raise UsageError(
            f"--config {path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})."
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a JSON object of option names and values.")
    return check_flat(data, f"--config {path}")


def options_from(values: Mapping[str, Any]) -> TrainOptions:
    """TrainOptions from flat option names; what is not given keeps its dataclass default."""
    values = check_flat(values, "options")
    method_names = {f.name for f in fields(MethodOptions)}
    run = {k: v for k, v in values.items() if k not in method_names or k == "seed"}
    return TrainOptions(**run, method=MethodOptions(**{k: v for k, v in values.items() if k in method_names}))


def flat_options(opts: TrainOptions) -> dict[str, Any]:
    """The inverse of options_from: every option under its flat name (the run's seed for both seeds)."""
    flat = asdict(opts.method)
    flat.update({k: v for k, v in asdict(opts).items() if k != "method"})
    return flat


# ----- dept tune ---------------------------------------------------------------------------------------------------

# What `dept tune` searches per method, and the default log-uniform ranges: wide, because good rates
# scale with the backbone's embedding RMS and with the step budget (dept.core.rates: the prompt rate that
# defaults to 0.81 on SmolLM2 is 6.2 on Gemma-3-270m; the official T5 runs use 0.3 for 30k steps).
SEARCHED_RATES = {name: m.searched_rates for name, m in REGISTRY.items()}
RATE_RANGES = {"lr_prompt": (1e-3, 10.0), "lr_lowrank": (1e-6, 1e-2), "lr": (1e-6, 1e-2)}


@dataclass
class TuneOptions:
    trials: int = option(20, "Finished (completed or pruned) trials in total, across resumed searches.")
    timeout: Optional[float] = option(None, "Seconds; no new trial starts after them.")
    ranges: dict = option(factory=dict, help="RATE_RANGES overrides (prompt_length: with search_shape).", flag=False)
    search_shape: bool = option(False, "dept: also search the prompt length m, with the budget-matched rank.")
    prune_after: int = option(3, "Trials that finish before the median rule prunes any (n_startup_trials).")
    output_dir: Optional[str] = option(None, "The search's folder (default runs/<task>/<method>/tune).")

    def out(self, run: TrainOptions) -> Path:
        return Path(self.output_dir or Path(default_output_dir(run.task, run.method.method)) / "tune")

    def space(self, run: TrainOptions) -> dict[str, tuple]:
        """Parameter -> (low, high): log-uniform for the rates, integers for the prompt length."""
        space = {name: tuple(self.ranges.get(name, RATE_RANGES[name])) for name in SEARCHED_RATES[run.method.method]}
        if self.search_shape:
            budget = run.method.budget
            default = (max(1, budget // 10), max(1, budget * 9 // 10))
            space["prompt_length"] = tuple(int(v) for v in self.ranges.get("prompt_length", default))
        return space

    def validate(self, run: TrainOptions) -> None:
        method = run.method.method
        check_choice("--method", method, METHODS)
        check_at_least("--trials", self.trials, 1)
        check_at_least("--prune-after", self.prune_after, 0)
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout must be a number of seconds above 0; got {self.timeout}.")
        searched = SEARCHED_RATES[method] + (("prompt_length",) if self.search_shape else ())
        for name, (low, high) in self.ranges.items():
            flag = f"--{name.replace('_', '-')}-range"
            if name == "prompt_length" and not self.search_shape:
                raise UsageError(f"{flag} applies with --search-shape.")
            if name not in searched:
                users = [m for m, rates in SEARCHED_RATES.items() if name in rates]
                raise UsageError(
                    f"{flag} applies to --method {'/'.join(users)}; --method {method} searches "
                    f"{', '.join('--' + n.replace('_', '-') + '-range' for n in SEARCHED_RATES[method])}."
                )
            if name != "prompt_length":
                check_learning_rate(flag, low)
                check_learning_rate(flag, high)
            if low > high:
                raise UsageError(f"{flag} is LOW HIGH with LOW <= HIGH; got {low:g} {high:g}.")
        if self.search_shape:
            if not REGISTRY[method].searches_shape:
                shaped = "/".join(name for name, m in REGISTRY.items() if m.searches_shape)
                raise UsageError(
                    f"--search-shape searches the prompt length of --method {shaped}; --method {method} has none to search."
                )
            if run.method.rank is not None:
                raise UsageError("--search-shape keeps the rank budget-matched; leave --rank out.")
            low, high = self.space(run)["prompt_length"]
            if low < 1 or high > run.method.budget:
                raise UsageError(
                    f"--prompt-length-range must lie within 1..--budget ({run.method.budget}); got {low} {high}."
                )
        out = self.out(run)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output-dir {out} is a file; give a folder for the search.")
