"""bf16 runs keep the frozen backbone in bf16 (dept.methods.PromptMethod.backbone_dtype); before, they kept it in
fp32 and let autocast cast its weights for every matmul. This compares the two on one task, same
options and seeds, runs alternating in one process: step time, peak memory, and accuracy.

    .venv/bin/python benchmarks/quality/bf16_storage.py --data-dir ../shared/data   # on a bf16 machine
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
from pathlib import Path

import torch

import dept.runs.train
from dept.methods import PromptMethod
from dept.options import MethodOptions, TrainOptions
from dept.precision import resolve_precision

HERE = Path(__file__).parent
STORAGE = {"fp32 weights + autocast": lambda self, precision: torch.float32, "bf16 weights": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs/bf16-storage"))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--task", default="glue/sst2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if resolve_precision("auto") != "bf16":
        raise SystemExit("This machine has no native bf16 (--precision auto is fp32 here); run it on one that has.")
    keep = PromptMethod.backbone_dtype
    STORAGE["bf16 weights"] = keep
    rows = []
    for seed in range(args.seeds):
        for name, dtype_rule in STORAGE.items():
            PromptMethod.backbone_dtype = dtype_rule
            opts = TrainOptions(
                task=args.task, data_dir=str(args.data_dir), max_steps=args.steps, batch_size=8,
                eval_every=args.steps // 3, precision="bf16", seed=seed, overwrite=True,
                output_dir=str(args.runs / f"{name.split()[0]}-seed{seed}"), method=MethodOptions(method="dept"),
            )  # fmt: skip
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            r = dept.runs.train.train(opts)
            metric = r["main_metric"]
            rows.append({"storage": name, "seed": seed, "validation": r["validation"][metric],
                         "test": r["test"][metric], "seconds_per_step": r["train_seconds"] / r["steps"],
                         "peak_mb": r["peak_memory_mb"]})  # fmt: skip
            print(rows[-1], flush=True)
    PromptMethod.backbone_dtype = keep
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    lines = [
        f"# bf16 backbone storage against fp32 weights + autocast ({args.task}, DePT defaults, {args.steps} steps x "
        f"batch 8, {device}, seeds 0-{args.seeds - 1}, runs alternating in one process)",
        "",
        "| backbone weights | test | validation | s/step | peak MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in STORAGE:
        sel = [r for r in rows if r["storage"] == name]
        cells = []
        for key, digits in (("test", 1), ("validation", 1), ("seconds_per_step", 4), ("peak_mb", 0)):
            values = [r[key] for r in sel]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (args.out / "bf16_storage.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    (args.out / "bf16_storage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
