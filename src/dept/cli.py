"""The `dept` command line: train, tune, eval, predict, export-embeds, serve, bench, convert, tasks.

`main()` is the console script. A user mistake ends in one line `error: <what and how to fix>` on
stderr and exit status 2 (`--verbose` adds the traceback); a bug in dept still shows its traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from dept.options import (
    OPTION_NAMES,
    PRECISIONS,
    RATE_RANGES,
    SCORINGS,
    SPLITS,
    MethodOptions,
    TrainOptions,
    TuneOptions,
    UsageError,
    check_at_least,
    check_choice,
    not_utf8,
    options_from,
    read_config,
    read_text,
)
from dept.trained import Trained, model_kind_of

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Decomposed Prompt Tuning (DePT) for any Hugging Face model."
)
logger = logging.getLogger("dept.cli")

# Defaults live in the dataclasses, once; the options below read them from there.
M, T, TU = MethodOptions, TrainOptions, TuneOptions
# The main job: DePT on SmolLM2-135M for TrainOptions' default task (GLUE STS-B, offline package). 150 steps (the
# budget the default rates were searched at) and 200 examples per score, so the gain stands out of the noise of
# Pearson on few examples (its time on a 2-core CPU is in the README).
MAIN_JOB = dict(max_steps=150, batch_size=8, eval_every=150, eval_samples=200, test_samples=200, output_dir="runs/main")
# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError)
# click's base class for command-line mistakes (typer may vendor click, so found through typer's own BadParameter).
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@app.command()
def train(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(
        None, help="glue/<task>, superglue/<task>, csv:PATH or jsonl:PATH. Omit to run the main job."
    ),
    method: str = typer.Option(M.method, help="dept | pt | lora | full"),
    model: str = typer.Option(T.model, help="Named offline backbone, hub id or local directory."),
    output_dir: Optional[Path] = typer.Option(None, help="The run's folder (default runs/<task>/<method>)."),
    data_dir: Optional[Path] = typer.Option(
        None, envvar="DEPT_DATA_DIR", help="Folder with glue/ and superglue/ in the original layout."
    ),
    split_rule: str = typer.Option(T.split_rule, help="paper (DePT's splits) or official (train/dev as released)."),
    split_seed: int = typer.Option(
        T.split_seed, help="Seed of the paper split's shuffle; --seed never moves the validation or test examples."
    ),
    max_steps: Optional[int] = typer.Option(
        None, help=f"Optimizer steps (default {T.max_steps}; main job {MAIN_JOB['max_steps']})."
    ),
    batch_size: Optional[int] = typer.Option(
        None, help=f"Global batch size (default {T.batch_size}; main job {MAIN_JOB['batch_size']})."
    ),
    grad_accum: int = typer.Option(T.grad_accum, help="Micro-batches per optimizer step."),
    budget: int = typer.Option(M.budget, help="PT prompt length l whose parameter count DePT matches."),
    prompt_length: int = typer.Option(M.prompt_length, help="DePT prompt length m."),
    rank: Optional[int] = typer.Option(M.rank, help="DePT rank r (default: budget-matched)."),
    max_length: int = typer.Option(M.max_length, help="Longest input s (tokens); longer sources are truncated."),
    lr_prompt: Optional[float] = typer.Option(
        M.lr_prompt, help="Learning rate of the soft prompt (default: 6 x the RMS of the backbone's input embeddings)."
    ),
    lr_lowrank: Optional[float] = typer.Option(
        M.lr_lowrank, help="Learning rate of the low-rank pair A, B (default: 7.5e-5 x the embeddings' RMS)."
    ),
    lr: float = typer.Option(M.lr, help="Learning rate for --method lora/full."),
    lr_head: float = typer.Option(M.lr_head, help="Learning rate of a classifier backbone's task head (dept/pt)."),
    lora_rank: int = typer.Option(M.lora_rank),
    warmup_steps: Optional[int] = typer.Option(T.warmup_steps, help="Default min(500, max_steps/10)."),
    max_grad_norm: float = typer.Option(T.max_grad_norm),
    precision: str = typer.Option(T.precision, help="auto | bf16 | fp32 (auto = bf16 where the hardware has it)."),
    gradient_checkpointing: bool = typer.Option(T.gradient_checkpointing),
    eval_every: Optional[int] = typer.Option(
        None, help=f"Evaluate every N steps (default {T.eval_every}; main job {MAIN_JOB['eval_every']})."
    ),
    save_every: Optional[int] = typer.Option(
        T.save_every,
        help="Checkpoint every N steps, without evaluating (default: --eval-every); each evaluation is checkpointed first.",
    ),
    eval_samples: Optional[int] = typer.Option(None, help="Evaluate on the first N validation examples."),
    test_samples: Optional[int] = typer.Option(None, help="Test on the first N test examples."),
    patience: Optional[int] = typer.Option(T.patience, help="Stop after this many evaluations without improvement."),
    scoring: str = typer.Option(T.scoring, help="rank (label log-likelihood) or generate (greedy, exact match)."),
    k_shot: Optional[int] = typer.Option(T.k_shot, help="Train on k examples per class."),
    init_from: Optional[Path] = typer.Option(None, help="Start from this adapter (transfer)."),
    reset_lowrank_b: bool = typer.Option(M.reset_lowrank_b, help="With --init-from: zero B, keep the prompt and A."),
    text_fields: Optional[str] = typer.Option(None, help="Custom tasks: comma-separated input columns."),
    label_field: Optional[str] = typer.Option(None, help="Custom tasks: label column."),
    zero_shot: bool = typer.Option(T.zero_shot, help="Also score the untouched backbone."),
    seed: int = typer.Option(T.seed, help="Seed of initialisation, data order and dropout (not of the split)."),
    resume: bool = typer.Option(
        T.resume, help="Continue the run in OUTPUT_DIR (same task, method, model, adapter shape)."
    ),
    overwrite: bool = typer.Option(T.overwrite, help="Replace the run in OUTPUT_DIR."),
    tensorboard: bool = typer.Option(T.tensorboard),
    config: Optional[Path] = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="JSON file of options by name (e.g. a search's best.json); flags given here override it.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress; show the traceback of an error."),
):
    """Train one adapter (or baseline) on one task; without --task, run the main job."""
    _setup_logging(verbose)
    values = read_config(config) if config else {}
    main_job = task is None and "task" not in values
    opts = _run_options(ctx, values)
    # Every option, the task name and custom data files are checked before any data or backbone loads.
    from dept.tasks import get_task

    opts.validate()
    get_task(opts.task, **opts.task_options)
    if main_job:
        typer.echo(f"Main job: DePT on {opts.model}, {opts.task}, {opts.max_steps} steps -> {opts.out}")
    from dept.train import train as run_train

    results = run_train(opts)
    if results:
        typer.echo(_summary(results))


def _given(ctx: typer.Context, name: str) -> bool:
    """Typed on the command line (or set through its environment variable), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _run_options(ctx: typer.Context, values: dict, skip: tuple[str, ...] = ()) -> TrainOptions:
    """The run's options: the dataclass defaults (or the main job's, without a task), then `values`
    (a --config file), then the flags given. A flag left at its default has the dataclass's value."""
    values = dict(values)
    given = {k: str(v) if isinstance(v, Path) else v for k, v in ctx.params.items() if _given(ctx, k) and k not in skip}
    task_options = dict(values.get("task_options") or {})
    if given.get("text_fields"):
        task_options["text_fields"] = given["text_fields"].split(",")
    if given.get("label_field"):
        task_options["label_field"] = given["label_field"]
    if task_options:
        values["task_options"] = task_options
    values.update({k: v for k, v in given.items() if k in OPTION_NAMES})
    if "task" not in values:  # the main job
        values = {**MAIN_JOB, **values, "zero_shot": True}
    return options_from(values)


