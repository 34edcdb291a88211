"""The commands that use a trained adapter: eval, predict and export-embeds. Imports no torch at module
level, so `dept --help` stays fast."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from dept.cli.flags import VERBOSE, option_of, setup_logging
from dept.methods import METHODS
from dept.options import (
    PRECISIONS,
    SCORINGS,
    SPLITS,
    MethodOptions,
    TrainOptions,
    UsageError,
    check_at_least,
    check_choice,
    not_utf8,
    read_text,
)
from dept.runs.trained import Trained, model_kind_of

logger = logging.getLogger("dept.cli")

ADAPTER = typer.Option(
    ..., exists=True, file_okay=False, help="Adapter folder (RUN/best), or a run folder: its best/ is used."
)
RUN_MODEL = typer.Option(None, help="Backbone (default: the run's, from its run.json).")


def _task(name: str, run: dict):
    """The task, with the run's custom-data options when it is the run's own task."""
    from dept.tasks import get_task

    return get_task(name, **((run.get("task_options") or {}) if name == run.get("task") else {}))


def eval_command(
    adapter: Path = ADAPTER,
    task: str = typer.Option(..., help="Task to score on."),
    split: str = typer.Option("test", help=" | ".join(SPLITS)),
    model: Optional[str] = RUN_MODEL,
    data_dir: Optional[Path] = typer.Option(None, envvar="DEPT_DATA_DIR", help="Default: the run's (run.json)."),
    split_rule: Optional[str] = typer.Option(
        None, help=f"paper | official (default: the run's, else {TrainOptions.split_rule})."
    ),
    split_seed: Optional[int] = typer.Option(
        None, help=f"Seed of the paper split (default: the run's, else {TrainOptions.split_seed})."
    ),
    max_length: Optional[int] = typer.Option(None, help="Longest input (default: the run's, else the adapter's s)."),
    scoring: Optional[str] = option_of(TrainOptions, "scoring"),
    precision: str = option_of(TrainOptions, "precision"),
    batch_size: int = option_of(TrainOptions, "eval_batch_size"),
    samples: Optional[int] = typer.Option(None, help="Score only the first N examples."),
    verbose: bool = VERBOSE,
):
    """Score a trained adapter on a task split (with the run's split rule, split seed and data); prints the metrics as JSON."""
    from dept.precision import resolve_precision
    from dept.tasks.splits import SPLIT_RULES

    setup_logging(verbose)
    check_choice("--split", split, SPLITS)
    if scoring is not None:
        check_choice("--scoring", scoring, SCORINGS)
    check_choice("--precision", precision, PRECISIONS)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--samples", samples, 0)
    check_at_least("--max-length", max_length, 1)
    trained = Trained(adapter, model)
    spec = _task(task, trained.run)
    from dept.tasks.instructions import scoring_for

    scoring = scoring_for(spec, scoring)
    data_dir = trained.setting("data_dir", "--data-dir", str(data_dir) if data_dir else None, None)
    split_rule = trained.setting("split_rule", "--split-rule", split_rule, TrainOptions.split_rule)
    check_choice("--split-rule", split_rule, SPLIT_RULES)
    split_seed = trained.setting("split_seed", "--split-seed", split_seed, TrainOptions.split_seed)
    max_length = trained.setting(
        "max_length", "--max-length", max_length, trained.max_length or MethodOptions.max_length
    )
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(
            f"--data-dir {data_dir} (given, or the run's) is not a folder; pass the folder that holds glue/ and superglue/."
        )
    splits = spec.load(data_dir=data_dir, split_rule=split_rule, seed=split_seed, use_hub=data_dir is None)
    examples = splits[split][:samples]

    from dept.chat import prepare
    from dept.data import count_truncated
    from dept.scoring import evaluate

    model_, tokenizer = trained.load()
    kind = model_kind_of(model_)
    # The run's formatting (--chat-template) and, for instruction data, its generation length.
    prepare(spec, tokenizer, kind, splits["train"], [examples], bool(trained.run.get("chat_template")), max_length)
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


def predict(
    adapter: Path = ADAPTER,
    input: Path = typer.Option(Path("-"), help="JSONL (a 'source' or 'text' field) or plain text lines; - = stdin."),
    output: Path = typer.Option(Path("-"), help="JSONL out; - = stdout."),
    task: Optional[str] = typer.Option(None, help="Rank this task's labels instead of generating."),
    model: Optional[str] = RUN_MODEL,
    max_new_tokens: int = typer.Option(20, help="Most tokens generated per input (without --task)."),
    batch_size: int = typer.Option(16, help="Inputs per batch."),
    precision: str = option_of(TrainOptions, "precision"),
    verbose: bool = VERBOSE,
):
    """Predict for new inputs: ranked label (with --task) or generated text, one JSON line each."""
    setup_logging(verbose)
    check_choice("--precision", precision, PRECISIONS)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--max-new-tokens", max_new_tokens, 1)
    if str(output) != "-" and (output.is_dir() or not output.parent.is_dir()):
        raise UsageError(f"--output {output} is a folder or lies in a missing one; give a file (or - for stdout).")
    trained = Trained(adapter, model)
    spec = _task(task, trained.run) if task else None
    if getattr(spec, "free_form", False):
        raise UsageError(f"--task ranks label strings, and {task} has free-form completions; leave --task out.")
    sources = _read_inputs(input)
    if not sources:
        return
    max_length = trained.setting("max_length", "--max-length", None, trained.max_length or MethodOptions.max_length)

    from dept.chat import render
    from dept.data import count_long, target_ids
    from dept.precision import resolve_precision
    from dept.scoring import candidates_for, generate_texts, rank_scores

    model_, tokenizer = trained.load()
    kind = model_kind_of(model_)
    precision = resolve_precision(precision)
    inputs = sources
    if trained.run.get("chat_template"):  # formatted as the run's inputs were: each one a user message
        sources = [render(tokenizer, [{"role": "user", "content": s}]) for s in sources]
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
            for s, sc in zip(inputs, scores)
        ]
    else:
        texts = generate_texts(model_, tokenizer, kind, sources, max_length, max_new_tokens, batch_size, precision)
        rows = [{"source": s, "prediction": t} for s, t in zip(inputs, texts)]
    out = sys.stdout if str(output) == "-" else open(output, "w", encoding="utf-8")
    for row in rows:
        out.write(json.dumps(row) + "\n")
    out.flush()


