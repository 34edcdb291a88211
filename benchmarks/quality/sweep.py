"""Learning-rate sweep behind the quality table: PT and DePT on one task, same step budget and
settings as run.py, each grid point a separate run. Choose on validation; test is reported only
so the table can be read against results.md.

    .venv/bin/python benchmarks/quality/sweep.py --data-dir ../shared/data --tasks glue/sst2
"""

from __future__ import annotations

import copy
import itertools
import json

from run import REPO, parser, run_one

PT_PROMPT_LRS = [3e-2, 1e-1, 3e-1]
SETTINGS = ("model", "steps", "batch_size", "eval_samples", "test_samples", "lr_prompt", "lr_lowrank")
DEPT_GRID = list(itertools.product([3e-2, 1e-1, 3e-1], [1e-3, 1e-2]))  # (lr_prompt, lr_lowrank)


def main() -> None:
    cli = parser(__doc__.split("\n\n")[0])
    cli.set_defaults(runs=REPO / "runs" / "quality-sweep", tasks=["glue/sst2"])
    args = cli.parse_args()
    suite = parser("").parse_args([])  # run.py's defaults: a point equal to them reuses the suite's run
    points = [("pt", lr, None) for lr in PT_PROMPT_LRS] + [("dept", lp, ll) for lp, ll in DEPT_GRID]
    points = [p for p in points if p[0] in args.methods]
    rows = []
    for task in args.tasks:
        for method, lr_prompt, lr_lowrank in points:
            point = copy.copy(args)
            point.lr_prompt = lr_prompt
            point.lr_lowrank = lr_lowrank if lr_lowrank is not None else args.lr_lowrank
            same_as_suite = all(getattr(point, k) == getattr(suite, k) for k in SETTINGS)
            point.runs = suite.runs if same_as_suite else args.runs / f"lrp{lr_prompt:g}-lrl{point.lr_lowrank:g}"
            result = run_one(task, method, point)
            metric = result["main_metric"]
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "lr_prompt": lr_prompt,
                    "lr_lowrank": lr_lowrank,
                    "validation": result["best_validation"],
                    "test": result["test"][metric],
                    "metric": metric,
                    "best_step": result["best_step"],
                }
            )
            (args.out / "sweep.json").write_text(
                json.dumps({"steps": args.steps, "batch_size": args.batch_size, "rows": rows}, indent=2)
            )
    lines = ["| task | method | lr_prompt | lr_lowrank | validation | test |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        best = max(x["validation"] for x in rows if x["task"] == r["task"] and x["method"] == r["method"])
        mark = " **(best val)**" if r["validation"] == best else ""
        lines.append(
            f"| {r['task']} ({r['metric']}) | {r['method']}{mark} | {r['lr_prompt']:g} | "
            f"{'-' if r['lr_lowrank'] is None else format(r['lr_lowrank'], 'g')} | {r['validation']:.1f} | {r['test']:.1f} |"
        )
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
