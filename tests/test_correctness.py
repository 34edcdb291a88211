"""No silent wrong numbers: each test computes the expected result by hand from the backbone alone.

Causal LMs: the low-rank update belongs to the input (source) tokens, never to the answer that
teacher forcing appends nor to generated tokens, so training, rank scoring and generation see one
model. Decoder-only classifiers pool the last slot, so their rows must end there. Classification
heads belong to adapters.
"""

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

from dept import DePTConfig, DePTModel

from conftest import randomize_update, tiny_bert_classifier, tiny_llama, tiny_t5
from tiny import make_tiny_llama

CFG = DePTConfig(prompt_length=3, rank=2, max_length=16, prompt_init="vocab")


def manual_embeds(dm: DePTModel, ids: torch.Tensor, offset_tokens: int) -> torch.Tensor:
    """[P ; E(ids) + (α/√r)·A[i]·B on the first `offset_tokens` tokens only], for one unpadded row."""
    adapter = dm.adapters[dm.active_adapter]
    embeds = dm.base_model.get_input_embeddings()(ids)
    update = (adapter.lora_embedding_A @ adapter.lora_embedding_B) * adapter.config.scaling
    offsets = torch.zeros_like(embeds)
    offsets[:, :offset_tokens] = update[:offset_tokens]
    return torch.cat([adapter.prompt_embeddings.unsqueeze(0), embeds + offsets], dim=1)


def test_causal_loss_offsets_the_source_only():
    dm = DePTModel(tiny_llama(), CFG)
    randomize_update(dm)
    source, target = [5, 6, 7, 8], [9, 10, 1]
    ids = torch.tensor([source + target])
    labels = torch.tensor([[-100] * len(source) + target])
    loss = dm(input_ids=ids, labels=labels).loss
    logits = dm.base_model(inputs_embeds=manual_embeds(dm, ids, len(source))).logits
    m, s = CFG.prompt_length, len(source)
    expected = F.cross_entropy(logits[0, m + s - 1 : m + s - 1 + len(target)], torch.tensor(target))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_an_answer_past_max_length_gets_no_offset_and_no_error():
    dm = DePTModel(tiny_llama(), DePTConfig(prompt_length=3, rank=2, max_length=4, prompt_init="vocab"))
    randomize_update(dm)
    source, target = [5, 6, 7], [9, 10, 11, 12, 1]
    ids, labels = torch.tensor([source + target]), torch.tensor([[-100] * 3 + target])
    loss = dm(input_ids=ids, labels=labels).loss
    logits = dm.base_model(inputs_embeds=manual_embeds(dm, ids, len(source))).logits
    expected = F.cross_entropy(logits[0, 3 + 2 : 3 + 2 + len(target)], torch.tensor(target))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_generate_steps_equal_teacher_forcing_with_source_only_offsets():
    dm = DePTModel(tiny_llama(), CFG)
    randomize_update(dm)
    source = torch.tensor([[5, 6, 7, 8]])
    out = dm.generate(
        input_ids=source, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    generated = out.sequences[0]
    for k in range(3):
        ids = torch.cat([source, generated[:k].unsqueeze(0)], dim=1)
        by_hand = dm.base_model(inputs_embeds=manual_embeds(dm, ids, source.shape[1])).logits[:, -1]
        source_mask = torch.tensor([[1] * source.shape[1] + [0] * k])
        forward = dm(input_ids=ids, source_mask=source_mask).logits[:, -1]
        torch.testing.assert_close(out.scores[k], by_hand, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(forward, by_hand, atol=1e-5, rtol=1e-5)


def test_causal_forward_refuses_a_filled_kv_cache():
    dm = DePTModel(tiny_llama(), CFG)
    ids = torch.tensor([[5, 6, 7]])
    out = dm(input_ids=ids, use_cache=True)
    cache = next(out[name] for name in ("cache", "past_key_values") if name in out)
    for name in ("past_key_values", "cache"):
        with pytest.raises(ValueError, match=f"filled {name}.*generate"):
            dm(input_ids=torch.tensor([[9]]), attention_mask=torch.ones(1, 4), **{name: cache})


def test_seq2seq_forward_continues_from_its_kv_cache():
    dm = DePTModel(tiny_t5(), CFG)
    randomize_update(dm)
    ids, decoder = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 3, 4]])
    full = dm(input_ids=ids, decoder_input_ids=decoder).logits
    first = dm(input_ids=ids, decoder_input_ids=decoder[:, :2], use_cache=True)
    name = "cache" if "cache" in first else "past_key_values"  # renamed in transformers 5.x
    cache = {name: first[name]}
    step = dm(
        input_ids=ids, decoder_input_ids=decoder[:, 2:], encoder_outputs=(first.encoder_last_hidden_state,), **cache
    ).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def tiny_llama_classifier():
    return make_tiny_llama(classification=True, num_labels=3, vocab_size=100, pad_token_id=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_classifier_padded_rows_equal_each_row_alone(side):
    dm = DePTModel(tiny_llama_classifier(), CFG)
    randomize_update(dm)
    rows = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    width = max(map(len, rows))

    def pad(r, value):
        fill = [value] * (width - len(r))
        return fill + r if side == "left" else r + fill

    with torch.no_grad():
        batched = dm(
            input_ids=torch.tensor([pad(r, 0) for r in rows]),
            attention_mask=torch.tensor([pad([1] * len(r), 0) for r in rows]),
        ).logits
        for i, row in enumerate(rows):
            alone = dm(input_ids=torch.tensor([row])).logits
            torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=1e-4)


