"""The `dept` command line: train, eval, predict, bench, convert, tasks."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Decomposed Prompt Tuning (DePT) for any Hugging Face model.")

# The main job: DePT on SmolLM2-135M, GLUE STS-B from the offline package; a few minutes on 2 CPU cores.
MAIN_JOB = dict(task="glue/stsb", max_steps=120, batch_size=8, eval_every=60, eval_samples=200, test_samples=200)
RUN_DEFAULTS = dict(max_steps=300, batch_size=16, eval_every=100)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@app.command()
def train(
    task: Optional[str] = typer.Option(None, help="glue/<task>, superglue/<task>, csv:PATH or jsonl:PATH. Omit to run the main job."),
    method: str = typer.Option("dept", help="dept | pt | lora | full"),
    model: str = typer.Option("smollm2-135m", help="Named offline backbone, hub id or local directory."),
    output_dir: Optional[Path] = typer.Option(None, help="Where checkpoints, metrics.jsonl, results.json and the curve go."),
    data_dir: Optional[Path] = typer.Option(None, envvar="DEPT_DATA_DIR", help="Folder with glue/ and superglue/ in the original layout."),
    split_rule: str = typer.Option("paper", help="paper (DePT's splits) or official (train/dev as released)."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (default 300; main job 120)."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (default 16; main job 8)."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    budget: int = typer.Option(100, help="PT prompt length l whose parameter count DePT matches."),
    prompt_length: int = typer.Option(60, help="DePT prompt length m."),
    rank: Optional[int] = typer.Option(None, help="DePT rank r (default: budget-matched)."),
    max_length: int = typer.Option(256, help="Longest input s (tokens); longer sources are truncated."),
    lr_prompt: float = typer.Option(3e-2, help="Learning rate of the soft prompt."),
    lr_lowrank: float = typer.Option(1e-3, help="Learning rate of the low-rank pair A, B."),
    lr: float = typer.Option(5e-4, help="Learning rate for --method lora/full."),
    lora_rank: int = typer.Option(8),
    warmup_steps: Optional[int] = typer.Option(None, help="Default min(500, max_steps/10)."),
    max_grad_norm: float = typer.Option(1.0),
    precision: str = typer.Option("auto", help="auto | bf16 | fp32 (auto = bf16 where the hardware has it)."),
    gradient_checkpointing: bool = typer.Option(False),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate and checkpoint every N steps (default 100)."),
    eval_samples: Optional[int] = typer.Option(None, help="Evaluate on the first N validation examples."),
    test_samples: Optional[int] = typer.Option(None, help="Test on the first N test examples."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many evaluations without improvement."),
    scoring: str = typer.Option("rank", help="rank (label log-likelihood) or generate (greedy, exact match)."),
    k_shot: Optional[int] = typer.Option(None, help="Train on k examples per class."),
    init_from: Optional[Path] = typer.Option(None, help="Start from this adapter (transfer)."),
    reset_lowrank_b: bool = typer.Option(False, help="With --init-from: zero B, keep the prompt and A."),
    text_fields: Optional[str] = typer.Option(None, help="Custom tasks: comma-separated input columns."),
    label_field: Optional[str] = typer.Option(None, help="Custom tasks: label column."),
    zero_shot: bool = typer.Option(False, help="Also score the untouched backbone."),
    seed: int = typer.Option(42),
    resume: bool = typer.Option(False, help="Continue from OUTPUT_DIR/checkpoint."),
    tensorboard: bool = typer.Option(False),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Train one adapter (or baseline) on one task; without --task, run the main job."""
    from dept.methods import MethodOptions
    from dept.train import TrainOptions, train as run_train

    _setup_logging(verbose)
    main_job = task is None
    given = {k: v for k, v in dict(max_steps=max_steps, batch_size=batch_size, eval_every=eval_every,
                                   eval_samples=eval_samples, test_samples=test_samples).items() if v is not None}
    settings = {**RUN_DEFAULTS, **(MAIN_JOB if main_job else {"task": task}), **given}
    settings["output_dir"] = str(output_dir or ("runs/main" if main_job else f"runs/{method}"))
    if main_job:
        zero_shot = True
        typer.echo(f"Main job: DePT on {model}, {settings['task']}, {settings['max_steps']} steps -> {settings['output_dir']}")
    task_options = {}
    if text_fields:
        task_options["text_fields"] = text_fields.split(",")
    if label_field:
        task_options["label_field"] = label_field
    opts = TrainOptions(
        **settings, model=model, data_dir=str(data_dir) if data_dir else None, split_rule=split_rule, grad_accum=grad_accum,
        warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, precision=precision,
        gradient_checkpointing=gradient_checkpointing, patience=patience, scoring=scoring, k_shot=k_shot, seed=seed,
        resume=resume, zero_shot=zero_shot, tensorboard=tensorboard, task_options=task_options,
        method=MethodOptions(method=method, budget=budget, prompt_length=prompt_length, rank=rank, max_length=max_length,
                             lora_rank=lora_rank, lr_prompt=lr_prompt, lr_lowrank=lr_lowrank, lr=lr,
                             init_from=str(init_from) if init_from else None, reset_lowrank_b=reset_lowrank_b, seed=seed),
    )
    results = run_train(opts)
    if results:
        typer.echo(_summary(results))


def _summary(results: dict) -> str:
    metric = results["main_metric"]
    lines = [f"{results['method']} on {results['task']} ({results['model']}): {results['trainable_parameters']:,} trainable "
             f"parameters, {results['steps']} steps, {results['train_seconds']:.0f} s, peak {results['peak_memory_mb']:.0f} MB"]
    for split in ("validation", "test"):
        if split in results:
            zero = results.get(f"zero_shot_{split}")
            before = f"zero-shot {zero[metric]:.1f} -> " if zero else ""
            lines.append(f"  {split:<10} {metric}: {before}trained {results[split][metric]:.1f}")
    return "\n".join(lines)


