"""The command line on a tiny model: train, eval, predict, convert, tasks."""

import json

import pytest
from typer.testing import CliRunner

from conftest import OFFICIAL_DIR
from dept.cli import app
from tiny import make_tiny_llama, make_tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = make_tiny_tokenizer(root / "model", add_eos=False)
    make_tiny_llama(root / "model", tokenizer=tok)
    lines = ["text,label"] + [f"sample {i} is {'fine' if i % 2 else 'poor'},{'yes' if i % 2 else 'no'}" for i in range(30)]
    (root / "task.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["train", "--task", f"csv:{root / 'task.csv'}", "--text-fields", "text", "--label-field",
                                 "label", "--model", str(root / "model"), "--max-steps", "2", "--batch-size", "4",
                                 "--eval-every", "2", "--precision", "fp32", "--prompt-length", "3", "--rank", "2",
                                 "--max-length", "32", "--output-dir", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root


def test_train_prints_a_summary(trained):
    assert json.loads((trained / "run" / "results.json").read_text())["method"] == "dept"


def test_eval_reads_the_backbone_from_the_run(trained):
    result = runner.invoke(app, ["eval", "--adapter", str(trained / "run" / "best"), "--task", f"csv:{trained / 'task.csv'}",
                                 "--split", "validation", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["split"] == "validation" and 0 <= metrics["accuracy"] <= 100


def test_predict_ranks_or_generates(trained, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"source": "text: sample 3 is fine"}\nplain text line\n')
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", "--adapter", str(trained / "run" / "best"), "--input", str(inp),
                                 "--output", str(out), "--max-new-tokens", "3", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["prediction"], str) for r in rows)


def test_unknown_task_is_a_clear_error(trained):
    result = runner.invoke(app, ["train", "--task", "glue/sst3", "--model", str(trained / "model"), "--max-steps", "1"])
    assert result.exit_code != 0 and "sst3" in str(result.exception)


def test_tasks_lists_the_registry():
    result = runner.invoke(app, ["tasks"])
    assert "glue/rte" in result.output and "superglue/boolq" in result.output


@pytest.mark.skipif(not OFFICIAL_DIR.is_dir(), reason="official DePT checkpoints absent")
def test_convert_official(tmp_path):
    result = runner.invoke(app, ["convert", str(OFFICIAL_DIR / "cola"), str(tmp_path / "cola")])
    assert result.exit_code == 0 and "m=80 r=15 s=256" in result.output