EXPORT_FORMATS = ("safetensors", "vllm-base64")


def export_embeds(
    adapter: Path = ADAPTER,
    output: Path = typer.Option(..., help="File to write (safetensors, or JSONL with --format vllm-base64)."),
    text: Optional[list[str]] = typer.Option(None, "--text", help="A text to export; repeat for several."),
    input: Optional[Path] = typer.Option(
        None, help="More texts: JSONL (a 'text' or 'source' field) or plain text lines; - = stdin."
    ),
    format: str = typer.Option(
        "safetensors",
        help="safetensors (embeds.0, embeds.1, … in text order) | vllm-base64 (JSONL: text, prompt_embeds).",
    ),
    model: Optional[str] = RUN_MODEL,
    verbose: bool = VERBOSE,
):
    """Write the prompted input embeddings [P ; E(x) + offsets] of each text, for vLLM's prompt_embeds
    (decoder-only backbones; vLLM must serve the same backbone weights)."""
    setup_logging(verbose)
    check_choice("--format", format, EXPORT_FORMATS)
    if output.is_dir() or not output.parent.is_dir():
        raise UsageError(f"--output {output} is a folder or lies in a missing one; give a file.")
    trained = Trained(adapter, model)
    if not trained.method.trains_prompt:
        prompts = ", ".join(name for name, m in METHODS.items() if m.trains_prompt)
        raise UsageError(
            f"{trained.adapter} holds a --method {trained.method.name} run; only {prompts} adapters are prompt "
            "embeddings."
        )
    if trained.kind not in (None, "causal"):
        raise UsageError(
            f"{trained.adapter} was trained on a {trained.kind} backbone; vLLM takes prompt_embeds for decoder-only "
            "(causal) models only."
        )
    texts = list(text or []) + (_read_inputs(input) if input is not None else [])
    if not texts:
        raise UsageError("No texts to export; pass --text TEXT (repeatable) or --input FILE.")

    from dept.core.export import export_prompt_embeds

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
