"""Quality suite: zero-shot, PT (l=100), DePT (m=60, budget-matched rank) and LoRA (r=8) on
SmolLM2-135M for GLUE SST-2, RTE, CoLA and STS-B, each method at its own tuned learning rates.

Per task and method: `dept tune` searches the method's rates on the validation split (the same
number of trials and steps for every method), then `dept train --config best.json` trains the
final runs, one per seed, and scores the whole test split. Zero-shot comes from PT's seed-0 run
(scored before its first step). The learning curves (`curves`) train PT and DePT on SST-2 at their
tuned rates several times longer, validated often, to show whether the ordering changes with
training length. Whether the default rates work is `defaults_check.py`'s question.

Every step is a separate `dept` process writing into RUNS/...; finished steps are skipped, and a
killed search resumes, so rerunning the command continues the suite. `--jobs N` runs N chains at
once (useful on a GPU, where one small run leaves the device mostly idle; keep 1 on CPU).

    .venv/bin/python benchmarks/quality/run.py --data-dir ../shared/data [--jobs 8]
    .venv/bin/python benchmarks/quality/run.py --report-only   # tables and plots from RUNS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
TASKS = ["glue/sst2", "glue/rte", "glue/cola", "glue/stsb"]
METHODS = {
    "pt": ["--method", "pt", "--budget", "100"],
    "dept": ["--method", "dept", "--budget", "100", "--prompt-length", "60"],
    "adept": ["--method", "adept", "--budget", "100", "--prompt-length", "60"],
    "lora": ["--method", "lora", "--lora-rank", "8"],
}
LABELS = {
    "zero-shot": "zero-shot",
    "pt": "PT (l=100)",
    "dept": "DePT (m=60)",
    "adept": "ADePT (m=60)",
    "lora": "LoRA (r=8)",
}
CURVE_TASK = "glue/sst2"
SPLIT_SEED = 42  # the paper's: every seed and method is scored on the same validation and test examples
LATER: list = []  # futures of the running pool, the learning curves included


def dept(*args: str | Path) -> list[str]:
    """A `dept` command line; paths go relative to the working directory, so no committed run.json names this machine."""
    return [sys.executable, "-m", "dept.cli", *(os.path.relpath(a) if isinstance(a, Path) else a for a in args)]


def step(folder: Path, done, cmd: list[str]) -> None:
    """Run `cmd` unless `done(folder)` says it ran; its output goes to folder/log.txt."""
    if done(folder):
        return
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] start {folder}", flush=True)
    with open(folder / "log.txt", "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    status = "done" if code == 0 else f"FAILED ({code}): {last_line(folder / 'log.txt')} (log: {folder / 'log.txt'})"
    print(f"[{time.strftime('%H:%M:%S')}] {status} {folder} in {time.time() - started:.0f} s", flush=True)


def last_line(log: Path) -> str:
    """A failed dept command ends its log with a one-line error: show it, not just the log's path."""
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else ""


def finished(folder: Path) -> bool:
    """A training run wrote its results."""
    return (folder / "results.json").is_file()


def searched(folder: Path) -> bool:
    """A search finished all its trials (best.json is rewritten after every trial, so it is no sign)."""
    trials = read(folder / "trials.json")
    return trials is not None and trials["finished"] >= ARGS.trials


