"""generate() rides on the backbone's own generate with the KV cache."""

import torch

from dept import DePTConfig, DePTModel

from conftest import randomize_update


def test_first_step_logits_equal_forward(backbone):
    dm = DePTModel(backbone, DePTConfig(prompt_length=4, rank=2, max_length=16, prompt_init="vocab"))
    randomize_update(dm)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    gen = dm.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=3,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        if dm.kind == "seq2seq":
            start = torch.full((2, 1), backbone.config.decoder_start_token_id)
            expected = dm(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, -1]
        else:
            expected = dm(input_ids=ids, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(gen.logits[0], expected, atol=1e-5, rtol=1e-5)


def test_padded_batch_equals_batch_of_one(backbone):
    dm = DePTModel(backbone, DePTConfig(prompt_length=4, rank=2, max_length=16, prompt_init="vocab"))
    randomize_update(dm)
    rows = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    width = max(map(len, rows))
    for side in ("left", "right"):

        def pad(r, side=side):
            return [0] * (width - len(r)) + r if side == "left" else r + [0] * (width - len(r))

        ids = torch.tensor([pad(r) for r in rows])
        mask = torch.tensor([pad([1] * len(r)) for r in rows])
        batched = dm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        for i, row in enumerate(rows):
            alone = dm.generate(input_ids=torch.tensor([row]), max_new_tokens=8, do_sample=False)
            assert batched[i].tolist() == alone[0].tolist(), side
