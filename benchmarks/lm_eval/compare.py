"""The harness and dept score a trained adapter alike: one dept task (its split, split seed and first N
examples) scored through lm-evaluation-harness (`simple_evaluate`, model `dept`, the task written
by `dept.integrations.lm_eval.write_task`) and through dept's own `evaluate` / `rank_scores`.
Writes results.{json,md}: both accuracies and the largest |Δ log-likelihood| over (example, choice).

    .venv/bin/python benchmarks/lm_eval/compare.py --adapter runs/glue-sst2/dept --data-dir ../shared/data \\
        --task glue/sst2 --samples 200
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Optional

HERE = Path(__file__).parent


def relative(path) -> str:
    """A path as results may hold it: relative to the working directory, never absolute."""
    return os.path.relpath(Path(path).resolve(), Path.cwd())


def shown_task(task: str) -> str:
    """A task name as results may hold it: a custom task's file path relative."""
    prefix, sep, path = task.partition(":")
    return f"{prefix}:{relative(path)}" if sep else task


def command_line(argv: list[str], paths: dict[str, Optional[Path]]) -> str:
    """The command that made the results, its path arguments relative."""
    parts, given = (
        ["python", "benchmarks/lm_eval/compare.py"],
        {f"--{k.replace('_', '-')}": v for k, v in paths.items()},
    )
    i = 0
    while i < len(argv):
        flag = argv[i]
        parts.append(flag)
        if flag in given and given[flag] is not None and i + 1 < len(argv):
            parts.append(relative(given[flag]))
            i += 1
        elif flag == "--task" and i + 1 < len(argv):
            parts.append(shown_task(argv[i + 1]))
            i += 1
        i += 1
    return shlex.join(parts)


def harness_scores(lm, name: str, folder: Path) -> tuple[float, list[list[float]]]:
    """The harness's accuracy on the written task and its log-likelihood of every choice, per doc."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        num_fewshot=0,
        log_samples=True,
    )
    docs = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return out["results"][name]["acc,none"] * 100, [[float(r[0][0]) for r in s["resps"]] for s in docs]


def main(argv: Optional[list[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="Run folder or adapter folder.")
    parser.add_argument("--model", default=None, help="Backbone (default: the run's).")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--task", default="glue/sst2")
    parser.add_argument("--split", default="test")
    parser.add_argument("--split-seed", type=int, default=None, help="Default: the run's, else 42.")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)

    from dept.integrations.lm_eval import DePTLM, write_task
    from dept.runs.trained import Trained
    from dept.scoring import evaluate, rank_scores
    from dept.tasks import get_task

    trained = Trained(args.adapter, args.model)
    seed = trained.setting("split_seed", "--split-seed", args.split_seed, 42)
    rule = trained.setting("split_rule", "--split-rule", None, "paper")
    options = (trained.run.get("task_options") or {}) if args.task == trained.run.get("task") else {}
    data_dir = None if args.data_dir is None else str(args.data_dir)
    lm = DePTLM(pretrained=args.model, adapter=str(args.adapter), batch_size=args.batch_size)

    spec = get_task(args.task, **options)
    examples = spec.load(data_dir=data_dir, split_rule=rule, seed=seed, use_hub=data_dir is None)[args.split]
    examples = examples[: args.samples]
    with tempfile.TemporaryDirectory() as folder:
        name = write_task(args.task, folder, args.split, data_dir, seed, args.samples, rule, options)
        harness_acc, harness_ll = harness_scores(lm, name, Path(folder))
    metrics, _ = evaluate(lm.model, lm.tokenizer, lm.kind, spec, examples, lm.max_length, batch_size=args.batch_size)
    dept_ll = rank_scores(
        lm.model, lm.tokenizer, lm.kind, [e.source for e in examples], spec.label_words, lm.max_length
    )
    delta = max(abs(h - float(d)) for hs, ds in zip(harness_ll, dept_ll) for h, d in zip(hs, ds))
    paths = {"adapter": args.adapter, "data_dir": args.data_dir, "out": args.out}
    if args.model and Path(args.model).exists():
        paths["model"] = Path(args.model)
    results = {
        "task": shown_task(args.task),
        "split": args.split,
        "split_seed": seed,
        "examples": len(examples),
        "adapter": relative(args.adapter),
        "backbone": trained.backbone if not Path(str(trained.backbone)).exists() else relative(trained.backbone),
        "max_length": lm.max_length,
        "accuracy": {"lm-eval harness (acc)": harness_acc, "dept evaluate": metrics[spec.main_metric]},
        "max_abs_delta_loglik": delta,
        "command": command_line(argv, paths),
    }
    write(results, args.out)
    return results


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    acc = results["accuracy"]
    lines = [
        f"# {results['task']} ({results['split']}, split seed {results['split_seed']}, {results['examples']} examples)",
        "",
        f"Adapter `{results['adapter']}` on `{results['backbone']}`, max_length {results['max_length']}.",
        "",
        "| scorer | accuracy (%) |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in acc.items()),
        "",
        f"Largest |Δ log-likelihood| over all (example, choice) pairs: {results['max_abs_delta_loglik']:.2e}.",
        "",
        f"    {results['command']}",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
