"""benchmarks/quality/offset_size.py and update_ablation.py on tiny trained runs: the README's account of
what DePT's and ADePT's updates do rests on them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "quality"))

import offset_size  # noqa: E402
import update_ablation  # noqa: E402

from tiny import make_tiny_llama, make_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step DePT run and a 2-step ADePT run on a tiny model and a local task."""
    tmp = tmp_path_factory.mktemp("probes")
    make_tiny_llama(tmp / "model", tokenizer=make_tiny_tokenizer(tmp / "model"), max_position_embeddings=512)
    rows = ["text,label"] + [f"it was {'good' if i % 2 else 'bad'} {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp / "task.csv").write_text("\n".join(rows) + "\n")
    out = {}
    for method in ("dept", "adept"):
        out[method] = tmp / method
        train = [sys.executable, "-m", "dept.cli", "train", "--task", f"csv:{tmp / 'task.csv'}", "--method", method,
                 "--model", str(tmp / "model"), "--output-dir", str(out[method]),
                 *"--max-steps 2 --batch-size 4 --eval-every 2 --eval-samples 8".split()]  # fmt: skip
        subprocess.run(train, check=True, capture_output=True)
    return tmp, out


def test_as_trained_reproduces_the_runs_validation_and_removing_the_update_zeroes_the_offset(runs, tmp_path):
    tmp, out = runs
    update_ablation.main([str(out["dept"]), str(out["adept"]), "--samples", "8", "--out", str(tmp_path / "a.md")])
    rows = json.loads((tmp_path / "a.json").read_text())
    for row, method in zip(rows, ("dept", "adept")):
        results = json.loads((out[method] / "results.json").read_text())
        assert row["method"] == method and 0 < row["examples"] <= 8
        assert row["trained"] == pytest.approx(results["best_validation"])
    removed = update_ablation.without_update(out["adept"], tmp_path / "removed")
    config, tensors = offset_size.read_adapter(removed / "best")[:2]
    assert config.rank and not tensors["prompt_embeddings"].eq(0).all()
    embeddings = offset_size.torch.randn(16, tensors["lora_embedding_A"].shape[0])
    assert offset_size.offsets(config, tensors, embeddings).eq(0).all()


def test_a_prompt_tuning_run_or_a_missing_folder_is_refused_before_any_scoring(runs, tmp_path):
    _, out = runs
    with pytest.raises(SystemExit, match="not a finished run"):
        update_ablation.main([str(out["dept"]), str(tmp_path / "missing")])
    prompt_only = tmp_path / "pt"
    shutil.copytree(out["dept"], prompt_only)
    weights = prompt_only / "best" / "adapter_model.safetensors"
    save_file({"prompt_embeddings": load_file(weights)["prompt_embeddings"]}, weights)
    with pytest.raises(SystemExit, match="no update to remove"):
        update_ablation.main([str(out["dept"]), str(prompt_only)])


def test_offset_size_keeps_rows_measured_earlier_and_reports_adepts_bias(runs, tmp_path):
    tmp, out = runs
    table = tmp_path / "sizes.md"
    table.with_suffix(".json").write_text(json.dumps([{"adapter": "gone", "update": "position", "rank": 2,
                                                       "prompt_rms": 1.0, "embedding_rms": 0.5, "offset_rms": 0.01,
                                                       "offset_mean_rms": 0.001}]))  # fmt: skip
    offset_size.main([str(out["adept"]), str(out["dept"]), "--model", str(tmp / "model"), "--out", str(table)])
    rows = json.loads(table.with_suffix(".json").read_text())
    assert [r["adapter"] for r in rows] == ["gone", str(out["adept"]), str(out["dept"])]
    assert rows[1]["bias_rms"] is not None and rows[2]["bias_rms"] is None
    assert "| gone | position | 2 | 2 | 2.00e-02 | 2.00e-03 | - |" in table.read_text()


def test_update_ablation_keeps_rows_measured_earlier(runs, tmp_path):
    _, out = runs
    table = tmp_path / "removal.md"
    table.with_suffix(".json").write_text(json.dumps([{"run": "gone", "method": "dept", "task": "glue/stsb",
                                                       "metric": "pearson", "examples": 500, "trained": 38.1,
                                                       "update_removed": 38.2}]))  # fmt: skip
    update_ablation.main([str(out["dept"]), "--samples", "8", "--out", str(table)])
    assert [r["run"] for r in json.loads(table.with_suffix(".json").read_text())] == ["gone", str(out["dept"])]
    assert "| gone | pearson | 38.1 | 38.2 | +0.1 |" in table.read_text()