def common(task: str, steps: int) -> list[str | Path]:
    return [
        "--task", task, "--model", ARGS.model, "--data-dir", ARGS.data_dir,
        "--max-steps", str(steps), "--batch-size", str(ARGS.batch_size),
        "--eval-every", str(max(1, steps // 4)), "--max-length", "256",
        "--split-seed", str(SPLIT_SEED),  # one split for every seed and method
    ]  # fmt: skip


def tuned_chain(task: str, method: str, steps: int, seeds: int, folder: Path, *, zero_shot=False, curve=False):
    """Tune the rates on validation, then one final run per seed at the best ones (and queue a learning curve)."""
    tune = folder / "tune"
    step(
        tune,
        searched,
        dept("tune", *common(task, steps), *METHODS[method], "--trials", str(ARGS.trials), "--seed", "0",
             "--output-dir", tune),
    )  # fmt: skip
    if not (tune / "best.json").is_file():
        return
    if curve:
        LATER.append(POOL.submit(curve_chain, method, tune / "best.json"))
    for seed in range(seeds):
        extra = ["--zero-shot"] if zero_shot and seed == 0 else []
        step(
            folder / f"seed-{seed}",
            finished,
            dept("train", "--resume", "--config", str(tune / "best.json"), "--seed", str(seed), "--eval-every",
                 str(max(1, steps // ARGS.curve_points)), "--output-dir", folder / f"seed-{seed}", *extra),
        )  # fmt: skip


def curve_chain(method: str, best: Path):
    """A longer run at the rates tuned for the suite's budget, validated often."""
    folder = ARGS.runs / "curves" / CURVE_TASK.replace("/", "-") / method
    steps = ARGS.steps * ARGS.curve_factor
    step(
        folder,
        finished,
        dept("train", "--resume", "--config", str(best), "--max-steps", str(steps), "--eval-every",
             str(steps // (ARGS.curve_points * ARGS.curve_factor // 2)), "--seed", "0", "--output-dir", folder),
    )  # fmt: skip


def chains() -> list:
    """Every chain of steps; the learning curves are queued once their rates are tuned."""
    runs = ARGS.runs
    todo = []
    for task in ARGS.tasks:
        for method in ARGS.methods:
            seeds = ARGS.seeds if method in ("pt", "dept") else 1
            folder = runs / "suite" / task.replace("/", "-") / method
            curve = task == CURVE_TASK and method != "lora"
            todo.append(
                lambda t=task, m=method, s=seeds, f=folder, c=curve: tuned_chain(
                    t, m, ARGS.steps, s, f, zero_shot=m == "pt", curve=c
                )
            )
    return todo


# ----- report ---------------------------------------------------------------------------------------------------


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def row(task: str, method: str, seed, r: dict, score: str = "test") -> dict:
    metric = r["main_metric"]
    return {
        "task": task, "method": method, "seed": seed, "split_seed": r.get("split_seed"),
        "lr_prompt": r.get("lr_prompt"), "lr_lowrank": r.get("lr_lowrank"), "lr": r.get("lr"),
        "steps": r["steps"], "metric": metric,
        "validation": r["validation"][metric] if score == "test" else r.get("zero_shot_validation", {}).get(metric),
        "test": r["test"][metric] if score == "test" else r.get("zero_shot_test", {}).get(metric),
        "train_seconds": r["train_seconds"] if score == "test" else 0.0,
        "peak_mb": r["peak_memory_mb"] if score == "test" else None,
        "trainable_parameters": r["trainable_parameters"] if score == "test" else 0,
        "precision": r.get("precision"), "commit": r.get("commit"),
    }  # fmt: skip


def collect() -> dict:
    rows, curves, tuning = [], {}, {}
    for task in ARGS.tasks:
        for method in ARGS.methods:
            folder = ARGS.runs / "suite" / task.replace("/", "-") / method
            trials = read(folder / "tune" / "trials.json")
            if trials:
                tuning[f"{task} {method}"] = {
                    "finished": trials["finished"], "pruned": trials["pruned"],
                    "best": trials["best"] and {"validation": trials["best"]["value"], **trials["best"]["params"]},
                }  # fmt: skip
            for seed_dir in sorted(folder.glob("seed-*")):
                r = read(seed_dir / "results.json")
                if r is None:
                    continue
                seed = int(seed_dir.name.split("-")[1])
                rows.append(row(task, method, seed, r))
                if method == "pt" and "zero_shot_test" in r:
                    rows.append(row(task, "zero-shot", None, r, score="zero-shot"))
    for method in ("pt", "dept"):
        log = ARGS.runs / "curves" / CURVE_TASK.replace("/", "-") / method / "metrics.jsonl"
        if log.is_file():
            points = [json.loads(line) for line in log.read_text().splitlines()]
            curves[method] = [
                {"examples": p["step"] * ARGS.batch_size, "validation": p["val_accuracy"]}
                for p in points
                if "val_accuracy" in p
            ]
    return {"rows": rows, "curves": curves, "tuning": tuning}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def cell(rows: list[dict], task: str, method: str, key: str) -> list[float]:
    return [r[key] for r in rows if r["task"] == task and r["method"] == method and r[key] is not None]


def markdown(data: dict, settings: dict) -> str:
    rows = data["rows"]
    methods = ["zero-shot", *ARGS.methods]
    lines = [
        "# Quality: zero-shot, PT, DePT and LoRA on SmolLM2-135M, each at its own tuned learning rates",
        "",
        f"Machine: {settings['machine']}; precision {settings['precision']} (`--precision auto`). Every method's rates were tuned on the "
        f"validation split with `dept tune` ({ARGS.trials} trials, TPE + median pruning, seed 0, {ARGS.steps} steps "
        f"x batch {ARGS.batch_size}); the final runs use the best rates with seeds 0-{ARGS.seeds - 1} (PT, DePT) or "
        "seed 0 (LoRA) and score the whole test split (`--split-rule paper`). Test score, mean ± std over seeds:",
        "",
        "| task (metric) | " + " | ".join(LABELS[m] for m in methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for task in ARGS.tasks:
        metric = next((f" ({r['metric']})" for r in rows if r["task"] == task), "")
        lines.append(f"| {task}{metric} | " + " | ".join(fmt(cell(rows, task, m, "test")) for m in methods) + " |")
    averages = {m: [statistics.fmean(cell(rows, t, m, "test")) for t in ARGS.tasks if cell(rows, t, m, "test")]
                for m in methods}  # fmt: skip
    lines.append(
        "| **average of the task means** | "
        + " | ".join(f"{statistics.fmean(v):.1f}" if len(v) == len(ARGS.tasks) else "-" for v in averages.values())
        + " |"
    )
    lines += ["", "Per seed, DePT minus PT on the average over tasks (seed k against seed k):", ""]
    seeds = sorted({r["seed"] for r in rows if r["method"] == "dept"})
    gaps = []
    for seed in seeds:
        per_task = [
            (d[0] - p[0])
            for t in ARGS.tasks
            for d, p in [
                (
                    [r["test"] for r in rows if (r["task"], r["method"], r["seed"]) == (t, "dept", seed)],
                    [r["test"] for r in rows if (r["task"], r["method"], r["seed"]) == (t, "pt", seed)],
                )
            ]
            if d and p
        ]
        if len(per_task) == len(ARGS.tasks):
            gaps.append(statistics.fmean(per_task))
    lines.append(f"DePT − PT = {fmt(gaps)} points over {len(gaps)} seeds." if gaps else "(not all seeds finished)")
    lines += [
        "",
        "Validation (the split the rates were chosen on), training time per run and peak GPU/CPU memory:",
        "",
        "| task | method | validation | train s/run | peak MB | trainable params | tuned rates |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for task in ARGS.tasks:
        for method in ARGS.methods:
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            if not sel:
                continue
            rates = ", ".join(f"{k}={sel[0][k]:.3g}" for k in ("lr_prompt", "lr_lowrank", "lr") if sel[0][k])
            lines.append(
                f"| {task} | {LABELS[method]} | {fmt([r['validation'] for r in sel])} | "
                f"{fmt([r['train_seconds'] for r in sel])} | {fmt([r['peak_mb'] for r in sel])} | "
                f"{sel[0]['trainable_parameters']:,} | {rates} |"
            )
    if data["tuning"]:
        lines += [
            "",
            f"The searches (`dept tune`, {ARGS.trials} trials wanted each; pruned and diverged trials count as finished):",
            "",
            "| search | finished | pruned or diverged | best validation | best rates |",
            "|---|---:|---:|---:|---|",
        ]
        for name, t in data["tuning"].items():
            best = t["best"] or {}
            rates = ", ".join(f"{k}={v:.3g}" for k, v in best.items() if k != "validation")
            value = f"{best['validation']:.1f}" if best else "none completed"
            lines.append(f"| {name} | {t['finished']} | {t['pruned']} | {value} | {rates} |")
    return "\n".join(lines) + "\n"


def plots(data: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, methods = data["rows"], ["zero-shot", *ARGS.methods]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        stats = [
            mean_std(cell(rows, t, method, "test")) if cell(rows, t, method, "test") else (0, 0) for t in ARGS.tasks
        ]
        ax.bar([t + i * width for t in range(len(ARGS.tasks))], [s[0] for s in stats], width,
               yerr=[s[1] for s in stats], capsize=3, label=LABELS[method])  # fmt: skip
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(ARGS.tasks))])
    ax.set_xticklabels(ARGS.tasks)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("test score (mean ± std over seeds)")
    ax.set_title("SmolLM2-135M, each method at its own tuned learning rates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "scores.png", dpi=120)
    plt.close(fig)
    if data["curves"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        for method, points in data["curves"].items():
            ax.plot(
                [p["examples"] for p in points], [p["validation"] for p in points], marker=".", label=LABELS[method]
            )
        ax.set_xlabel("training examples seen")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{CURVE_TASK}: PT and DePT at their tuned rates, trained longer")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "curves.png", dpi=120)
        plt.close(fig)


def machine() -> dict:
    import torch

    from dept.precision import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"machine": gpu or f"{cpu_name()}, {os.cpu_count()} cores", "torch": torch.__version__}


def precisions(rows: list[dict]) -> str:
    """What `--precision auto` chose in the runs themselves (bf16 stores the frozen backbone in bf16)."""
    return ", ".join(sorted({r["precision"] for r in rows if r.get("precision")})) or "-"


def report() -> None:
    data = collect()
    # --report-only re-renders runs measured elsewhere: keep the machine they were measured on.
    earlier = read(ARGS.out / "results.json") if ARGS.report_only else None
    settings = {
        **(machine() if earlier is None else {k: earlier["settings"][k] for k in ("machine", "torch")}),
        "precision": precisions(data["rows"]),
        **{k: v for k, v in vars(ARGS).items() if k not in ("data_dir", "runs", "out", "report_only", "jobs")},
    }
    ARGS.out.mkdir(parents=True, exist_ok=True)
    (ARGS.out / "results.json").write_text(json.dumps({"settings": settings, **data}, indent=2) + "\n")
    (ARGS.out / "results.md").write_text(markdown(data, settings))
    plots(data, ARGS.out)
    print(markdown(data, settings))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get("DEPT_DATA_DIR", REPO.parent / "shared" / "data"))
    parser.add_argument("--data-dir", type=Path, default=default_data)
    parser.add_argument("--out", type=Path, default=HERE, help="Where results.{json,md} and the plots go.")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quality", help="Run folders (not committed).")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--steps", type=int, default=400, help="Steps of every tuning trial and final run.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--trials", type=int, default=8, help="dept tune trials per task and method.")
    parser.add_argument("--seeds", type=int, default=3, help="Final runs per task for PT and DePT.")
    parser.add_argument("--curve-factor", type=int, default=4, help="The learning curves run this many x --steps.")
    parser.add_argument("--curve-points", type=int, default=8, help="Validations per run of --steps.")
    parser.add_argument("--jobs", type=int, default=1, help="Chains run at once (a GPU takes several).")
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args()


def main() -> None:
    global ARGS
    ARGS = parse()
    ARGS.runs = ARGS.runs.resolve()
    if not ARGS.report_only:
        if not ARGS.data_dir.is_dir():
            sys.exit(f"GLUE data not found at {ARGS.data_dir}; pass --data-dir or set DEPT_DATA_DIR.")
        if ARGS.jobs > 1:  # N processes share the machine's cores
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ARGS.jobs)))
        global POOL
        with ThreadPoolExecutor(ARGS.jobs) as POOL:
            LATER.extend(POOL.submit(chain) for chain in chains())
            while LATER:
                LATER.pop(0).result()
    report()


if __name__ == "__main__":
    main()
