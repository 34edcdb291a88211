"""ADePT (token-wise update) against an independent implementation of its formula, alone and in batches
mixed with DePT and PT rows; its budget, checkpoints (ours and the official PROMPT_TUNING_LORAX layout)."""

import json

import pytest
import torch
import torch.nn.functional as F

from dept import DePTConfig, DePTModel
from dept.core.checkpoint import read_adapter

from conftest import decoder_ids, randomize_update, run, tiny_llama, tiny_t5

IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0], [13, 14, 15, 16, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
NAMES = ["adept", "dept", "pt"]


def adept_config(**kw) -> DePTConfig:
    return DePTConfig(
        **{"prompt_length": 4, "rank": 3, "max_length": 16, "prompt_init": "vocab", "update": "token", **kw}
    )


def randomize_token_update(dm, name: str = "default", seed: int = 3) -> None:
    """Every ADePT tensor non-zero (B, a, b start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    adapter = dm.adapters[name]
    with torch.no_grad():
        for key in ("lora_embedding_B", "lora_embedding_a", "lora_embedding_b"):
            tensor = getattr(adapter, key)
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)


def family(backbone) -> DePTModel:
    """One adapter of each kind on one backbone, every update non-zero."""
    dm = DePTModel(backbone, adept_config(), adapter_name="adept")
    dm.add_adapter("dept", DePTConfig(prompt_length=5, rank=2, max_length=16, prompt_init="vocab", seed=1))
    dm.add_adapter("pt", DePTConfig(prompt_length=6, rank=0, prompt_init="vocab", seed=2))
    randomize_token_update(dm, "adept")
    randomize_update(dm, "dept", seed=2)
    return dm.eval()


def reference_inputs(dm: DePTModel, ids: torch.Tensor, name: str = "adept") -> torch.Tensor:
    """[P ; e + ReLU(e·A + a)·B + b] for one unpadded row, written from the paper's formula."""
    adapter = dm.adapters[name]
    e = dm.base_model.get_input_embeddings()(ids)
    A, a = adapter.lora_embedding_A, adapter.lora_embedding_a
    B, b = adapter.lora_embedding_B, adapter.lora_embedding_b
    offsets = F.relu(e @ A + a) @ B + b
    return torch.cat([adapter.prompt_embeddings[None], e + offsets], dim=1)


def reference_logits(dm: DePTModel, ids: torch.Tensor) -> torch.Tensor:
    x = reference_inputs(dm, ids)
    if dm.kind == "seq2seq":
        return dm.base_model(inputs_embeds=x, decoder_input_ids=decoder_ids(1)).logits
    positions = torch.arange(x.shape[1])[None]
    return dm.base_model(inputs_embeds=x, position_ids=positions).logits[:, -ids.shape[1] :]


@pytest.mark.parametrize("make", [tiny_llama, tiny_t5], ids=["causal", "seq2seq"])
def test_adept_rows_equal_the_formula_alone_and_in_a_mixed_batch(make):
    dm = family(make())
    with torch.no_grad():
        mixed = run(dm, IDS, MASK, adapter_names=NAMES)
        for row, name in enumerate(NAMES):
            n = int(MASK[row].sum())
            alone = run(dm, IDS[row : row + 1, :n], adapter_names=[name])
            got = mixed[row] if dm.kind == "seq2seq" else mixed[row, -alone.shape[1] :]
            torch.testing.assert_close(got, alone[0], atol=1e-5, rtol=1e-5)
        expected = reference_logits(dm, IDS[:1])[0]
        alone = run(dm, IDS[:1], adapter_names=["adept"])[0, -expected.shape[0] :]
        torch.testing.assert_close(alone, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed[0, -expected.shape[0] :], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_t5], ids=["causal", "seq2seq"])
def test_adept_generate_equals_the_formula_and_each_row_alone(make):
    dm = family(make())
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    mixed = dm.generate(input_ids=IDS, attention_mask=MASK, adapter_names=NAMES, **options)
    for row, name in enumerate(NAMES):
        n = int(MASK[row].sum())
        alone = dm.generate(input_ids=IDS[row : row + 1, :n], adapter_names=[name], **options)
        assert mixed[row].tolist() == alone[0].tolist()
    with torch.no_grad():
        expected = dm.base_model.generate(inputs_embeds=reference_inputs(dm, IDS[:1]), **options)
    assert mixed[0].tolist() == expected[0].tolist()


