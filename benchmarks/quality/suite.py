"""The quality suite at the defaults: PT, DePT and ADePT at equal trainable parameters, nobody's rates tuned.

Every run: SmolLM2-135M, 300 steps x batch 8, no rate flags (each method at `dept train`'s defaults),
one validation at the end on the first 500 validation examples, then the whole test split, on one
fixed split (`--split-seed 42`) for every seed and method. Cells, seed by seed:

- SST-2, STS-B, CoLA x (PT l=100, DePT m=60, ADePT m=60) x seeds 0, 1, 2;
- ablation, SST-2 and STS-B, 3 seeds: PT l=60 (DePT without its update, at the same prompt rate);
- references, seed 0: zero-shot (scored by PT's seed-0 run before its first step) and LoRA r=8.

Each cell is one `dept train` into CELLS/<task>/<method>/seed-<k>; a finished cell (results.json) is
never rerun, a killed one resumes, so rerunning the command continues the suite. The report
(suite.{json,md,png} in --out) is rewritten after every cell. `--profile gpu` adds RTE and runs
`--jobs` cells at once (one GPU holds many such runs); `--steps`, `--tasks`, `--model` rehearse it small.

    nice .venv/bin/python benchmarks/quality/suite.py --data-dir ../shared/data     # CPU: about 8 hours
    .venv/bin/python benchmarks/quality/suite.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run import METHODS, SPLIT_SEED, dept, finished, fmt, machine, mean_std, precisions, read, row, step

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
CPU_TASKS = ["glue/sst2", "glue/stsb", "glue/cola"]
GPU_TASKS = [*CPU_TASKS, "glue/rte"]  # RTE costs about twice the others and was at chance at 150 steps on CPU
ABLATION_TASKS = ["glue/sst2", "glue/stsb"]
ARMS = {  # method -> (label, flags); the flags never set a rate
    "pt": ("PT l=100", METHODS["pt"]),
    "dept": ("DePT m=60", METHODS["dept"]),
    "adept": ("ADePT m=60", METHODS["adept"]),
    "pt60": ("PT l=60 (DePT without its update)", ["--method", "pt", "--budget", "60"]),
    "lora": ("LoRA r=8", METHODS["lora"]),
}
LABELS = {**{k: v[0] for k, v in ARMS.items()}, "zero-shot": "zero-shot"}
MAIN = ("pt", "dept", "adept")
PAIRS = (("dept", "pt"), ("adept", "dept"), ("adept", "pt"), ("dept", "pt60"))
REPORTING = threading.Lock()  # --jobs > 1: one report at a time


def cells(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(task, method, seed), seed-major: a cut-off suite still pairs every method on the seeds it finished."""
    todo = []
    for seed in range(args.seeds):
        for task in args.tasks:
            todo += [(task, method, seed) for method in MAIN]
            todo += [(task, "pt60", seed)] if task in ABLATION_TASKS else []
            todo += [(task, "lora", seed)] if seed == 0 else []
    return [cell for cell in todo if cell[1] in args.methods]


def folder(args: argparse.Namespace, task: str, method: str, seed: int) -> Path:
    kind, _, path = task.partition(":")
    name = f"{kind}-{Path(path).stem}" if path else task.replace("/", "-")  # csv:DIR/x.csv -> csv-x
    return args.cells / name / method / f"seed-{seed}"


def train_cell(args: argparse.Namespace, task: str, method: str, seed: int) -> None:
    out = folder(args, task, method, seed)
    flags = [
        "--task", task, "--model", args.model, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--eval-every", str(args.steps), "--eval-samples", str(args.eval_samples), "--max-length", "256",
        "--split-seed", str(SPLIT_SEED), "--seed", str(seed), "--output-dir", out, "--resume",
        *(["--data-dir", args.data_dir] if args.data_dir else []),
        *(["--zero-shot"] if method == "pt" and seed == 0 else []), *ARMS[method][1],
    ]  # fmt: skip
    step(out, finished, dept("train", *flags))


def collect(args: argparse.Namespace) -> list[dict]:
    rows = []
    for task, method, seed in cells(args):
        r = read(folder(args, task, method, seed) / "results.json")
        if r is None:
            continue
        rows.append(
            {**row(task, method, seed, r), "step_seconds": step_seconds(folder(args, task, method, seed), args)}
        )
        if method == "pt" and "zero_shot_test" in r:
            rows.append(row(task, "zero-shot", None, r, score="zero-shot"))
    return rows


def step_seconds(run: Path, args: argparse.Namespace) -> float | None:
    """Median seconds per training step from the run's log: wall time per run also counts the seconds
    other jobs on the machine took (and a paused run's pause); the median step mostly does not."""
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    speeds = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    return args.batch_size / statistics.median(speeds) if speeds else None


