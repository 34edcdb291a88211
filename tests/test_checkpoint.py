"""Saving, loading, resuming; official DePT and PEFT formats."""

import json
import math

import pytest
import torch
from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import T5Config, T5ForConditionalGeneration

from dept import DePTConfig, DePTModel, convert_official
from dept.core.checkpoint import export_peft
from dept.core.optim import create_optimizer

from conftest import OFFICIAL_DIR, batch, decoder_ids, randomize_update, run, tiny_llama, tiny_t5
from tiny import make_tiny_llama

CFG = DePTConfig(prompt_length=5, rank=3, max_length=16, prompt_init="vocab")
OFFICIAL = ["cola", "sst2", "nq", "hotpotqa", "superglue-wic"]


def test_save_load_gives_identical_outputs(backbone, tmp_path):
    dm = DePTModel(backbone, CFG)
    randomize_update(dm)
    dm.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == {
        "prompt_embeddings",
        "lora_embedding_A",
        "lora_embedding_B",
    }
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "DEPT" and meta["dept_version"] and meta["backbone"]["hidden_size"] == 32
    loaded = DePTModel.from_pretrained(backbone, tmp_path)
    assert loaded.num_trainable_parameters() == 0
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(run(dm, ids, mask), run(loaded, ids, mask))


def test_several_adapters_save_to_subfolders(tmp_path):
    dm = DePTModel(tiny_llama(), CFG, adapter_name="sst2")
    dm.add_adapter("rte", DePTConfig(prompt_length=3, rank=0, prompt_init="vocab"))
    dm.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "rte" / "adapter_config.json").is_file()
    again = DePTModel.from_pretrained(tiny_llama(), tmp_path, adapter_name="sst2")
    again.load_adapter(tmp_path / "rte", "rte")
    assert sorted(again.adapters) == ["rte", "sst2"]


@pytest.mark.parametrize("field, other", [("hidden_size", dict(d_model=48)), ("vocab_size", dict(vocab_size=120))])
def test_mismatched_backbone_is_refused_naming_both(tmp_path, field, other):
    DePTModel(tiny_t5(), CFG).save_pretrained(tmp_path)
    config = tiny_t5().config.to_dict() | other
    wrong = T5ForConditionalGeneration(T5Config(**config))
    expected = {"hidden_size": ("32", "48"), "vocab_size": ("100", "120")}[field]
    with pytest.raises(ValueError, match=rf"{field}={expected[0]}.*{field}={expected[1]}"):
        DePTModel.from_pretrained(wrong, tmp_path)


