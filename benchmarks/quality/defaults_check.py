"""Do the default learning rates work? DePT with no rate flags, side by side with DePT at searched
rates and with prompt tuning at its own defaults, on one task at a short budget, over seeds.

The arms, each trained once per seed in this one run on this one machine (the first four by default):
- `dept-default`: DePT m=60 (budget-matched rank), no learning-rate flags (dept.core.rates);
- `dept-tuned`:   the same at the rates a `dept tune` search chose on validation (`--tuned`);
- `pt-default`:   prompt tuning l=100 (DePT's parameter count), no rate flags;
- `pt60-default`: prompt tuning l=60: DePT's prompt without the low-rank pair, which shows what
                  the pair adds at the default rates;
- `dept-rule`:    DePT at the default rates times `--rule-reference / --steps`, the budget rule under
                  test: Adam moves a parameter about `lr` per step, so `lr x steps` sets how far the
                  prompt and the offsets travel; the rule keeps the distance the defaults travel in
                  `--rule-reference` steps;
- `dept-lowrank-x10`, `dept-lowrank-x100`: DePT at the default prompt rate and 10x / 100x the default
                  low-rank rate: whether `A·B` contributes once it can move (at the default it barely does);
- `pt-prompt-x0.25`: prompt tuning l=100 at 1/4 of the default prompt rate: whether the shared default,
                  searched on DePT, holds PT back.

The tuned rates come from `--tuned BEST_JSON` (a `dept tune` best.json, or any JSON object with
`lr_prompt` and `lr_lowrank`); without it the script runs that search itself first (8 trials, seed 0,
validation only). Every run is a `dept train` process in RUNS/<arm>/seed-<k> (RUNS defaults to
runs/defaults/<task>_<steps>-steps); finished runs
are skipped and a killed one resumes, so rerunning the command continues the check. `--arms
dept-default pt-default` compares the defaults alone on another task, with no search.

    .venv/bin/python benchmarks/quality/defaults_check.py --data-dir ../shared/data --out benchmarks/quality/cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from run import METHODS, SPLIT_SEED, dept, finished, fmt, machine, mean_std, precisions, read, row, step

REPO = Path(__file__).resolve().parents[2]
DEPT = METHODS["dept"]
ARMS = {
    "dept-default": ("DePT m=60, default rates", DEPT),
    "dept-tuned": ("DePT m=60, searched rates (--tuned)", DEPT),
    "pt-default": ("PT l=100, default rate", METHODS["pt"]),
    "pt60-default": ("PT l=60 (DePT without A·B), default rate", ["--method", "pt", "--budget", "60"]),
    "dept-rule": ("DePT m=60, default rates x reference/steps (budget rule)", DEPT),
    "adept-default": ("ADePT m=60, default rates", METHODS["adept"]),
    "dept-lowrank-x10": ("DePT m=60, default prompt rate, 10x the low-rank rate", DEPT),
    "dept-lowrank-x100": ("DePT m=60, default prompt rate, 100x the low-rank rate", DEPT),
    "pt-prompt-x0.25": ("PT l=100, 1/4 of the default prompt rate", METHODS["pt"]),
}


def common(args: argparse.Namespace, eval_every: int) -> list[str | Path]:
    return [
        "--task", args.task, "--model", args.model, "--data-dir", args.data_dir,
        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--eval-every", str(eval_every),
        "--eval-samples", str(args.eval_samples), "--max-length", "256",
        "--split-seed", str(SPLIT_SEED),  # one split for every seed and method
    ]  # fmt: skip


def tuned_rates(args: argparse.Namespace) -> list[str]:
    """`--lr-prompt X --lr-lowrank Y` from --tuned, or from a search run here on validation."""
    best = args.tuned
    if best is None:
        tune = args.runs / "tune"
        # Four validations per trial, so the median pruner has something to compare.
        step(tune, lambda folder: (read(folder / "trials.json") or {}).get("finished", 0) >= args.trials,
             dept("tune", *common(args, max(1, args.steps // 4)), *DEPT, "--trials", str(args.trials), "--seed", "0",
                  "--output-dir", tune))  # fmt: skip
        best = tune / "best.json"
    if not best.is_file():
        sys.exit(f"{best}: no such file; pass a dept tune best.json to --tuned, or leave it out to search here.")
    try:
        rates = read(best)
    except json.JSONDecodeError as err:
        sys.exit(f"{best}: not valid JSON ({err.msg} at line {err.lineno}).")
    if not isinstance(rates, dict) or not {"lr_prompt", "lr_lowrank"} <= rates.keys():
        sys.exit(f"{best}: expected a JSON object with lr_prompt and lr_lowrank (a dept tune best.json).")
    return ["--lr-prompt", repr(rates["lr_prompt"]), "--lr-lowrank", repr(rates["lr_lowrank"])]


def scaled_rates(args: argparse.Namespace, prompt_factor: float, lowrank_factor: float) -> list[str]:
    """The default rates of `dept train` on this backbone (the same computation, the same dtype), each
    times its factor."""
    from dept.backbones import load_backbone
    from dept.core.rates import with_default_rates
    from dept.methods import METHODS
    from dept.options import MethodOptions
    from dept.precision import resolve_precision

    backbone, _ = load_backbone(args.model, dtype=METHODS["dept"].backbone_dtype(resolve_precision("auto")))
    defaults = with_default_rates(MethodOptions(), backbone)
    return [
        "--lr-prompt", repr(defaults.lr_prompt * prompt_factor), "--lr-lowrank", repr(defaults.lr_lowrank * lowrank_factor)
    ]  # fmt: skip


def run_all(args: argparse.Namespace) -> None:
    """Seed by seed, every arm: a cut-off check still compares the arms on the seeds it finished."""
    rule = args.rule_reference / args.steps
    factors = {
        "dept-rule": (rule, rule), "dept-lowrank-x10": (1, 10), "dept-lowrank-x100": (1, 100), "pt-prompt-x0.25": (0.25, 1)
    }  # fmt: skip
    extras = {arm: scaled_rates(args, *factors[arm]) for arm in args.arms if arm in factors}
    extras["dept-tuned"] = tuned_rates(args) if "dept-tuned" in args.arms else []
    for seed in range(args.seeds):
        for arm in args.arms:
            flags = ARMS[arm][1]
            folder = args.runs / arm / f"seed-{seed}"
            extra = extras.get(arm, [])
            step(folder, finished,
                 dept("train", "--resume", *common(args, args.steps), *flags, *extra, "--seed", str(seed),
                      "--output-dir", folder))  # fmt: skip


def collect(args: argparse.Namespace) -> list[dict]:
    rows = []
    for arm in ARMS:
        for seed_dir in sorted((args.runs / arm).glob("seed-*")):
            r = read(seed_dir / "results.json")
            if r is not None:
                rows.append(row(args.task, arm, int(seed_dir.name.split("-")[1]), r))
    return rows


def markdown(rows: list[dict], settings: dict) -> str:
    a = settings
    searched = ""
    if any(r["method"] == "dept-tuned" for r in rows):
        searched = f"Searched rates: {a['tuned'] or 'the search of this check'}. "
    lines = [
        f"# Default learning rates against searched ones, {a['task']} ({a['model']})",
        "",
        f"Machine: {a['machine']}, torch {a['torch']}; precision chosen by `--precision auto` ({a['precision']}). "
        f"Every run: {a['steps']} steps x batch {a['batch_size']}, one validation at the end on the first "
        f"{a['eval_samples']} validation examples, then the whole test split (`--split-rule paper`). "
        f"{searched}Mean ± std over seeds:",
        "",
        "| arm | seeds | test | validation | lr_prompt | lr_lowrank | trainable params | train s/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, (label, _) in ARMS.items():
        sel = [r for r in rows if r["method"] == arm]
        if sel:
            lines.append(
                f"| {label} | {len(sel)} | {fmt([r['test'] for r in sel])} | {fmt([r['validation'] for r in sel])} | "
                f"{sel[0]['lr_prompt']:.3g} | {rate(sel[0]['lr_lowrank'])} | {sel[0]['trainable_parameters']:,} | "
                f"{fmt([r['train_seconds'] for r in sel])} |"
            )
    lines += ["", "Paired by seed (seed k against seed k):", ""]
    for arm, other in (
        ("dept-default", "dept-tuned"),
        ("dept-default", "pt-default"),
        ("dept-default", "pt60-default"),
        ("dept-rule", "dept-default"),
        ("dept-lowrank-x10", "dept-default"),
        ("dept-lowrank-x100", "dept-default"),
        ("pt-prompt-x0.25", "pt-default"),
    ):
        test, validation = paired(rows, arm, other, "test"), paired(rows, arm, other, "validation")
        if test:
            lines.append(
                f"- {ARMS[arm][0]} minus {ARMS[other][0]}: test {fmt(test)}, validation {fmt(validation)} "
                f"points over {len(test)} seeds (test per seed: {', '.join(f'{g:+.1f}' for g in test)})"
            )
    return "\n".join(lines) + "\n"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def paired(rows: list[dict], arm: str, other: str, split: str) -> list[float]:
    score = {(r["method"], r["seed"]): r[split] for r in rows}
    return [score[arm, s] - score[other, s] for m, s in sorted(score) if m == arm and (other, s) in score]


def plot(rows: list[dict], settings: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [arm for arm in ARMS if any(r["method"] == arm for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, arm in enumerate(arms):
        tests = [r["test"] for r in rows if r["method"] == arm]
        mean, std = mean_std(tests)
        ax.bar(i, mean, 0.6, yerr=std, capsize=4, color="#8fb3d9")
        ax.scatter([i] * len(tests), tests, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([ARMS[a][0].replace(", ", ",\n") for a in arms], fontsize=8)
    ax.set_ylim(min(50, *[r["test"] for r in rows]) - 2, 100)
    ax.set_ylabel("test score (bars: mean ± std; dots: seeds)")
    ax.set_title(f"{settings['task']}, {settings['steps']} steps x batch {settings['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_name(args: argparse.Namespace) -> str:
    """<task>_<steps>-steps: one check per task and budget, for its run folders and its report."""
    return f"{args.task.replace('/', '-')}_{args.steps}-steps"


def report(args: argparse.Namespace) -> None:
    rows = collect(args)
    if not rows:
        sys.exit(
            f"No finished runs under {args.runs}; a run that failed says why above; with --report-only, run without it first."
        )
    settings = {
        **machine(),
        "precision": precisions(rows),
        **{
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("data_dir", "runs", "out", "report_only", "arms", "seeds")  # the rows say which ran
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"defaults_{check_name(args)}"
    stem.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(rows, settings))
    plot(rows, settings, stem.with_suffix(".png"))
    print(markdown(rows, settings))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DEPT_DATA_DIR", REPO.parent / "shared" / "data"))
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="Folder for defaults_<task>_<steps>-steps.{json,md,png}."
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="Run folders (default runs/defaults/<task>_<steps>-steps; not committed).",
    )
    parser.add_argument("--task", default="glue/sst2")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=500, help="Validation examples (the test split is whole).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--tuned", type=Path, default=None, help="JSON with lr_prompt and lr_lowrank; default: search here."
    )
    parser.add_argument("--trials", type=int, default=8, help="Trials of the search when --tuned is not given.")
    parser.add_argument(
        "--rule-reference", type=int, default=300, help="dept-rule: the budget at which the rule gives the defaults."
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=list(ARMS)[:4],
        help="Which arms to train (default: the first four).",
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.runs = (args.runs or REPO / "runs" / "defaults" / check_name(args)).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.report_only:
        if not args.data_dir.is_dir():
            sys.exit(f"GLUE data not found at {args.data_dir}; pass --data-dir or set DEPT_DATA_DIR.")
        run_all(args)
    report(args)


if __name__ == "__main__":
    main()
