"""DePT against its definitions: vanilla PT, PEFT prompt tuning, the official pad-to-s computation."""

import pytest
import torch
from peft import PromptTuningConfig, TaskType, get_peft_model

from dept import DePTConfig, DePTModel

from conftest import batch, decoder_ids, randomize_update, run, tiny_llama, tiny_t5

CFG = DePTConfig(prompt_length=5, rank=3, max_length=16, prompt_init="vocab")


def test_zero_B_is_exactly_vanilla_prompt_tuning(backbone):
    dept = DePTModel(backbone, CFG)
    prompt = dept.adapters["default"].prompt_embeddings.detach()
    dept.add_adapter("pt", DePTConfig(prompt_length=5, rank=0, max_length=16), prompt_init=prompt)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(
            run(dept, ids, mask, adapter_names=["default"] * 2), run(dept, ids, mask, adapter_names=["pt"] * 2)
        )


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_rank_zero_equals_peft_prompt_tuning(kind):
    model = tiny_llama() if kind == "causal" else tiny_t5()
    dept = DePTModel(model, DePTConfig(prompt_length=5, rank=0, prompt_init="vocab"))
    task = TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_2_SEQ_LM
    peft_model = get_peft_model(
        model, PromptTuningConfig(task_type=task, num_virtual_tokens=5, num_transformer_submodules=1)
    )
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(dept.adapters["default"].prompt_embeddings)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    with torch.no_grad():
        ours = run(dept, ids)
        if kind == "causal":
            theirs = peft_model(input_ids=ids).logits
        else:
            theirs = peft_model(input_ids=ids, decoder_input_ids=decoder_ids(2)).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def official_pad_to_s(dm, ids, mask):
    """The official computation: right-pad every input to s, add (α/√r)·A·B to all s positions,
    prepend P and extend the mask with m ones."""
    adapter = dm.adapters["default"]
    s = adapter.config.max_length
    pad = s - ids.shape[1]
    ids_s = torch.nn.functional.pad(ids, (0, pad))
    mask_s = torch.nn.functional.pad(mask, (0, pad))
    embeds = dm.base_model.get_input_embeddings()(ids_s)
    embeds = embeds + adapter.config.scaling * adapter.lora_embedding_A @ adapter.lora_embedding_B
    prompt = adapter.prompt_embeddings.unsqueeze(0).expand(ids.shape[0], -1, -1)
    inputs = torch.cat([prompt, embeds], 1)
    full_mask = torch.cat([torch.ones(ids.shape[0], adapter.prompt_length, dtype=mask.dtype), mask_s], 1)
    if dm.kind == "seq2seq":
        return dm.base_model(
            inputs_embeds=inputs, attention_mask=full_mask, decoder_input_ids=decoder_ids(ids.shape[0])
        ).logits
    return dm.base_model(inputs_embeds=inputs, attention_mask=full_mask).logits


def test_dynamic_padding_equals_official_pad_to_s(backbone):
    dm = DePTModel(backbone, CFG)
    randomize_update(dm)
    ids, mask = batch()
    with torch.no_grad():
        ours = run(dm, ids, mask)
        official = official_pad_to_s(dm, ids, mask)
    if dm.kind == "seq2seq":
        torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)
        return
    m = dm.dept_config.prompt_length
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        # ours is left-padded, so a row's m + n real slots are its last ones
        torch.testing.assert_close(ours[row, -(m + n) :], official[row, : m + n], atol=1e-5, rtol=1e-5)


def test_left_padded_rows_equal_unpadded_rows(backbone):
    dm = DePTModel(backbone, CFG)
    randomize_update(dm)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        padded = run(dm, ids, mask)
        alone = run(dm, ids[1:, 2:])
    if dm.kind == "seq2seq":
        torch.testing.assert_close(padded[1], alone[0], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(padded[1, -alone.shape[1] :], alone[0], atol=1e-5, rtol=1e-5)


def test_over_long_input_names_both_lengths(backbone):
    dm = DePTModel(backbone, DePTConfig(prompt_length=2, rank=2, max_length=4, prompt_init="vocab"))
    with pytest.raises(ValueError, match="Input of 5 tokens is longer than the adapter's max_length of 4"):
        run(dm, torch.tensor([[5, 6, 7, 8, 9]]))


def test_encoder_classifier_trains_prompt_and_head():
    from conftest import tiny_bert_classifier

    model = tiny_bert_classifier()
    dm = DePTModel(model, CFG)
    randomize_update(dm)
    ids, mask = batch()
    out = dm(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]), token_type_ids=torch.zeros_like(ids))
    out.loss.backward()
    head = {n: p for n, p in dm.adapters["default"].named_parameters() if n.startswith("head.")}
    assert head and all(p.grad is not None for p in head.values())
    assert dm.adapters["default"].lora_embedding_B.grad is not None
    assert model.bert.embeddings.word_embeddings.weight.grad is None
    alone = dm(input_ids=ids[1:, :3]).logits
    torch.testing.assert_close(out.logits[1], alone[0], atol=1e-5, rtol=1e-5)