def scores(rows: list[dict], task: str | None, method: str, split: str = "test") -> dict[int, float]:
    """Seed -> score; task None: the mean over the tasks (only seeds every task finished)."""
    if task is not None:
        return {r["seed"]: r[split] for r in rows if r["task"] == task and r["method"] == method}
    per_task = [scores(rows, t, method, split) for t in sorted({r["task"] for r in rows if r["method"] == method})]
    seeds = set.intersection(*(set(s) for s in per_task)) if per_task else set()
    return {k: sum(s[k] for s in per_task) / len(per_task) for k in seeds}


def paired(rows: list[dict], task: str | None, a: str, b: str) -> list[float]:
    """a − b by seed; task None: the mean over the tasks both ran (PT l=60 runs on two of them)."""
    if task is None:
        tasks = sorted({r["task"] for r in rows if r["method"] == a} & {r["task"] for r in rows if r["method"] == b})
        per_task = [dict(zip(*paired_seeds(rows, t, a, b))) for t in tasks]
        seeds = sorted(set.intersection(*(set(d) for d in per_task))) if per_task else []
        return [sum(d[k] for d in per_task) / len(per_task) for k in seeds]
    return paired_seeds(rows, task, a, b)[1]


def paired_seeds(rows: list[dict], task: str, a: str, b: str) -> tuple[list[int], list[float]]:
    left, right = scores(rows, task, a), scores(rows, task, b)
    seeds = [k for k in sorted(left) if k in right]
    return seeds, [left[k] - right[k] for k in seeds]


def time_ratio(rows: list[dict], key: str) -> list[float]:
    """DePT's time over PT's, run by run (same task and seed)."""
    return [
        x[key] / y[key]
        for x in rows if x["method"] == "dept" and x.get(key)
        for y in rows if y["method"] == "pt" and (y["task"], y["seed"]) == (x["task"], x["seed"]) and y.get(key)
    ]  # fmt: skip


def verdict(differences: list[float]) -> str:
    """Mean ± std of paired differences, and the two-sided p of a paired t-test (3 seeds: a weak test)."""
    from scipy import stats

    if len(differences) < 2 or statistics.stdev(differences) == 0:
        return f"{fmt(differences)} (n={len(differences)}, no test)"
    p = stats.ttest_1samp(differences, 0.0).pvalue
    return f"{fmt(differences)} (n={len(differences)}, paired t-test p={p:.2g})"


def targets(rows: list[dict], settings: dict) -> list[str]:
    """Issue 22's targets, stated from the rows; provisional until every task has every seed."""
    done = all(len(scores(rows, t, m)) == settings["seeds"] for t in settings["tasks"] for m in MAIN)
    lines = ["", "## Targets" + ("" if done else " (provisional: the suite is not finished)"), ""]
    for a, b, what in (("dept", "pt", "DePT's mean over tasks ≥ PT's"), ("adept", "dept", "ADePT's ≥ DePT's")):
        d = paired(rows, None, a, b)
        if d:
            state = "met" if statistics.fmean(d) >= 0 else f"missed by {-statistics.fmean(d):.1f} points"
            lines.append(f"- {what}: {state}; paired difference {verdict(d)}.")
    if ratio := time_ratio(rows, "step_seconds"):
        state = "met" if max(ratio) < 1 else "missed"
        lines.append(f"- DePT's training time per run lower than PT's: {state}; median step DePT/PT {fmt(ratio, 3)}.")
    for t in ABLATION_TASKS:
        if d := paired(rows, t, "dept", "pt60"):
            lines.append(f"- What `A·B` adds at the defaults ({t}, DePT − PT l=60): {verdict(d)}.")
    return lines


