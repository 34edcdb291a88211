"""benchmarks/quality/grad_norms.py on a tiny model: the README's account of the clip in DePT rests on it."""

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "quality"))

import grad_norms  # noqa: E402

from tiny import make_tiny_llama, make_tiny_tokenizer  # noqa: E402


def test_the_group_norms_before_the_clip_add_up_to_the_logged_norm(tmp_path):
    make_tiny_llama(tmp_path / "model", tokenizer=make_tiny_tokenizer(tmp_path / "model"), max_position_embeddings=512)
    rows = ["text,label"] + [f"it was {'good' if i % 2 else 'bad'} {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "norms.md"
    grad_norms.main(["--task", f"csv:{tmp_path / 'task.csv'}", "--model", str(tmp_path / "model"), "--steps", "3",
                     "--suite-steps", "6", "--arms", "pt60", "dept", "--out", str(out)])  # fmt: skip
    steps = json.loads(out.with_suffix(".json").read_text())
    assert [(r["arm"], r["step"]) for r in steps] == [("pt60", s) for s in (1, 2, 3)] + [("dept", s) for s in (1, 2, 3)]
    for r in steps:
        parts = r["prompt_norm"] ** 2 + r.get("lowrank_norm", 0.0) ** 2
        assert math.sqrt(parts) == pytest.approx(r["grad_norm"], rel=1e-3)
        assert 0 < r["clip"] <= 1
    assert all("lowrank_norm" in r for r in steps if r["arm"] == "dept")
    assert not any("lowrank_norm" in r for r in steps if r["arm"] == "pt60")
    assert "| DePT m=60 | 1-3 |" in out.read_text()


def test_more_steps_than_the_run_plans_is_refused():
    with pytest.raises(SystemExit, match="--steps must be between 1 and --suite-steps"):
        grad_norms.main(["--steps", "400"])