def _with_options_of(source, skip: tuple[str, ...] = ()):
    """Give a command the options of another, declared (with their help) once: all but those it
    declares itself or skips. The command takes them as **flags."""

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        names = {p.name for p in params} | set(skip)
        params += [p for p in inspect.signature(source, eval_str=True).parameters.values() if p.name not in names]

        @functools.wraps(command)
        def wrapper(**kwargs):
            return command(**kwargs)

        wrapper.__signature__ = own.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _range_help(name: str, methods: str) -> str:
    low, high = RATE_RANGES[name]
    return f"{methods}: LOW HIGH of the log-uniform search of --{name.replace('_', '-')} (default {low:g} {high:g})."


@app.command()
@_with_options_of(
    train, skip=("config", "resume", "overwrite", "zero_shot", "tensorboard", "lr_prompt", "lr_lowrank", "lr")
)
def tune(
    ctx: typer.Context,
    task: str = typer.Option(..., help="The task whose validation split scores the trials."),
    trials: int = typer.Option(TU.trials, help="Finished (completed or pruned) trials in total; a rerun resumes."),
    timeout: Optional[float] = typer.Option(TU.timeout, help="Seconds; no new trial starts after them."),
    lr_prompt_range: Optional[tuple[float, float]] = typer.Option(None, help=_range_help("lr_prompt", "dept/pt")),
    lr_lowrank_range: Optional[tuple[float, float]] = typer.Option(None, help=_range_help("lr_lowrank", "dept")),
    lr_range: Optional[tuple[float, float]] = typer.Option(None, help=_range_help("lr", "lora/full")),
    search_shape: bool = typer.Option(
        TU.search_shape, help="dept: also search the prompt length m, with the budget-matched rank."
    ),
    prompt_length_range: Optional[tuple[int, int]] = typer.Option(
        None, help="With --search-shape: LOW HIGH of m (default 10%..90% of --budget)."
    ),
    prune_after: int = typer.Option(TU.prune_after, help="Trials that finish before the median rule prunes any."),
    output_dir: Optional[Path] = typer.Option(None, help="The search's folder (default runs/<task>/<method>/tune)."),
    **flags,
):
    """Search the learning rates on the validation split (Optuna TPE + median pruning); resumable.

    Each trial is a training run in OUTPUT_DIR/trial-NNNN. OUTPUT_DIR/best.json holds the best trial's options
    for `dept train --config`; trials.json and trials.png show every trial. The test split is never scored.
    """
    _setup_logging(flags["verbose"])
    logging.getLogger("dept.tune").setLevel(logging.INFO)  # one line per trial, also without --verbose
    run = _run_options(ctx, {}, skip=("output_dir",))
    ranges = {
        name: value
        for name, value in dict(
            lr_prompt=lr_prompt_range,
            lr_lowrank=lr_lowrank_range,
            lr=lr_range,
            prompt_length=prompt_length_range,
        ).items()
        if value is not None
    }
    opts = TuneOptions(
        trials=trials,
        timeout=timeout,
        ranges=ranges,
        search_shape=search_shape,
        prune_after=prune_after,
        output_dir=str(output_dir) if output_dir else None,
    )
    # Mistakes are refused before torch, Optuna, data or a backbone load.
    from dept.tasks import get_task

    opts.validate(run)
    get_task(run.task, **run.task_options)
    from dept._extras import requires

    with requires("train"):
        import optuna
    from dept.tune import tune as run_tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # dept.tune logs its own line per trial
    summary = run_tune(run, opts)
    best, out = summary["best"], opts.out(run)
    if best is None:
        typer.echo(f"No trial completed ({summary['finished']} pruned); see {out / 'trials.json'}.")
        return
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    typer.echo(
        f"best validation {summary['metric']} {best['value']:.4g}: trial {best['trial']} ({params}), "
        f"{summary['finished']} trials ({summary['pruned']} pruned)\n"
        f"train with it: dept train --config {out / 'best.json'}"
    )


