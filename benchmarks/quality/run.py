"""Quality benchmark: zero-shot, PT (l=100), DePT (m=60, budget-matched rank) and LoRA (r=8) on
SmolLM2-135M for GLUE SST-2, RTE, CoLA and STS-B, one fixed step budget for every run.

Each run is a separate `dept train` process (so its peak memory is its own) writing into
OUT/<task>/<method>; finished runs are skipped, so the suite resumes after an interruption.

    .venv/bin/python benchmarks/quality/run.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TASKS = ["glue/sst2", "glue/rte", "glue/cola", "glue/stsb"]
METHODS = {
    "pt": ["--method", "pt", "--budget", "100", "--zero-shot"],
    "dept": ["--method", "dept", "--budget", "100", "--prompt-length", "60"],
    "lora": ["--method", "lora", "--lora-rank", "8"],
}
LABELS = {"zero-shot": "zero-shot", "pt": "PT (l=100)", "dept": "DePT (m=60)", "lora": "LoRA (r=8)"}


def run_one(task: str, method: str, args) -> dict:
    folder = args.runs / task.replace("/", "-") / method
    done = folder / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    cmd = [
        sys.executable,
        "-m",
        "dept.cli",
        "train",
        "--task",
        task,
        "--model",
        args.model,
        "--data-dir",
        str(args.data_dir),
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--eval-every",
        str(args.steps // 2),
        "--eval-samples",
        str(args.eval_samples),
        "--test-samples",
        str(args.test_samples),
        "--lr-prompt",
        str(args.lr_prompt),
        "--lr-lowrank",
        str(args.lr_lowrank),
        "--lr",
        str(args.lr_lora),
        "--max-length",
        "256",
        "--output-dir",
        str(folder),
        *METHODS[method],
    ]
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {task} {method}", flush=True)
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL if not args.verbose else None)
    print(f"    done in {time.time() - started:.0f} s", flush=True)
    return json.loads(done.read_text())


def table(results: dict) -> str:
    lines = [
        "| task (metric) | method | test | validation | trainable params | train time (s) | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for task, runs in results.items():
        metric = next(iter(runs.values()))["main_metric"]
        pt = runs.get("pt", {})
        if "zero_shot_test" in pt:
            lines.append(
                f"| {task} ({metric}) | zero-shot | {pt['zero_shot_test'][metric]:.1f} | "
                f"{pt['zero_shot_validation'][metric]:.1f} | 0 | - | - |"
            )
        for method, r in runs.items():
            lines.append(
                f"| {task} ({metric}) | {LABELS[method]} | {r['test'][metric]:.1f} | {r['validation'][metric]:.1f} | "
                f"{r['trainable_parameters']:,} | {r['train_seconds']:.0f} | {r['peak_memory_mb']:.0f} |"
            )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    methods = ["zero-shot", *METHODS]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        scores = []
        for runs in results.values():
            metric = next(iter(runs.values()))["main_metric"]
            if method == "zero-shot":
                scores.append(runs.get("pt", {}).get("zero_shot_test", {}).get(metric, 0.0))
            else:
                scores.append(runs.get(method, {}).get("test", {}).get(metric, 0.0))
        ax.bar([t + i * width for t in range(len(results))], scores, width, label=LABELS[method])
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(results))])
    ax.set_xticklabels([f"{t}\n({next(iter(r.values()))['main_metric']})" for t, r in results.items()])
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("test score")
    ax.set_title("SmolLM2-135M, equal step budget per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPO = Path(__file__).resolve().parents[2]


def parser(description: str) -> argparse.ArgumentParser:
    """The suite's settings; sweep.py reuses them so a sweep differs only in what it varies."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DEPT_DATA_DIR", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quality", help="Checkpoints (not committed).")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument("--lr-prompt", type=float, default=3e-2)
    parser.add_argument("--lr-lowrank", type=float, default=1e-3)
    parser.add_argument("--lr-lora", type=float, default=5e-4)
    parser.add_argument("--verbose", action="store_true")
    return parser


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    if not args.data_dir.is_dir():
        sys.exit(f"GLUE data not found at {args.data_dir}; pass --data-dir or set DEPT_DATA_DIR.")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for task in args.tasks:
        for method in args.methods:
            results.setdefault(task, {})[method] = run_one(task, method, args)
            (args.out / "results.json").write_text(
                json.dumps(
                    {
                        "settings": vars(args)
                        | {"data_dir": "../shared/data", "out": "benchmarks/quality", "runs": "runs/quality"},
                        "results": results,
                    },
                    indent=2,
                    default=str,
                )
            )
    (args.out / "results.md").write_text(table(results) + "\n")
    plot(results, args.out / "scores.png")
    print(table(results))


if __name__ == "__main__":
    main()
