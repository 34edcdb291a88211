"""The `dept` command line: train, tune, eval, predict, export-embeds, serve, bench, convert, tasks.

`main()` is the console script. A user mistake ends in one line `error: <what and how to fix>` on
stderr and exit status 2 (`--verbose` adds the traceback); a bug in dept still shows its traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from dept.bench.cli import bench_command
from dept.cli.adapter_commands import eval_command, export_embeds, predict
from dept.cli.flags import VERBOSE, flag_values, setup_logging, with_flags
from dept.options import (
    OPTION_NAMES,
    RATE_RANGES,
    MethodOptions,
    TrainOptions,
    TuneOptions,
    UsageError,
    options_from,
    read_config,
)
from dept.serve.cli import serve_command

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Decomposed Prompt Tuning (DePT) for any Hugging Face model."
)

# The main job: DePT on SmolLM2-135M for TrainOptions' default task (GLUE STS-B, offline package). 150 steps (the
# budget the default rates were searched at) and 200 examples per score, so the gain stands out of the noise of
# Pearson on few examples (its time on a 2-core CPU is in the README).
MAIN_JOB = dict(max_steps=150, batch_size=8, eval_every=150, eval_samples=200, test_samples=200, output_dir="runs/main")
MAIN_JOB_NOTES = {"task": "Omitted: the main job.", **{name: f"Main job: {value}." for name, value in MAIN_JOB.items()}}
# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError)
# click's base class for command-line mistakes (typer may vendor click, so found through typer's own BadParameter).
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


@app.command()
@with_flags(TrainOptions, MethodOptions, notes=MAIN_JOB_NOTES)
def train(
    ctx: typer.Context,
    text_fields: Optional[str] = typer.Option(None, help="Custom tasks: comma-separated input columns."),
    label_field: Optional[str] = typer.Option(None, help="Custom tasks: label column."),
    config: Optional[Path] = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="JSON file of options by name (e.g. a search's best.json); flags given here override it.",
    ),
    verbose: bool = VERBOSE,
    **flags,
):
    """Train one adapter (or baseline) on one task; without --task, run the main job."""
    setup_logging(verbose)
    values = read_config(config) if config else {}
    main_job = not _given(ctx, "task") and "task" not in values
    opts = _run_options(ctx, values)
    # Every option, the task name and custom data files are checked before any data or backbone loads.
    from dept.tasks import get_task

    opts.validate()
    get_task(opts.task, **opts.task_options)
    if main_job:
        typer.echo(f"Main job: DePT on {opts.model}, {opts.task}, {opts.max_steps} steps -> {opts.out}")
    from dept.runs.train import train as run_train

    results = run_train(opts)
    if results:
        typer.echo(_summary(results))


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


def _given(ctx: typer.Context, name: str) -> bool:
    """Typed on the command line (or set through its environment variable), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _run_options(ctx: typer.Context, values: dict, skip: tuple[str, ...] = ()) -> TrainOptions:
    """The run's options: the dataclass defaults (or the main job's, without a task), then `values`
    (a --config file), then the flags given."""
    values = dict(values)
    given = {k: v for k, v in ctx.params.items() if _given(ctx, k) and k not in skip}
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


def _range_help(name: str, methods: str) -> str:
    low, high = RATE_RANGES[name]
    return f"{methods}: LOW HIGH of the log-uniform search of --{name.replace('_', '-')} (default {low:g} {high:g})."


# tune takes train's options without restating them: the dataclasses' flags (without the main job's notes) and
# train's own, less those a search sets itself or has no use for.
@app.command()
@with_flags(
    TuneOptions,
    TrainOptions,
    MethodOptions,
    train,
    skip=("config", "resume", "overwrite", "zero_shot", "tensorboard", "lr_prompt", "lr_lowrank", "lr"),
)
def tune(
    ctx: typer.Context,
    task: str = typer.Option(..., help="The task whose validation split scores the trials."),
    lr_prompt_range: Optional[tuple[float, float]] = typer.Option(None, help=_range_help("lr_prompt", "dept/pt/adept")),
    lr_lowrank_range: Optional[tuple[float, float]] = typer.Option(None, help=_range_help("lr_lowrank", "dept/adept")),
    lr_range: Optional[tuple[float, float]] = typer.Option(None, help=_range_help("lr", "lora/full")),
    prompt_length_range: Optional[tuple[int, int]] = typer.Option(
        None, help="With --search-shape: LOW HIGH of m (default 10%..90% of --budget)."
    ),
    **flags,
):
    """Search the learning rates on the validation split (Optuna TPE + median pruning); resumable.

    Each trial is a training run in OUTPUT_DIR/trial-NNNN. OUTPUT_DIR/best.json holds the best trial's options
    for `dept train --config`; trials.json and trials.png show every trial. The test split is never scored.
    """
    setup_logging(flags["verbose"])
    logging.getLogger("dept.runs.tune").setLevel(logging.INFO)  # one line per trial, also without --verbose
    run = _run_options(ctx, {}, skip=("output_dir",))
    ranges = dict(
        lr_prompt=lr_prompt_range, lr_lowrank=lr_lowrank_range, lr=lr_range, prompt_length=prompt_length_range
    )
    opts = TuneOptions(**flag_values(TuneOptions, flags), ranges={k: v for k, v in ranges.items() if v is not None})
    # Mistakes are refused before torch, Optuna, data or a backbone load.
    from dept.tasks import get_task

    opts.validate(run)
    get_task(run.task, **run.task_options)
    from dept._extras import requires

    with requires("train"):
        import optuna
    from dept.runs.tune import tune as run_tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # dept.runs.tune logs its own line per trial
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


# The commands that use a trained adapter (dept.cli.adapter_commands).
app.command("eval")(eval_command)
app.command()(predict)
app.command("export-embeds")(export_embeds)


@app.command()
def convert(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="Official DePT checkpoint folder."),
    dst: Path = typer.Argument(..., help="Output folder (dept format: safetensors + JSON)."),
    verbose: bool = VERBOSE,
):
    """Convert an official DePT checkpoint (pickled .bin) to dept's safetensors format."""
    from dept.core.checkpoint import convert_official

    setup_logging(verbose)
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


# Commands in their own modules (which import no torch either).
app.command("bench", help="Time and memory of DePT vs prompt tuning (ours, PEFT) and LoRA, side by side.")(
    bench_command
)
app.command("serve")(serve_command)


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