def _run_settings(adapter: Path) -> dict:
    """The run.json of the training run that produced `adapter` (it sits in the run folder)."""
    for folder in (adapter, *adapter.parents[:2]):
        if (folder / "run.json").is_file():
            return json.loads((folder / "run.json").read_text())
    return {}


def _load_trained(adapter: Path, model: Optional[str]):
    """Backbone + trained weights for eval/predict: dept adapters, peft LoRA adapters or full models."""
    from dept.backbones import load_backbone
    from dept.model import DePTModel

    run = _run_settings(adapter)
    backbone_name = model or run.get("model")
    method = run.get("method", {}).get("method", "dept")
    if method == "full":
        backbone, tokenizer = load_backbone(str(adapter))
        return backbone, tokenizer, run
    if backbone_name is None:
        raise typer.BadParameter("No run.json next to the adapter names its backbone; pass --model.")
    backbone, tokenizer = load_backbone(backbone_name)
    if method == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(backbone, adapter), tokenizer, run
    return DePTModel.from_pretrained(backbone, adapter, tokenizer=tokenizer), tokenizer, run


def _kind(model) -> str:
    from dept.kinds import model_kind

    return getattr(model, "kind", None) or model_kind(model.get_base_model() if hasattr(model, "get_base_model") else model)


@app.command("eval")
def eval_command(
    adapter: Path = typer.Option(..., exists=True, file_okay=False, help="Adapter folder (e.g. runs/x/best)."),
    task: str = typer.Option(..., help="Task to score on."),
    split: str = typer.Option("test", help="train | validation | test"),
    model: Optional[str] = typer.Option(None, help="Backbone (default: the one in the run's run.json)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="DEPT_DATA_DIR"),
    split_rule: str = typer.Option("paper"),
    scoring: str = typer.Option("rank"),
    precision: str = typer.Option("auto"),
    batch_size: int = typer.Option(32),
    samples: Optional[int] = typer.Option(None, help="Score only the first N examples."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Score a trained adapter on a task split; prints the metrics as JSON."""
    from dept.scoring import evaluate
    from dept.tasks import get_task
    from dept.precision import resolve_precision

    _setup_logging(verbose)
    trained, tokenizer, run = _load_trained(adapter, model)
    spec = get_task(task, **(run.get("task_options", {}) if task == run.get("task") else {}))
    examples = spec.load(data_dir=str(data_dir) if data_dir else None, split_rule=split_rule)[split][:samples]
    max_length = run.get("method", {}).get("max_length", 256)
    metrics, _ = evaluate(trained, tokenizer, _kind(trained), spec, examples, max_length, scoring, batch_size, resolve_precision(precision))
    typer.echo(json.dumps({"task": task, "split": split, "examples": len(examples), **metrics}, indent=2))


@app.command()
def predict(
    adapter: Path = typer.Option(..., exists=True, file_okay=False),
    input: Path = typer.Option(Path("-"), help="JSONL (a 'source' or 'text' field) or plain text lines; - = stdin."),
    output: Path = typer.Option(Path("-"), help="JSONL out; - = stdout."),
    task: Optional[str] = typer.Option(None, help="Rank this task's labels instead of generating."),
    model: Optional[str] = typer.Option(None),
    max_new_tokens: int = typer.Option(20),
    batch_size: int = typer.Option(16),
    precision: str = typer.Option("auto"),
):
    """Predict for new inputs: ranked label (with --task) or generated text, one JSON line each."""
    from dept.scoring import candidates_for, generate_texts, rank_scores
    from dept.tasks import get_task
    from dept.precision import resolve_precision

    _setup_logging(False)
    trained, tokenizer, run = _load_trained(adapter, model)
    kind = _kind(trained)
    max_length = run.get("method", {}).get("max_length", 256)
    stream = sys.stdin if str(input) == "-" else open(input, encoding="utf-8")
    sources = []
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            record = json.loads(line)
            if "source" not in record and "text" not in record:
                raise typer.BadParameter(f"JSON line without a 'source' or 'text' field: {line[:80]}")
            sources.append(record.get("source", record.get("text")))
        else:
            sources.append(line)
    precision = resolve_precision(precision)
    if task:
        candidates, values = candidates_for(get_task(task))
        scores = rank_scores(trained, tokenizer, kind, sources, candidates, max_length, batch_size, precision)
        rows = [{"source": s, "prediction": candidates[int(sc.argmax())],
                 **({"expected_value": float((sc.softmax(-1) * values).sum())} if values is not None else {})}
                for s, sc in zip(sources, scores)]
    else:
        texts = generate_texts(trained, tokenizer, kind, sources, max_length, max_new_tokens, batch_size, precision)
        rows = [{"source": s, "prediction": t} for s, t in zip(sources, texts)]
    out = sys.stdout if str(output) == "-" else open(output, "w", encoding="utf-8")
    for row in rows:
        out.write(json.dumps(row) + "\n")
    out.flush()


@app.command()
def convert(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="Official DePT checkpoint folder."),
    dst: Path = typer.Argument(..., help="Output folder (dept format: safetensors + JSON)."),
):
    """Convert an official DePT checkpoint (pickled .bin) to dept's safetensors format."""
    from dept.checkpoint import convert_official

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

    app.command("bench", help="Time and memory of DePT vs prompt tuning (ours, PEFT) and LoRA, side by side.")(bench_command)


_register_bench()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
