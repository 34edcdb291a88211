"""The quality suite's script, rehearsed end to end on a tiny model and a local task: the one command
that will run on a lent GPU (`--profile gpu`) or for hours on the CPU must not fail on a typo."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "quality"))

import suite  # noqa: E402

from tiny import make_tiny_llama, make_tiny_tokenizer  # noqa: E402


def test_suite_runs_every_cell_reports_pairs_and_skips_finished_cells(tmp_path, capsys):
    tok = make_tiny_tokenizer(tmp_path / "model")
    make_tiny_llama(tmp_path / "model", tokenizer=tok, max_position_embeddings=512)  # PT l=100 + 256
    rows = ["text,label"] + [
        f"the movie was {'great' if i % 2 else 'bad'} {i},{'pos' if i % 2 else 'neg'}" for i in range(40)
    ]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    argv = ["--model", str(tmp_path / "model"), "--tasks", f"csv:{tmp_path / 'task.csv'}", "--steps", "2",
            "--batch-size", "4", "--eval-samples", "4", "--seeds", "2", "--out", str(tmp_path / "out"),
            "--profile", "gpu", "--jobs", "2"]  # fmt: skip
    suite.main(argv)
    report = json.loads((tmp_path / "out" / "suite.json").read_text())
    cells = sorted((r["method"], r["seed"]) for r in report["rows"])
    assert cells == [("adept", 0), ("adept", 1), ("dept", 0), ("dept", 1), ("lora", 0), ("pt", 0), ("pt", 1),
                     ("zero-shot", None)]  # fmt: skip
    for r in report["rows"]:
        assert r["split_seed"] == 42 and r["steps"] == (2 if r["method"] != "zero-shot" else r["steps"])
        assert r["commit"] and {
            "validation",
            "test",
            "train_seconds",
            "peak_mb",
            "lr_prompt",
            "lr_lowrank",
            "lr",
        } <= set(r)
    adept = next(r for r in report["rows"] if r["method"] == "adept")
    assert adept["lr_prompt"] > 0 and adept["lr_lowrank"] > 0  # the defaults, recorded
    text = (tmp_path / "out" / "suite.md").read_text()
    assert "ADePT m=60 − DePT m=60" in text and "mean over tasks" in text and (tmp_path / "out" / "suite.png").is_file()
    stamp = (tmp_path / "out" / "cells").stat().st_mtime_ns
    logs = sorted((tmp_path / "out" / "cells").rglob("log.txt"))
    sizes = [p.stat().st_size for p in logs]
    suite.main(argv)  # a rerun trains nothing
    assert [p.stat().st_size for p in logs] == sizes and (tmp_path / "out" / "cells").stat().st_mtime_ns == stamp
    for run in (tmp_path / "out" / "cells").rglob("run.json"):  # committed: paths relative, none of this machine's
        assert not Path(json.loads(run.read_text())["output_dir"]).is_absolute()


def test_pairs_over_tasks_use_only_the_tasks_both_methods_ran_and_targets_say_met_or_missed():
    rows = [
        {"task": t, "method": m, "seed": k, "test": score + k, "step_seconds": 2.0 if m == "pt" else 1.5}
        for t, bonus in (("a", 0.0), ("b", 10.0), ("c", 20.0))
        for m, score in (("pt", 50.0 + bonus), ("dept", 52.0 + bonus), ("adept", 51.0 + bonus))
        for k in (0, 1, 2)
    ] + [{"task": t, "method": "pt60", "seed": k, "test": 40.0 + k} for t in ("a", "b") for k in (0, 1, 2)]
    assert suite.paired(rows, None, "dept", "pt") == [2.0, 2.0, 2.0]
    assert suite.paired(rows, None, "dept", "pt60") == [17.0] * 3  # over a and b only: (12 + 22) / 2
    lines = "\n".join(suite.targets(rows, {"tasks": ["a", "b", "c"], "seeds": 3}))
    assert "provisional" not in lines and "DePT's mean over tasks ≥ PT's: met" in lines
    assert "ADePT's ≥ DePT's: missed by 1.0 points" in lines and "DePT/PT 0.750" in lines
    assert "provisional" in "\n".join(suite.targets(rows, {"tasks": ["a", "b", "c"], "seeds": 4}))


def test_the_gpu_script_runs_every_stage_and_packs_the_cells(tmp_path):
    """benchmarks/quality/gpu.sh as the GPU call runs it, small: probe, the 300-step suite, the budget
    sweep and the long suite, each cut at the deadline, then the packed results for $OUT."""
    import os
    import subprocess
    import tarfile

    tok = make_tiny_tokenizer(tmp_path / "model")
    make_tiny_llama(tmp_path / "model", tokenizer=tok, max_position_embeddings=512)
    rows = ["text,label"] + [f"it was {'good' if i % 2 else 'bad'} {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    task = f"csv:{tmp_path / 'task.csv'}"
    env = {**os.environ, "PY": sys.executable, "MODEL": str(tmp_path / "model"), "DATA": str(tmp_path),
           "TASKS": task, "SWEEP_TASKS": task, "STEPS": "2", "SWEEP": "2 3", "LONG": "3", "SEEDS": "1", "JOBS": "2",
           "BUDGET": "240", "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"), "STASH": str(tmp_path)}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "quality" / "gpu.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    assert json.loads((out / "throughput.json").read_text())["steps"] == 30
    summary = (out / "summary.md").read_text()
    for stage in ("main-2", "sweep-2", "sweep-3", "long-3"):
        assert f"## {stage}" in summary, summary[:2000]
    with tarfile.open(out / "cells.tgz") as packed:
        names = packed.getnames()
    assert sum(n.endswith("results.json") for n in names) == 1 + 4 + 3 + 3 + 4  # probe, main, 2 sweeps, long
    assert not [n for n in names if n.endswith(".safetensors")]