def test_offsets_reach_the_source_only_and_generated_tokens_get_none():
    """A causal answer (labelled tokens) gets no offset, as for DePT: the loss equals the formula on
    the source followed by plain answer embeddings."""
    dm = family(tiny_llama())
    ids, labels = IDS[:1], torch.tensor([[-100, -100, -100, 8, 9]])
    with torch.no_grad():
        out = dm(input_ids=ids, labels=labels, adapter_names=["adept"]).logits[:, -5:]
        x = reference_inputs(dm, ids[:, :3])
        x = torch.cat([x, dm.base_model.get_input_embeddings()(ids[:, 3:])], dim=1)
        expected = dm.base_model(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]).logits[:, -5:]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_budget_matches_the_papers_rank_and_ignores_s():
    """m·d + r(2d + 1) + d <= l·d: T5-Base (d=768), l=100, m=60 gives the README's r=19, for any s."""
    for s in (64, 256, 4096):
        config = DePTConfig.from_budget(100, 60, 768, max_length=s, update="token")
        assert config.rank == 19
        assert config.num_trainable(768) == 60 * 768 + 19 * (2 * 768 + 1) + 768 <= 100 * 768
    assert DePTConfig.from_budget(100, 60, 576, update="token").rank == 19  # SmolLM2-135M
    assert DePTConfig.from_budget(100, 60, 576).rank == 27  # DePT on the same budget


def test_step_zero_is_prompt_tuning_and_dropout_only_trains():
    dm = DePTModel(tiny_llama(), adept_config(), adapter_name="adept")
    adapter = dm.adapters["adept"]
    assert not adapter.lora_embedding_B.any() and not adapter.lora_embedding_a.any()
    assert not adapter.lora_embedding_b.any() and adapter.lora_embedding_A.abs().sum() > 0
    assert adapter.lora_embedding_A.shape == (32, 3)  # d × r: no position table
    assert set(dict(adapter.named_parameters())) == {
        "prompt_embeddings", "lora_embedding_A", "lora_embedding_B", "lora_embedding_a", "lora_embedding_b"
    }  # fmt: skip
    randomize_token_update(dm, "adept")
    ids = torch.arange(3, 43)[None]  # 40 tokens x r=3: some of the 120 values are dropped
    torch.manual_seed(0)
    dm.train()
    first, second = run(dm, ids), run(dm, ids)
    assert not torch.allclose(first, second)  # dropout 0.1 on e·A + a
    dm.eval()
    torch.testing.assert_close(run(dm, ids), run(dm, ids))


def test_an_adapter_added_to_a_model_in_eval_mode_runs_without_dropout():
    dm = DePTModel(tiny_llama()).eval()
    dm.add_adapter("late", adept_config())
    randomize_token_update(dm, "late")
    ids = torch.arange(3, 43)[None]
    with torch.no_grad():
        torch.testing.assert_close(run(dm, ids), run(dm, ids), atol=0, rtol=0)


def test_inputs_longer_than_s_need_no_cut():
    dm = DePTModel(tiny_llama(), adept_config(max_length=4), adapter_name="adept")
    ids = torch.arange(3, 23)[None]  # 20 tokens, s = 4
    assert run(dm, ids).shape[1] >= 20
    position = DePTModel(tiny_llama(), DePTConfig(prompt_length=4, rank=3, max_length=4, prompt_init="vocab"))
    with pytest.raises(ValueError, match="longer than the adapter's max_length"):
        run(position, ids)


