"""The README's lm-eval (offline) and instruction-data commands run as written, with the backbone swapped
for a tiny one: the commands a reader copies must not fail on a flag or a path."""

import json
import re
import shlex
import subprocess
import sys

import pytest

from conftest import DATA_DIR, REPO_ROOT
from tiny import make_tiny_llama, make_tiny_tokenizer

pytest.importorskip("lm_eval")
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"  # noqa: E501


def blocks(heading: str, language: str) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(heading) :]
    section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def commands(block: str) -> list[list[str]]:
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def run(argv: list[str], cwd) -> str:
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "dept":
        argv = [sys.executable, "-m", "dept.cli", *argv[1:]]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def tiny(tmp_path):
    tok = make_tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(tmp_path / "model")
    make_tiny_llama(tmp_path / "model", tokenizer=tok, max_position_embeddings=512)
    return tmp_path / "model"


@pytest.mark.skipif(not (DATA_DIR / "glue").is_dir(), reason="GLUE files not found (DEPT_DATA_DIR)")
def test_the_offline_lm_eval_commands_run_as_written(tmp_path, tiny):
    run(["dept", "train", "--task", "glue/sst2", "--model", str(tiny), "--data-dir", str(DATA_DIR), "--max-steps",
         "2", "--batch-size", "2", "--eval-samples", "4", "--test-samples", "4", "--budget", "8", "--prompt-length",
         "4", "--max-length", "64", "--output-dir", "runs/glue/sst2/dept"], tmp_path)  # fmt: skip
    offline = blocks("### lm-evaluation-harness", "bash")[1]
    write, evaluate = commands(offline.replace("'../shared/data'", repr(str(DATA_DIR))))
    run(write, tmp_path)
    out = run(evaluate, tmp_path)
    assert "dept_glue_sst2" in out and "acc" in out
    assert len((tmp_path / "lm_tasks" / "dept_glue_sst2.jsonl").read_text().splitlines()) == 200


def test_the_instruction_data_command_runs_as_written(tmp_path, tiny):
    records = blocks("### Instruction data and chat templates", "")[0]
    (tmp_path / "chat.jsonl").write_text("".join(records for _ in range(10)))
    (command,) = commands(blocks("### Instruction data and chat templates", "bash")[0])
    steps = command.index("--max-steps") + 1
    command[steps] = "2"  # on a tiny model, 2 steps show it runs
    run([*command, "--model", str(tiny), "--eval-samples", "4"], tmp_path)
    results = json.loads((tmp_path / "runs" / "chat" / "results.json").read_text())
    assert results["main_metric"] == "rougeL" and "exact_match" in results["validation"]
    assert json.loads((tmp_path / "runs" / "chat" / "run.json").read_text())["chat_template"] is True
