"""Training mechanics: gradients, checkpointing, the two learning rates."""

import pytest
import torch

from dept import DePTConfig, DePTModel
from dept.core.loss import logits_needed
from dept.core.optim import create_optimizer, create_scheduler

from conftest import batch, randomize_update, tiny_llama, tiny_t5

CFG = DePTConfig(prompt_length=4, rank=2, max_length=16, prompt_init="vocab")


def loss_of(dm, ids, mask):
    labels = ids.masked_fill(mask == 0, -100)
    if dm.kind == "seq2seq":
        return dm(input_ids=ids, attention_mask=mask, labels=labels).loss
    labels[:, :2] = -100  # source tokens carry no loss
    return dm(input_ids=ids, attention_mask=mask, labels=labels).loss


def grads(dm):
    dm.zero_grad()
    ids, mask = batch()
    loss_of(dm, ids, mask).backward()
    return {n: p.grad.clone() for n, p in dm.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_gives_the_same_gradients(backbone):
    dm = DePTModel(backbone, CFG)
    randomize_update(dm)
    dm.train()
    plain = grads(dm)
    dm.gradient_checkpointing_enable()
    checkpointed = grads(dm)
    assert getattr(backbone, "is_activation_checkpointing", None) or backbone.is_gradient_checkpointing
    assert set(plain) == set(checkpointed) and len(plain) == 3
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)
        assert plain[name].abs().sum() > 0, name


def test_causal_loss_equals_full_logit_loss():
    """Computing logits only where labels are must not change the loss."""
    dm = DePTModel(tiny_llama(), CFG)
    randomize_update(dm)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])  # left-padded, as the data helpers do
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    keep = logits_needed(labels)
    out = dm(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=keep)
    full = dm(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape[1] == keep < full.logits.shape[1]
    torch.testing.assert_close(out.logits, full.logits[:, -keep:])
    torch.testing.assert_close(out.loss, full.loss)
    slots = dm.prompted_inputs(ids, mask).carry(labels, -100)
    reference = torch.nn.functional.cross_entropy(
        full.logits[:, :-1].reshape(-1, 100), slots[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, reference)
    with pytest.raises(ValueError, match="logits_to_keep"):
        dm(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=keep - 1)


def test_two_learning_rates_and_warmup():
    dm = DePTModel(tiny_t5(), CFG)
    opt = create_optimizer(dm, lr_prompt=0.3, lr_lowrank=1e-4)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 1e-4]
    assert opt.param_groups[0]["params"][0] is dm.adapters["default"].prompt_embeddings
    assert opt.defaults["eps"] == 1e-6 and all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    sched = create_scheduler(opt, warmup_steps=10, total_steps=100)
    assert opt.param_groups[0]["lr"] == 0.0
    for _ in range(10):
        opt.step()
        sched.step()
    assert abs(opt.param_groups[0]["lr"] - 0.3) < 1e-9 and abs(opt.param_groups[1]["lr"] - 1e-4) < 1e-12


def test_a_step_moves_only_the_adapter(backbone):
    dm = DePTModel(backbone, CFG)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    adapter = dm.adapters["default"]
    prompt0, b0 = adapter.prompt_embeddings.detach().clone(), adapter.lora_embedding_B.detach().clone()
    opt = create_optimizer(dm, 0.3, 1e-2)
    ids, mask = batch()
    loss_of(dm, ids, mask).backward()
    opt.step()
    assert not torch.equal(prompt0, adapter.prompt_embeddings) and not torch.equal(b0, adapter.lora_embedding_B)
    assert all(torch.equal(before[n], p) for n, p in backbone.named_parameters())


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_classifier_head_trains_in_fp32_on_a_bf16_backbone(arch, tmp_path):
    """A head copied from a bf16 backbone and trained at the low-rank rate (1e-5 on SmolLM2) never moved:
    below bf16's resolution. It is fp32, in its own parameter group, and reloads bit-identically."""
    from dept.options import MethodOptions

    from conftest import tiny_bert_classifier
    from tiny import make_tiny_llama

    def backbone():
        model = (
            tiny_bert_classifier()
            if arch == "bert"
            else make_tiny_llama(classification=True, num_labels=3, pad_token_id=0)
        )
        return model.to(torch.bfloat16)

    dm = DePTModel(backbone(), DePTConfig(prompt_length=3, rank=2, max_length=16, prompt_init="random"))
    head = dm.adapters["default"].head
    assert [p.dtype for p in head.parameters()] and all(p.dtype == torch.float32 for p in head.parameters())
    before = {k: v.clone() for k, v in head.state_dict().items()}
    optimizer = create_optimizer(dm, lr_prompt=0.8, lr_lowrank=1e-5)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == {"prompt": 0.8, "lowrank": 1e-5, "head": MethodOptions.lr_head}
    ids = torch.randint(5, 90, (4, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 2, 1])).loss
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in head.state_dict().items())
    dm.save_pretrained(tmp_path)
    again = DePTModel.from_pretrained(backbone(), tmp_path).adapters["default"].head.state_dict()
    for key, value in head.state_dict().items():
        assert again[key].dtype == torch.float32 and torch.equal(again[key], value), key
