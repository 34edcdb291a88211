"""How hard does the gradient clip hold back each method's prompt? The first steps of the suite's runs
(same task, seed, split, rates and schedule), with every step's gradient norm split by parameter group.

`dept train` clips the norm of all trainable gradients together (at 1.0, as transformers.Trainer and
the official code do). In DePT that norm includes the gradient of B, so when B's gradient is large the
clip also shrinks the prompt's; PT l=60 has the same prompt and no B. A prompt clipped more often gets
smaller Adam steps while it happens: a difference between the arms other than what A·B adds to the input.

    .venv/bin/python benchmarks/quality/grad_norms.py --data-dir ../shared/data --out benchmarks/quality/cpu/clip_off/grad_norms.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from offset_size import write_table

ARMS = {  # the suite's arms (suite.py), as MethodOptions fields
    "pt60": ("PT l=60", {"method": "pt", "budget": 60}),
    "dept": ("DePT m=60", {"method": "dept", "budget": 100, "prompt_length": 60}),
    "adept": ("ADePT m=60", {"method": "adept", "budget": 100, "prompt_length": 60}),
}
WINDOWS = ((1, 10), (11, 30), (31, 60), (61, 100))


class Enough(Exception):
    """Raised from the optimizer once the steps asked for are recorded."""


def first_steps(arm: str, args: argparse.Namespace) -> list[dict]:
    """Per step: each group's gradient norm after the clip (read where AdamW steps) and the logged
    norm before it; the run is the suite's (its schedule too), stopped after --steps."""
    from dept.options import MethodOptions
    from dept.runs.train import Run, TrainOptions

    after_clip: list[dict[str, float]] = []
    adam_step = torch.optim.AdamW.step

    def recording_step(self, *a, **kw):
        if len(after_clip) == args.steps:
            raise Enough
        grads = {
            g["name"]: [p.grad.float().norm() for p in g["params"] if p.grad is not None] for g in self.param_groups
        }
        after_clip.append({name: torch.stack(norms).norm().item() for name, norms in grads.items() if norms})
        return adam_step(self, *a, **kw)

    method = MethodOptions(**ARMS[arm][1], max_length=256)
    with tempfile.TemporaryDirectory() as out:
        opts = TrainOptions(task=args.task, model=args.model, data_dir=args.data_dir, output_dir=out,
                            max_steps=args.suite_steps, eval_every=args.suite_steps, batch_size=8, split_seed=42, seed=args.seed,
                            log_every=1, method=method)  # fmt: skip
        torch.optim.AdamW.step = recording_step
        try:
            Run(opts).fit()
        except Enough:
            pass
        finally:
            torch.optim.AdamW.step = adam_step
        logged = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "grad_norm" in r]
    rows = []
    for r, groups in zip(logged, after_clip):
        clip = min(1.0, opts.max_grad_norm / (r["grad_norm"] + 1e-6))  # as torch's clip_grad_norm_ scales
        rows.append({"arm": arm, "step": r["step"], "loss": r["loss"], "grad_norm": r["grad_norm"], "clip": clip,
                     **{f"{name}_norm": norm / clip for name, norm in groups.items()}})  # fmt: skip
    return rows


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"# Gradient norms before the clip, {args.task}, seed {args.seed}, the first {args.steps} steps of "
        f"the suite's {args.suite_steps}-step runs",
        "",
        "Medians over each window of steps. clip: the factor the clip (max norm 1.0) multiplied every "
        "gradient by (1 = not clipped); prompt, update: each group's share of the norm before the clip.",
        "",
        "| arm | steps | total norm | prompt | update | steps clipped | mean clip factor | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, (label, _) in ARMS.items():
        for lo, hi in WINDOWS:
            w = [r for r in rows if r["arm"] == arm and lo <= r["step"] <= hi]
            if not w:
                continue
            update = f"{median(w, 'lowrank_norm'):.3f}" if "lowrank_norm" in w[0] else "-"
            lines.append(
                f"| {label} | {lo}-{w[-1]['step']} | {median(w, 'grad_norm'):.3f} | {median(w, 'prompt_norm'):.3f} | "
                f"{update} | {sum(r['clip'] < 1 for r in w)}/{len(w)} | "
                f"{statistics.mean(r['clip'] for r in w):.2f} | {median(w, 'loss'):.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="glue/stsb")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60, help="Steps recorded per arm.")
    parser.add_argument("--suite-steps", type=int, default=300, help="The run's planned length (its schedule).")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--out", type=Path, default=None, help="Table (Markdown), per-step rows as .json beside.")
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= args.suite_steps:
        raise SystemExit(f"error: --steps must be between 1 and --suite-steps ({args.suite_steps}); got {args.steps}.")
    try:
        rows = [row for arm in args.arms for row in first_steps(arm, args)]
    except (ValueError, OSError) as err:  # dept's own one-line messages: a typo'd task, a missing data folder
        from dept.cli import _one_line  # the message as `dept` prints it: one line

        raise SystemExit(f"error: {_one_line(err)}") from None
    write_table(markdown(rows, args), rows, args.out)


if __name__ == "__main__":
    main()
