"""benchmarks/quality/defaults_check.py rehearsed on a tiny model: its arms decide the default rates,
so each must train at the rates its name says, and a rerun must train nothing."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "quality"))

import defaults_check  # noqa: E402

from tiny import make_tiny_llama, make_tiny_tokenizer  # noqa: E402


def test_each_arm_trains_at_its_rates_and_a_rerun_trains_nothing(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "model")
    make_tiny_llama(tmp_path / "model", tokenizer=tok, max_position_embeddings=512)
    rows = ["text,label"] + [f"it was {'good' if i % 2 else 'bad'} {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    argv = ["--model", str(tmp_path / "model"), "--task", f"csv:{tmp_path / 'task.csv'}", "--data-dir", str(tmp_path),
            "--steps", "2", "--batch-size", "4", "--eval-samples", "4", "--seeds", "1", "--out", str(tmp_path / "out"),
            "--runs", str(tmp_path / "runs"), "--arms", "dept-default", "pt60-default", "dept-lowrank-x10", "dept-rule",
            "pt-prompt-x0.25", "--rule-reference", "4"]  # fmt: skip
    defaults_check.main(argv)
    (report,) = (tmp_path / "out").glob("defaults_*.json")
    by_arm = {r["method"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(by_arm) == {"dept-default", "pt60-default", "dept-lowrank-x10", "dept-rule", "pt-prompt-x0.25"}
    default = by_arm["dept-default"]
    assert by_arm["dept-lowrank-x10"]["lr_lowrank"] == pytest.approx(default["lr_lowrank"] * 10)
    assert by_arm["dept-lowrank-x10"]["lr_prompt"] == default["lr_prompt"]
    assert by_arm["dept-rule"]["lr_prompt"] == pytest.approx(default["lr_prompt"] * 2)  # reference 4 / 2 steps
    assert by_arm["pt60-default"]["lr_lowrank"] is None and by_arm["pt60-default"]["lr_prompt"] == default["lr_prompt"]
    assert by_arm["pt-prompt-x0.25"]["lr_prompt"] == pytest.approx(default["lr_prompt"] / 4)
    text = report.with_suffix(".md").read_text()
    assert "10x the low-rank rate minus DePT m=60, default rates" in text and report.with_suffix(".png").is_file()
    results = sorted((tmp_path / "runs").rglob("results.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    defaults_check.main(argv)  # a rerun trains nothing
    assert [p.stat().st_mtime_ns for p in results] == stamps