def _summary(results: dict) -> str:
    metric = results["main_metric"]
    lines = [
        f"{results['method']} on {results['task']} ({results['model']}): {results['trainable_parameters']:,} trainable "
        f"parameters, {results['steps']} steps, {results['train_seconds']:.0f} s, peak {results['peak_memory_mb']:.0f} MB"
    ]
    for split in ("validation", "test"):
        if split in results:
            zero = results.get(f"zero_shot_{split}")
            before = f"zero-shot {zero[metric]:.1f} -> " if zero else ""
            lines.append(f"  {split:<10} {metric}: {before}trained {results[split][metric]:.1f}")
    return "\n".join(lines)


def _task(name: str, run: dict):
    """The task, with the run's custom-data options when it is the run's own task."""
    from dept.tasks import get_task

    return get_task(name, **((run.get("task_options") or {}) if name == run.get("task") else {}))


@app.command("eval")
def eval_command(
    adapter: Path = typer.Option(
        ..., exists=True, file_okay=False, help="Adapter folder (RUN/best), or a run folder: its best/ is used."
    ),
    task: str = typer.Option(..., help="Task to score on."),
    split: str = typer.Option("test", help="train | validation | test"),
    model: Optional[str] = typer.Option(None, help="Backbone (default: the one in the run's run.json)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="DEPT_DATA_DIR", help="Default: the run's (run.json)."),
    split_rule: Optional[str] = typer.Option(None, help=f"paper | official (default: the run's, else {T.split_rule})."),
    split_seed: Optional[int] = typer.Option(
        None, help=f"Seed of the paper split (default: the run's, else {T.split_seed})."
    ),
    max_length: Optional[int] = typer.Option(None, help="Longest input (default: the run's, else the adapter's s)."),
    scoring: str = typer.Option(T.scoring, help="rank | generate"),
    precision: str = typer.Option(T.precision, help="auto | bf16 | fp32"),
    batch_size: int = typer.Option(T.eval_batch_size),
    samples: Optional[int] = typer.Option(None, help="Score only the first N examples."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress; show the traceback of an error."),
):
    """Score a trained adapter on a task split (with the run's split rule, split seed and data); prints the metrics as JSON."""
    from dept.precision import resolve_precision
    from dept.tasks.splits import SPLIT_RULES

    _setup_logging(verbose)
    check_choice("--split", split, SPLITS)
    check_choice("--scoring", scoring, SCORINGS)
    check_choice("--precision", precision, PRECISIONS)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--samples", samples, 0)
    check_at_least("--max-length", max_length, 1)
    trained = Trained(adapter, model)
    spec = _task(task, trained.run)
    data_dir = trained.setting("data_dir", "--data-dir", str(data_dir) if data_dir else None, None)
    split_rule = trained.setting("split_rule", "--split-rule", split_rule, T.split_rule)
    check_choice("--split-rule", split_rule, SPLIT_RULES)
    split_seed = trained.setting("split_seed", "--split-seed", split_seed, T.split_seed)
    max_length = trained.setting("max_length", "--max-length", max_length, trained.max_length or M.max_length)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(
            f"--data-dir {data_dir} (given, or the run's) is not a folder; pass the folder that holds glue/ and superglue/."
        )
    splits = spec.load(data_dir=data_dir, split_rule=split_rule, seed=split_seed, use_hub=data_dir is None)
    examples = splits[split][:samples]

    from dept.data import count_truncated
    from dept.scoring import evaluate

    model_, tokenizer = trained.load()
    kind = model_kind_of(model_)
    cut = count_truncated(tokenizer, examples, kind, max_length)
    if cut:
        logger.warning(
            "%d of %d examples are longer than max_length=%d tokens; their source text is cut to fit.",
            cut,
            len(examples),
            max_length,
        )
    metrics, _ = evaluate(
        model_, tokenizer, kind, spec, examples, max_length, scoring, batch_size, resolve_precision(precision)
    )
    typer.echo(json.dumps({"task": task, "split": split, "examples": len(examples), **metrics}, indent=2))


def _read_inputs(path: Path) -> list[str]:
    """One input per line: a JSON object with a string 'source' (or 'text'), or plain text."""
    name = "stdin" if str(path) == "-" else str(path)
    if name != "stdin" and not path.is_file():
        raise UsageError(f"--input {path} is not a file.")
    try:
        text = sys.stdin.read() if name == "stdin" else read_text(path, "--input")
    except UnicodeDecodeError as err:  # stdin
        raise UsageError(f"--input {not_utf8(name, err)}") from None
    sources = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            sources.append(line.rstrip("\r"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(
                f"{name} line {lineno}: invalid JSON ({err.msg} at column {err.colno}); give one JSON "
                "object or one plain text per line."
            ) from None
        key = "source" if "source" in record else "text"
        if key not in record:
            raise UsageError(f"{name} line {lineno}: JSON object without a 'source' or 'text' field.")
        if not isinstance(record[key], str):
            raise UsageError(f"{name} line {lineno}: field {key!r} must be a string, not {type(record[key]).__name__}.")
        sources.append(record[key])
    return sources


@app.command()
def predict(
    adapter: Path = typer.Option(
        ..., exists=True, file_okay=False, help="Adapter folder (RUN/best), or a run folder: its best/ is used."
    ),
    input: Path = typer.Option(Path("-"), help="JSONL (a 'source' or 'text' field) or plain text lines; - = stdin."),
    output: Path = typer.Option(Path("-"), help="JSONL out; - = stdout."),
    task: Optional[str] = typer.Option(None, help="Rank this task's labels instead of generating."),
    model: Optional[str] = typer.Option(None),
    max_new_tokens: int = typer.Option(20),
    batch_size: int = typer.Option(16),
    precision: str = typer.Option(T.precision, help="auto | bf16 | fp32"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress; show the traceback of an error."),
):
    """Predict for new inputs: ranked label (with --task) or generated text, one JSON line each."""
    _setup_logging(verbose)
    check_choice("--precision", precision, PRECISIONS)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--max-new-tokens", max_new_tokens, 1)
    if str(output) != "-" and (output.is_dir() or not output.parent.is_dir()):
        raise UsageError(f"--output {output} is a folder or lies in a missing one; give a file (or - for stdout).")
    trained = Trained(adapter, model)
    spec = _task(task, trained.run) if task else None
    sources = _read_inputs(input)
    if not sources:
        return
    max_length = trained.setting("max_length", "--max-length", None, trained.max_length or M.max_length)

    from dept.data import count_long, target_ids
    from dept.precision import resolve_precision
    from dept.scoring import candidates_for, generate_texts, rank_scores

    model_, tokenizer = trained.load()
    kind = model_kind_of(model_)
    precision = resolve_precision(precision)
    candidates, values = candidates_for(spec) if spec is not None else (None, None)
    fits = max_length  # source tokens that fit: a causal row holds the answer (or the generated text) too
    if kind == "causal" and spec is None:
        if max_new_tokens >= max_length:
            raise UsageError(
                f"--max-new-tokens {max_new_tokens} leaves no room for the input in the adapter's max_length of "
                f"{max_length} tokens; choose --max-new-tokens below {max_length}."
            )
        fits -= max_new_tokens
    elif kind == "causal":
        fits -= max(len(target_ids(tokenizer, c, kind)) for c in candidates)
    cut = count_long(tokenizer, sources, fits)
    if cut:
        logger.warning(
            "%d of %d inputs are longer than the %d tokens that fit (max_length=%d); their text is cut to fit.",
            cut,
            len(sources),
            fits,
            max_length,
        )
    if spec is not None:
        scores = rank_scores(model_, tokenizer, kind, sources, candidates, max_length, batch_size, precision)
        rows = [
            {
                "source": s,
                "prediction": candidates[int(sc.argmax())],
                **({"expected_value": float((sc.softmax(-1) * values).sum())} if values is not None else {}),
            }
            for s, sc in zip(sources, scores)
        ]
    else:
        texts = generate_texts(model_, tokenizer, kind, sources, max_length, max_new_tokens, batch_size, precision)
        rows = [{"source": s, "prediction": t} for s, t in zip(sources, texts)]
    out = sys.stdout if str(output) == "-" else open(output, "w", encoding="utf-8")
    for row in rows:
        out.write(json.dumps(row) + "\n")
    out.flush()


EXPORT_FORMATS = ("safetensors", "vllm-base64")


@app.command("export-embeds")
def export_embeds(
    adapter: Path = typer.Option(
        ..., exists=True, file_okay=False, help="Adapter folder (RUN/best), or a run folder: its best/ is used."
    ),
    output: Path = typer.Option(..., help="File to write (safetensors, or JSONL with --format vllm-base64)."),
    text: Optional[list[str]] = typer.Option(None, "--text", help="A text to export; repeat for several."),
    input: Optional[Path] = typer.Option(
        None, help="More texts: JSONL (a 'text' or 'source' field) or plain text lines; - = stdin."
    ),
    format: str = typer.Option(
        "safetensors",
        help="safetensors (embeds.0, embeds.1, … in text order) | vllm-base64 (JSONL: text, prompt_embeds).",
    ),
    model: Optional[str] = typer.Option(
        None, help="Backbone (default: the run's); vLLM must serve these same weights."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress; show the traceback of an error."),
):
    """Write the prompted input embeddings [P ; E(x) + offsets] of each text, for vLLM's prompt_embeds
    (decoder-only backbones)."""
    _setup_logging(verbose)
    check_choice("--format", format, EXPORT_FORMATS)
    if output.is_dir() or not output.parent.is_dir():
        raise UsageError(f"--output {output} is a folder or lies in a missing one; give a file.")
    trained = Trained(adapter, model)
    if trained.method not in ("dept", "pt"):
        raise UsageError(
            f"{trained.adapter} holds a --method {trained.method} run; only dept and pt adapters are prompt embeddings."
        )
    if trained.kind not in (None, "causal"):
        raise UsageError(
            f"{trained.adapter} was trained on a {trained.kind} backbone; vLLM takes prompt_embeds for decoder-only "
            "(causal) models only."
        )
    texts = list(text or []) + (_read_inputs(input) if input is not None else [])
    if not texts:
        raise UsageError("No texts to export; pass --text TEXT (repeatable) or --input FILE.")

    from dept.export import export_prompt_embeds

    model_, tokenizer = trained.load()
    embeds = export_prompt_embeds(model_, tokenizer, texts)
    # What vLLM must serve: the folder or hub id loaded (a named offline backbone: its converted copy).
    backbone = str(model_.base_model.name_or_path)
    if format == "safetensors":
        from safetensors.torch import save_file

        metadata = {"format": "pt", "count": str(len(embeds)), "adapter": str(trained.adapter), "backbone": backbone}
        save_file({f"embeds.{i}": t for i, t in enumerate(embeds)}, output, metadata=metadata)
    else:
        import base64
        import io

        import torch

        with open(output, "w", encoding="utf-8") as out:
            for t, e in zip(texts, embeds):
                buffer = io.BytesIO()
                torch.save(e, buffer)
                out.write(json.dumps({"text": t, "prompt_embeds": base64.b64encode(buffer.getvalue()).decode()}) + "\n")
    typer.echo(f"wrote {output}: {len(embeds)} tensor(s), {embeds[0].dtype}, for vLLM serving {backbone}")


@app.command()
def convert(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="Official DePT checkpoint folder."),
    dst: Path = typer.Argument(..., help="Output folder (dept format: safetensors + JSON)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the traceback of an error."),
):
    """Convert an official DePT checkpoint (pickled .bin) to dept's safetensors format."""
    from dept.checkpoint import convert_official

    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst} is a file; give a folder for the converted adapter.")

    config = convert_official(src, dst)
    typer.echo(f"wrote {dst}: m={config.prompt_length} r={config.rank} s={config.max_length}")


@app.command()
def tasks():
    """List the registered tasks."""
    from dept.tasks import list_tasks

    for name in list_tasks():
        typer.echo(name)


def _register_bench() -> None:
    from dept.bench.cli import bench_command  # no torch import: `dept --help` stays fast

    app.command("bench", help="Time and memory of DePT vs prompt tuning (ours, PEFT) and LoRA, side by side.")(
        bench_command
    )


_register_bench()


def _register_serve() -> None:
    from dept.serve.cli import serve_command

    app.command("serve")(serve_command)


_register_serve()


def _one_line(err: BaseException) -> str:
    sources = sys.modules.get("dept.tasks.sources")
    if sources is not None and isinstance(err, sources.DataNotFoundError):
        return f"No data found for task {err.task!r} ({'; '.join(err.tried)}). To fix: {'; '.join(err.fixes)}."
    text = str(err) if str(err) else type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Optional[list[str]] = None) -> int:
    """The console script: one `error:` line and exit status 2 for each user mistake; --verbose adds the traceback.
    Other exceptions are bugs in dept and propagate with their traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in args or "-v" in args
    try:
        code = app(args, prog_name="dept", standalone_mode=False)
    except ClickException as err:  # unknown command or option, a missing or malformed value
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `dept`: the help, as click shows it
            typer.echo(err.format_message(), err=True)
            return 2
        message, cause = err.format_message(), err
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    except USER_ERRORS as err:
        message, cause = _one_line(err), err
    else:
        return code if isinstance(code, int) else 0
    if verbose:
        traceback.print_exception(cause)
    typer.echo(f"error: {message}", err=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