def markdown(rows: list[dict], settings: dict) -> str:
    s = settings
    tasks = [t for t in s["tasks"] if any(r["task"] == t for r in rows)]
    methods = [m for m in LABELS if any(r["method"] == m for r in rows)]
    lines = [
        f"# Quality at the defaults: PT, DePT, ADePT ({s['model']})",
        "",
        f"Machine: {s['machine']}, torch {s['torch']}, precision {s['precision']}. Every run: {s['steps']} steps x batch "
        f"{s['batch_size']}, each method at `dept train`'s default rates, validation on the first "
        f"{s['eval_samples']} validation examples at the end, the whole test split, split seed {SPLIT_SEED}. "
        "Test scores, mean ± std over seeds (n = seeds finished); the mean over tasks uses seeds every task finished.",
        "",
        "| method | " + " | ".join(tasks) + " | mean over tasks | train s/run | median s/step |",
        "|---|" + "---:|" * (len(tasks) + 3),
    ]
    for m in methods:
        cols = []
        for t in tasks:
            values = (
                list(scores(rows, t, m).values())
                if m != "zero-shot"
                else [r["test"] for r in rows if r["task"] == t and r["method"] == m]
            )
            cols.append(f"{fmt(values)} (n={len(values)})" if values else "-")
        ran_all = all(scores(rows, t, m) for t in tasks)  # PT l=60 runs on two tasks: no mean over three
        mean = list(scores(rows, None, m).values()) if m != "zero-shot" and ran_all else []
        seconds = [r["train_seconds"] for r in rows if r["method"] == m and m != "zero-shot"]
        step = [r["step_seconds"] for r in rows if r["method"] == m and r.get("step_seconds")]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cols) + f" | {fmt(mean)} | {fmt(seconds)} | {fmt(step, 2)} |")
    lines += ["", "Paired by seed (seed k against seed k), test points:", ""]
    for a, b in PAIRS:
        parts = [f"{t} {fmt(d)} (n={len(d)})" for t in [*tasks, None] if (d := paired(rows, t, a, b))]
        parts = [p.replace("None", "mean over tasks") for p in parts]
        if parts:
            lines.append(f"- {LABELS[a]} − {LABELS[b]}: " + "; ".join(parts))
    lines.append("")
    for key, what in (("train_seconds", "training wall time per run"), ("step_seconds", "median step time")):
        if ratio := time_ratio(rows, key):
            lines.append(f"DePT/PT {what}, paired: {fmt(ratio, 3)} (n={len(ratio)}).  ")
    lines.append("Times share the machine with whatever else ran; `dept bench` measures speed side by side.")
    rates = {r["method"]: (r["lr_prompt"], r["lr_lowrank"], r["lr"]) for r in rows if r["method"] != "zero-shot"}
    lines += [
        "",
        "Rates the runs used (lr_prompt, lr_lowrank, lr): " + "; ".join(f"{LABELS[m]} {v}" for m, v in rates.items()),
        *targets(rows, settings),
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], settings: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in settings["tasks"] if any(r["task"] == t for r in rows)]
    methods = [m for m in LABELS if m != "zero-shot" and any(r["method"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(2.5 + 2 * len(tasks), 4))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        stats = [mean_std(list(scores(rows, t, m).values()) or [0.0]) for t in tasks]
        ax.bar([i + j * width for i in range(len(tasks))], [x[0] for x in stats], width,
               yerr=[x[1] for x in stats], capsize=3, label=LABELS[m])  # fmt: skip
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))])
    ax.set_xticklabels(tasks)
    ax.set_ylabel("test score (mean ± std over seeds)")
    ax.set_title(f"{settings['model']}, {settings['steps']} steps x batch {settings['batch_size']}, default rates")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    with REPORTING:
        write_report(args)


def write_report(args: argparse.Namespace) -> None:
    rows = collect(args)
    if not rows:
        return
    settings = {**machine(), "precision": precisions(rows), "model": args.model, "tasks": args.tasks,
                "steps": args.steps, "batch_size": args.batch_size, "eval_samples": args.eval_samples, "seeds": args.seeds}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    (args.out / "suite.md").write_text(markdown(rows, settings))
    plot(rows, settings, args.out / "suite.png")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DEPT_DATA_DIR", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, default=HERE / "cpu" / "suite", help="Report folder (suite.{json,md,png}).")
    parser.add_argument("--cells", type=Path, default=None, help="Run folders (default OUT/cells; committed).")
    parser.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--tasks", nargs="+", default=None, help="Default: the profile's.")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="Cells at once (keep 1 on a CPU).")
    parser.add_argument("--methods", nargs="+", choices=list(ARMS), default=list(ARMS), help="Default: every arm.")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.tasks = args.tasks or (GPU_TASKS if args.profile == "gpu" else CPU_TASKS)
    args.cells = (args.cells or args.out / "cells").resolve()
    if args.data_dir is not None and not args.data_dir.is_dir():
        args.data_dir = None  # tasks that read no data folder (csv:, jsonl:) rehearse without one
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.report_only:
        if args.data_dir is None and any(t.startswith(("glue/", "superglue/")) for t in args.tasks):
            sys.exit("GLUE data not found; pass --data-dir or set DEPT_DATA_DIR.")
        with ThreadPoolExecutor(args.jobs) as pool:
            for _ in pool.map(lambda cell: (train_cell(args, *cell), report(args)), cells(args)):
                pass
    report(args)
    if (args.out / "suite.md").is_file():
        print((args.out / "suite.md").read_text())


if __name__ == "__main__":
    main()