def test_checkpoint_of_wrong_shape_or_format_is_refused(tmp_path):
    dm = DePTModel(tiny_llama(), CFG)
    dm.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    meta["config"]["rank"] = 4
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lora_embedding_A.*shape"):
        DePTModel.from_pretrained(tiny_llama(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DePTModel.from_pretrained(tiny_llama(), tmp_path)
    with pytest.raises(FileNotFoundError, match="No adapter_config.json"):
        DePTModel.from_pretrained(tiny_llama(), tmp_path / "missing")


def test_resuming_continues_from_the_saved_tensors(tmp_path):
    dm = DePTModel(tiny_llama(), CFG)
    opt = create_optimizer(dm, 0.3, 1e-2)
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # the source: where the offsets go
    for _ in range(3):
        opt.zero_grad()
        dm(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    dm.save_pretrained(tmp_path)
    resumed = DePTModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    saved = dm.adapters["default"].state_dict()
    for key, value in resumed.adapters["default"].state_dict().items():
        assert torch.equal(value, saved[key])
    assert resumed.num_trainable_parameters() == dm.num_trainable_parameters()
    opt2 = create_optimizer(resumed, 0.3, 1e-2)
    resumed(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    opt2.step()
    assert not torch.equal(resumed.adapters["default"].lora_embedding_B, saved["lora_embedding_B"])


@pytest.fixture(scope="module")
def t5_base_shaped():
    config = T5Config(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_heads=12,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config).eval()


@pytest.mark.skipif(
    not OFFICIAL_DIR.is_dir(), reason="official DePT checkpoints (../shared/reference/dept-official) absent"
)
def test_official_checkpoints_load_into_a_t5_base_shaped_model(t5_base_shaped, caplog):
    dm = DePTModel(t5_base_shaped)
    for name in OFFICIAL:
        meta = json.loads((OFFICIAL_DIR / name / "adapter_config.json").read_text())
        m, r, s = meta["num_virtual_tokens"], meta["r"], meta["max_length"]
        adapter = dm.load_adapter(OFFICIAL_DIR / name, name)
        assert adapter.prompt_embeddings.shape == (m, 768)
        assert adapter.lora_embedding_A.shape == (s, r) and adapter.lora_embedding_B.shape == (r, 768)
        assert adapter.config.scaling == pytest.approx(8 / math.sqrt(r))
        official = torch.load(OFFICIAL_DIR / name / "adapter_model.bin", weights_only=True, map_location="cpu")
        assert torch.equal(adapter.prompt_embeddings, official["prompt_embeddings"])
        if "prompt_encoder.lora_embedding_B" in official:
            assert torch.equal(adapter.lora_embedding_B, official["prompt_encoder.lora_embedding_B"])
        else:
            assert not adapter.lora_embedding_B.any()
    assert "no low-rank matrices" in caplog.text
    ids = torch.randint(2, 32000, (len(OFFICIAL), 12))
    with torch.no_grad():
        logits = dm(input_ids=ids, decoder_input_ids=decoder_ids(len(OFFICIAL)), adapter_names=OFFICIAL).logits
    assert logits.shape == (len(OFFICIAL), 3, 32128) and torch.isfinite(logits).all()


@pytest.mark.skipif(not OFFICIAL_DIR.is_dir(), reason="official DePT checkpoints absent")
def test_convert_official_writes_safetensors(tmp_path, t5_base_shaped):
    config = convert_official(OFFICIAL_DIR / "sst2", tmp_path)
    assert (config.prompt_length, config.rank, config.max_length) == (60, 30, 256)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    official = torch.load(OFFICIAL_DIR / "sst2" / "adapter_model.bin", weights_only=True, map_location="cpu")
    assert torch.equal(tensors["lora_embedding_A"], official["prompt_encoder.lora_embedding_A"])
    direct, converted = DePTModel(t5_base_shaped), None
    direct.load_adapter(OFFICIAL_DIR / "sst2", "official")
    direct.load_adapter(tmp_path, "converted")
    ids = torch.randint(2, 32000, (1, 10))
    with torch.no_grad():
        a = direct(input_ids=ids, decoder_input_ids=decoder_ids(1), adapter_names=["official"]).logits
        converted = direct(input_ids=ids, decoder_input_ids=decoder_ids(1), adapter_names=["converted"]).logits
    assert torch.equal(a, converted)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_peft_prompt_tuning_adapter_loads_as_rank_zero(tmp_path, kind):
    model = tiny_llama() if kind == "causal" else tiny_t5()
    task = TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_2_SEQ_LM
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=task, num_virtual_tokens=6))
    peft_model.save_pretrained(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        kwargs = {} if kind == "causal" else {"decoder_input_ids": decoder_ids(1)}
        theirs = peft_model(input_ids=ids, **kwargs).logits
    dm = DePTModel.from_pretrained(peft_model.get_base_model(), tmp_path)
    assert dm.dept_config.rank == 0 and dm.dept_config.prompt_length == 6
    with torch.no_grad():
        torch.testing.assert_close(run(dm, ids), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_rank_zero_adapter_exports_to_peft(tmp_path, kind):
    model = tiny_llama() if kind == "causal" else tiny_t5()
    dm = DePTModel(model, DePTConfig(prompt_length=5, rank=0, prompt_init="vocab", seed=3))
    export_peft(dm, tmp_path)
    peft_model = PeftModel.from_pretrained(tiny_llama() if kind == "causal" else tiny_t5(), tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        kwargs = {} if kind == "causal" else {"decoder_input_ids": decoder_ids(1)}
        torch.testing.assert_close(run(dm, ids), peft_model(input_ids=ids, **kwargs).logits, atol=1e-5, rtol=1e-5)


def test_export_refuses_a_trained_low_rank_update(tmp_path):
    dm = DePTModel(tiny_llama(), CFG)
    randomize_update(dm)
    with pytest.raises(ValueError, match="cannot represent"):
        export_peft(dm, tmp_path)


def test_prompt_tuning_has_no_zero_size_parameters_and_reads_old_saves(tmp_path):
    """r=0: no A, B that never reach the loss (DDP refuses unused parameters); adapters saved with
    zero-size A, B (before this was so) still load."""
    from safetensors.torch import save_file

    dm = DePTModel(tiny_llama(), DePTConfig(prompt_length=4, rank=0, max_length=16, prompt_init="random"))
    names = [n for n, p in dm.named_parameters() if p.requires_grad]
    assert names == ["adapters.default.prompt_embeddings"]
    dm.save_pretrained(tmp_path / "new")
    assert set(load_file(tmp_path / "new" / "adapter_model.safetensors")) == {"prompt_embeddings"}
    old = load_file(tmp_path / "new" / "adapter_model.safetensors")
    old.update(lora_embedding_A=torch.zeros(16, 0), lora_embedding_B=torch.zeros(0, 32))
    (tmp_path / "old").mkdir()
    save_file(old, tmp_path / "old" / "adapter_model.safetensors")
    (tmp_path / "old" / "adapter_config.json").write_text((tmp_path / "new" / "adapter_config.json").read_text())
    again = DePTModel.from_pretrained(tiny_llama(), tmp_path / "old")
    assert torch.equal(again.adapters["default"].prompt_embeddings, dm.adapters["default"].prompt_embeddings)


def test_full_fine_tuning_restore_refuses_a_partial_match(tmp_path):
    """strict=False alone would load nothing from a folder of another model and keep the last step's weights."""
    from safetensors.torch import save_file

    from dept.methods import METHODS

    load_weights = METHODS["full"].load_weights
    model = make_tiny_llama()  # tied output embeddings
    model.save_pretrained(tmp_path / "saved")
    other = make_tiny_llama(seed=1)
    assert "lm_head.weight" not in load_file(tmp_path / "saved" / "model.safetensors")
    load_weights(other, tmp_path / "saved")  # the tied key a save leaves out is no mismatch
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    renamed = {f"backbone.{k}": v for k, v in load_file(tmp_path / "saved" / "model.safetensors").items()}
    (tmp_path / "other").mkdir()
    save_file(renamed, tmp_path / "other" / "model.safetensors")
    with pytest.raises(ValueError, match="does not hold this model's weights: .* missing .* unexpected"):
        load_weights(make_tiny_llama(seed=2), tmp_path / "other")