def test_save_load_round_trips_bit_identically(tmp_path):
    dm = family(tiny_llama())
    dm.save_pretrained(tmp_path / "a", adapter_names=["adept"])
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["config"]["update"] == "token"
    again = DePTModel.from_pretrained(tiny_llama(), tmp_path / "a").eval()
    for key, value in dm.adapters["adept"].state_dict().items():
        assert torch.equal(again.adapters["default"].state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(run(again, IDS[:1]), run(dm, IDS[:1], adapter_names=["adept"]))


def test_official_adept_layout_loads(tmp_path):
    """PROMPT_TUNING_LORAX: prompt_embeddings and prompt_encoder.lora_embedding_{A,B,a,b}, pickled."""
    dm = family(tiny_t5())
    adapter = dm.adapters["adept"]
    state = {"prompt_embeddings": adapter.prompt_embeddings.detach().clone()}
    for key in ("A", "B", "a", "b"):
        state[f"prompt_encoder.lora_embedding_{key}"] = getattr(adapter, f"lora_embedding_{key}").detach().clone()
    (tmp_path / "official").mkdir()
    torch.save(state, tmp_path / "official" / "adapter_model.bin")
    meta = {"peft_type": "PROMPT_TUNING_LORAX", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 4, "r": 3,
            "token_dim": 32, "max_length": 16, "lora_alpha": 8, "prompt_tuning_init": "RANDOM"}  # fmt: skip
    (tmp_path / "official" / "adapter_config.json").write_text(json.dumps(meta))
    config, tensors, backbone = read_adapter(tmp_path / "official")
    assert (config.update, config.rank, config.prompt_length, backbone["kind"]) == ("token", 3, 4, "seq2seq")
    loaded = DePTModel.from_pretrained(tiny_t5(), tmp_path / "official").eval()
    with torch.no_grad():
        torch.testing.assert_close(run(loaded, IDS[:1]), run(dm, IDS[:1], adapter_names=["adept"]))


def test_a_dept_checkpoint_of_the_wrong_shape_is_refused_for_adept(tmp_path):
    dm = DePTModel(tiny_llama(), DePTConfig(prompt_length=4, rank=3, max_length=16, prompt_init="vocab"))
    dm.save_pretrained(tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "adapter_config.json").read_text())
    meta["config"]["update"] = "token"
    (tmp_path / "d" / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lack the tensor"):
        DePTModel.from_pretrained(tiny_llama(), tmp_path / "d")


@pytest.mark.parametrize("arch", ["llama", "t5", "classifier"])
def test_dept_train_method_adept_trains_and_records_its_rates(arch, tmp_path, capsys):
    """`dept train --method adept` on each backbone kind: every ADePT tensor moves, the run records the
    rates and the saved adapter is token-wise at the budget-matched rank."""
    from safetensors.torch import load_file

    from dept.cli import main

    from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer

    model = tmp_path / "model"
    tok = make_tiny_tokenizer(model, pad_token="<pad>" if arch == "t5" else None, add_eos=arch == "t5")
    if arch == "t5":
        make_tiny_t5(model, tokenizer=tok)
    else:
        make_tiny_llama(model, tokenizer=tok, classification=arch == "classifier")
    rows = ["text,label"] + [
        f"the movie was {'great' if i % 2 else 'bad'} {i},{'pos' if i % 2 else 'neg'}" for i in range(24)
    ]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    code = main([
        "train", "--task", f"csv:{tmp_path / 'task.csv'}", "--text-fields", "text", "--label-field", "label",
        "--model", str(model), "--method", "adept", "--budget", "10", "--prompt-length", "4", "--max-length", "32",
        "--max-steps", "4", "--batch-size", "4", "--eval-every", "4", "--eval-samples", "4", "--test-samples", "4",
        "--precision", "fp32", "--lr-lowrank", "0.05", "--output-dir", str(out),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "adept" and results["lr_lowrank"] == 0.05 and results["lr_prompt"] > 0
    config, tensors, _ = read_adapter(out / "best")
    # r = floor(((10 - 4)·32 - 32) / 65) = 2, whatever s is
    assert (config.update, config.rank, config.prompt_length) == ("token", 2, 4)
    assert results["trainable_parameters"] == config.num_trainable(32) + (
        2 * 32 if arch == "classifier" else 0
    )  # its own score head
    final = load_file(out / "checkpoint" / "model" / "adapter_model.safetensors")
    for key in ("lora_embedding_B", "lora_embedding_a", "lora_embedding_b"):
        assert final[key].abs().sum() > 0, key  # all start at zero


def test_options_know_adept_without_torch_specific_rules():
    """The registry's checks: ADePT has no s x r table, so --rank may exceed --max-length; it searches both
    rates and its prompt length, as DePT."""
    from dept.options import METHODS, SEARCHED_RATES, MethodOptions, TrainOptions, TuneOptions, UsageError

    assert "adept" in METHODS and SEARCHED_RATES["adept"] == ("lr_prompt", "lr_lowrank")
    MethodOptions(method="adept", rank=40, max_length=32).validate()
    with pytest.raises(UsageError, match="A \\(s x r\\)"):
        MethodOptions(method="dept", rank=40, max_length=32).validate()
    with pytest.raises(UsageError, match="exceeds the --budget"):
        MethodOptions(method="adept", prompt_length=120).validate()
    TuneOptions(search_shape=True).validate(TrainOptions(method=MethodOptions(method="adept")))
    with pytest.raises(UsageError, match="--method dept/adept"):
        TuneOptions(search_shape=True).validate(TrainOptions(method=MethodOptions(method="pt")))


def test_unknown_update_is_refused():
    with pytest.raises(ValueError, match="update must be one of"):
        DePTConfig(update="row")
    assert DePTConfig.from_dict({"prompt_length": 3, "rank": 1}).update == "position"  # saves from before ADePT