def trained_classifier(base, labels, seed) -> DePTModel:
    """A DePT classifier after one optimizer step, so its prompt, update and head all moved."""
    dm = DePTModel(
        copy.deepcopy(base), DePTConfig(prompt_length=3, rank=2, max_length=16, prompt_init="vocab", seed=seed)
    )
    randomize_update(dm, seed=seed)
    opt = torch.optim.SGD([p for p in dm.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    dm(input_ids=ids, labels=torch.tensor(labels)).loss.backward()
    opt.step()
    return dm


def test_each_adapter_keeps_its_own_classification_head(tmp_path):
    base = tiny_bert_classifier()
    first, second = trained_classifier(base, [0, 1], seed=1), trained_classifier(base, [2, 2], seed=2)
    first.save_pretrained(tmp_path / "first")
    second.save_pretrained(tmp_path / "second")
    dm = DePTModel.from_pretrained(copy.deepcopy(base), tmp_path / "first", adapter_name="first")
    dm.load_adapter(tmp_path / "second", adapter_name="second")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0], [12, 13, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        mixed = dm(input_ids=ids, attention_mask=mask, adapter_names=["first", "second", "__base__"]).logits
        for row, reference in ((0, first), (1, second), (2, None)):
            n = int(mask[row].sum())
            model = base if reference is None else reference
            alone = model(input_ids=ids[row : row + 1, :n]).logits
            torch.testing.assert_close(mixed[row], alone[0], atol=1e-5, rtol=1e-5)
    # Saving both writes each adapter's own head, not the last one loaded.
    dm.save_pretrained(tmp_path / "both")
    again = DePTModel.from_pretrained(copy.deepcopy(base), tmp_path / "both" / "second", adapter_name="x")
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids[:1]).logits, second(input_ids=ids[:1]).logits)
    # A frozen adapter has a frozen head.
    assert not any(p.requires_grad for p in dm.adapters["second"].parameters())


def test_classifier_head_trains_with_its_adapter_only():
    dm = DePTModel(tiny_bert_classifier(), CFG)
    dm(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([1])).loss.backward()
    head = dict(dm.adapters["default"].named_parameters())
    assert any(name.startswith("head.") for name in head)
    assert all(p.grad is not None for name, p in head.items() if name.startswith("head."))
    assert not any(p.requires_grad for p in dm.base_model.parameters())


def test_a_model_without_adapters_says_what_to_do():
    dm = DePTModel(tiny_llama())
    with pytest.raises(ValueError, match="add_adapter"):
        dm(input_ids=torch.tensor([[5, 6]]))


def test_position_ids_are_refused_with_a_reason():
    dm = DePTModel(tiny_llama(), CFG)
    with pytest.raises(ValueError, match="position_ids"):
        dm(input_ids=torch.tensor([[5, 6]]), position_ids=torch.tensor([[0, 1]]))


def test_logits_shape_does_not_depend_on_labels():
    dm = DePTModel(tiny_llama(), CFG)
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = dm(input_ids=ids).logits
    with_labels = dm(input_ids=ids, labels=torch.tensor([[-100, -100, 7, 8]])).logits
    assert plain.shape == with_labels.shape == (1, 3 + 4, 100)
    assert dm(input_ids=ids, logits_to_keep=2).logits.shape == (1, 2, 100)


def test_prompt_and_update_inits_are_not_correlated():
    dm = DePTModel(tiny_llama(), DePTConfig(prompt_length=8, rank=4, max_length=64, prompt_init="random"))
    adapter = dm.adapters["default"]
    p, a = adapter.prompt_embeddings.detach().flatten()[:256], adapter.lora_embedding_A.detach().flatten()[:256]
    assert abs(float(torch.corrcoef(torch.stack([p, a]))[0, 1])) < 0.25
    # Same streams would also give the same signs far more often than chance.
    assert float(((p > 0) == (a > 0)).float().mean()) < 0.65


def test_max_length_is_checked_per_adapter_group():
    dm = DePTModel(
        tiny_llama(), DePTConfig(prompt_length=2, rank=2, max_length=16, prompt_init="vocab"), adapter_name="long"
    )
    dm.add_adapter("short", DePTConfig(prompt_length=2, rank=2, max_length=4, prompt_init="vocab"))
    randomize_update(dm, "long")
    randomize_update(dm, "short", seed=2)
    ids = torch.tensor([list(range(5, 15)), [0] * 7 + [20, 21, 22]])
    mask = (ids != 0).long()
    with torch.no_grad():
        mixed = dm(input_ids=ids, attention_mask=mask, adapter_names=["long", "short"]).logits
        alone = dm(input_ids=ids[1:, 7:], adapter_names=["short"]).logits
    torch.testing.assert_close(mixed[1, -3:], alone[0, -3:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_length of 4"):
        dm(input_ids=ids, attention_mask=mask, adapter_names=["short", "long"])


def test_forward_and_generate_raise_no_deprecation_warnings(caplog):
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process: let it warn again here
    for backbone in (tiny_llama(), tiny_t5()):
        dm = DePTModel(backbone, CFG)
        ids, mask = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
            warnings.simplefilter("always")
            extra = {"decoder_input_ids": torch.tensor([[0, 3]] * 2)} if dm.kind == "seq2seq" else {}
            dm(input_ids=ids, attention_mask=mask, **extra)
            dm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "deprecat" in m.lower() or "past_key_values" in m], messages
