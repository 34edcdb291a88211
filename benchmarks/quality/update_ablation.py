"""Does the finished model use its update? Each run's adapter is scored twice on the same validation
examples: as trained, and with its update removed (DePT's B, ADePT's B and b set to zero, so the offset
is zero and the prompt is all that is left).

The suite's PT l=60 arm asks whether training with the update helps; this asks whether the trained
prompt still needs it. A score that does not move when the update goes means the prompt did the work.

    .venv/bin/python benchmarks/quality/update_ablation.py RUN [RUN ...] --out FILE.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from offset_size import adapter_folder, with_earlier_rows, write_table
from run import dept

UPDATE_OUTPUTS = ("lora_embedding_B", "lora_embedding_b")  # zero these and every offset is zero


def check(run: Path) -> None:
    """Every path checked before the first (slow) evaluation."""
    from safetensors import safe_open

    if not all((run / name).is_file() for name in ("run.json", "results.json")):
        raise SystemExit(f"error: {run} is not a finished run (no run.json or results.json).")
    with safe_open(adapter_folder(run) / "adapter_model.safetensors", "pt") as f:
        if not set(UPDATE_OUTPUTS) & set(f.keys()):
            raise SystemExit(f"error: {run} has no update to remove (prompt tuning?).")


def without_update(run: Path, into: Path) -> Path:
    """A copy of the run (run.json + best/) whose adapter adds no offset."""
    from safetensors.torch import load_file, save_file

    adapter = adapter_folder(run)
    best = into / "best"
    best.mkdir(parents=True)
    shutil.copy(run / "run.json", into / "run.json")
    shutil.copy(adapter / "adapter_config.json", best / "adapter_config.json")
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file(
        {k: v.zero_() if k in UPDATE_OUTPUTS else v for k, v in tensors.items()}, best / "adapter_model.safetensors"
    )
    return into


def score(run: Path, task: str, samples: int, data_dir: str | None) -> dict:
    command = dept("eval", "--adapter", run, "--task", task, "--split", "validation", "--samples", str(samples),
                   *(["--data-dir", data_dir] if data_dir else []))  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: dept eval on {run} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="Run folders (with run.json and best/).")
    parser.add_argument("--samples", type=int, default=500, help="First N validation examples (the suite's cap).")
    parser.add_argument("--data-dir", default=None, help="Default: each run's.")
    parser.add_argument("--out", type=Path, default=None, help="Table (Markdown), .json beside; keeps its rows.")
    args = parser.parse_args(argv)
    for run in args.runs:
        check(run)
    rows = []
    for run in args.runs:
        settings = json.loads((run / "run.json").read_text())
        task, metric = settings["task"], json.loads((run / "results.json").read_text())["main_metric"]
        with tempfile.TemporaryDirectory() as tmp:
            trained = score(run, task, args.samples, args.data_dir)
            removed = score(without_update(run, Path(tmp) / "run"), task, args.samples, args.data_dir)
        rows.append({"run": str(run), "method": settings["method"]["method"], "task": task, "metric": metric,
                     "examples": trained["examples"], "trained": trained[metric], "update_removed": removed[metric]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    rows = with_earlier_rows(rows, args.out, key="run")
    lines = [
        f"Validation, first {args.samples} examples; the update removed = its output weights set to zero.",
        "",
        "| run | metric | as trained | update removed | change |",
        "|---|---|---:|---:|---:|",
        *(f"| {r['run']} | {r['metric']} | {r['trained']:.1f} | {r['update_removed']:.1f} | "
          f"{r['update_removed'] - r['trained']:+.1f} |" for r in rows),
    ]  # fmt: skip
    write_table("\n".join(lines) + "\n", rows, args.out)


if __name__ == "__main__":
    main()
