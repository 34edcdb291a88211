"""Several adapters on one backbone, chosen per row, in forward and in generate()."""

import pytest
import torch

from dept import DePTConfig, DePTModel

from conftest import randomize_update, run

IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0], [13, 14, 15, 16, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
NAMES = ["sst2", "__base__", "rte"]


def two_adapters(backbone) -> DePTModel:
    dm = DePTModel(
        backbone, DePTConfig(prompt_length=5, rank=3, max_length=16, prompt_init="vocab"), adapter_name="sst2"
    )
    dm.add_adapter("rte", DePTConfig(prompt_length=3, rank=2, max_length=8, prompt_init="vocab", seed=1))
    randomize_update(dm, "sst2", seed=1)
    randomize_update(dm, "rte", seed=2)
    return dm


def test_per_row_adapters_match_each_adapter_alone(backbone):
    dm = two_adapters(backbone)
    with torch.no_grad():
        mixed = run(dm, IDS, MASK, adapter_names=NAMES)
        for row, name in enumerate(NAMES):
            n = int(MASK[row].sum())
            alone = run(dm, IDS[row : row + 1, :n], adapter_names=[name])
            if dm.kind == "seq2seq":
                torch.testing.assert_close(mixed[row], alone[0], atol=1e-5, rtol=1e-5)
            else:
                torch.testing.assert_close(mixed[row, -alone.shape[1] :], alone[0], atol=1e-5, rtol=1e-5)


def test_base_rows_equal_the_plain_backbone(backbone):
    dm = two_adapters(backbone)
    ids = IDS[:1]
    with torch.no_grad():
        ours = run(dm, ids, adapter_names=["__base__"])
        if dm.kind == "seq2seq":
            plain = backbone(input_ids=ids, decoder_input_ids=torch.tensor([[0, 3, 4]])).logits
        else:
            plain = backbone(input_ids=ids).logits
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


def test_per_row_generate_matches_each_adapter_alone(backbone):
    dm = two_adapters(backbone)
    mixed = dm.generate(input_ids=IDS, attention_mask=MASK, adapter_names=NAMES, max_new_tokens=6, do_sample=False)
    for row, name in enumerate(NAMES):
        n = int(MASK[row].sum())
        alone = dm.generate(input_ids=IDS[row : row + 1, :n], adapter_names=[name], max_new_tokens=6, do_sample=False)
        assert mixed[row].tolist() == alone[0].tolist()


def test_set_adapter_switches_default_and_trainable_parameters(backbone):
    dm = two_adapters(backbone)
    dm.set_adapter("rte")
    trainable = {n for n, p in dm.named_parameters() if p.requires_grad}
    assert trainable == {f"adapters.rte.{k}" for k in ("prompt_embeddings", "lora_embedding_A", "lora_embedding_B")}
    with torch.no_grad():
        torch.testing.assert_close(run(dm, IDS[:1]), run(dm, IDS[:1], adapter_names=["rte"]))


def test_unknown_adapter_and_wrong_length_are_refused(backbone):
    dm = two_adapters(backbone)
    with pytest.raises(KeyError, match="Unknown adapter"):
        run(dm, IDS, MASK, adapter_names=["sst2", "nope", "rte"])
    with pytest.raises(ValueError, match="3 rows"):
        run(dm, IDS, MASK, adapter_names=["sst2"])
    with pytest.raises(ValueError, match="reserved"):
        dm.add_adapter("__base__", DePTConfig(prompt_init="vocab"))
