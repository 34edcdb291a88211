"""A DePTModel under transformers.Trainer and TRL's SFTTrainer: the same adapter as dept's own loop on
the same batches, checkpoints that hold the adapter only, resume equal to an uninterrupted run."""

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import SequentialSampler

pytest.importorskip("trl")

from transformers import TrainerCallback, TrainingArguments  # noqa: E402

from dept.backbones import load_backbone  # noqa: E402
from dept.core.model import DePTModel  # noqa: E402
from dept.integrations.trainer import DePTSFTTrainer, DePTTrainer, collator  # noqa: E402
from dept.options import MethodOptions  # noqa: E402
from dept.runs.train import Run, TrainOptions, batch_rows  # noqa: E402

from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer  # noqa: E402

STEPS, BATCH = 4, 4
RATES = {"lr_prompt": 0.05, "lr_lowrank": 0.02}
# Trainer's resume state next to the adapter; no file of the backbone's.
CHECKPOINT_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.json"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state: a bf16 Trainer would leave its mixed precision to the next."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module", params=["causal", "seq2seq"])
def setup(request, tmp_path_factory):
    """A tiny backbone folder (no dropout, so both loops see the same function) and a sentiment CSV."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "causal":
        make_tiny_llama(root / "model", tokenizer=make_tiny_tokenizer(root / "model"))
    else:
        tok = make_tiny_tokenizer(root / "model", pad_token="<pad>", add_eos=True)
        make_tiny_t5(root / "model", tokenizer=tok, dropout_rate=0.0)
    words = ["great", "terrible", "wonderful", "boring", "good", "bad"]
    rows = ["text,label"] + [f"the movie was {words[i % 6]} {i},{'pos' if i % 2 == 0 else 'neg'}" for i in range(40)]
    (root / "task.csv").write_text("\n".join(rows) + "\n")
    return root


def dept_run(root, out) -> Run:
    method = MethodOptions(method="dept", prompt_length=4, rank=2, max_length=32, prompt_init="vocab", **RATES)
    opts = TrainOptions(
        task=f"csv:{root / 'task.csv'}", task_options={"text_fields": ["text"], "label_field": "label"},
        model=str(root / "model"), output_dir=str(out), max_steps=STEPS, batch_size=BATCH, eval_every=STEPS,
        eval_samples=4, test=False, precision="fp32", seed=0, warmup_steps=1, method=method,
    )  # fmt: skip
    return Run(opts)


def wrapped_like(run: Run, state: dict) -> tuple[DePTModel, object]:
    """A fresh backbone with the run's adapter at `state`."""
    backbone, tokenizer = load_backbone(run.opts.model)
    model = DePTModel(backbone, run.unwrapped.adapters["default"].config, tokenizer=tokenizer)
    model.adapters["default"].load_state_dict(state)
    return model, tokenizer


def arguments(out, **overrides) -> TrainingArguments:
    base = dict(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH, lr_scheduler_type="linear",
        warmup_steps=1, adam_epsilon=1e-6, weight_decay=0.0, max_grad_norm=1.0, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=100, seed=0, disable_tqdm=True,
    )  # fmt: skip
    base.update(overrides)
    return TrainingArguments(**base)


class InOrder(DePTTrainer):
    """The batches in the order given (dept's own loop drew them)."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset or self.train_dataset)


def adapter_of(model: DePTModel) -> dict:
    return {k: v.detach().clone() for k, v in model.adapters["default"].state_dict().items()}


def test_trainer_reaches_the_adapter_of_dept_s_own_loop_on_the_same_batches(setup, tmp_path):
    run = dept_run(setup, tmp_path / "dept")
    start = adapter_of(run.unwrapped)
    order = [i for step in range(STEPS) for i in batch_rows(step, 0, run.opts, len(run.encoded), 0, 1)]
    batches = [run.encoded[i] for i in order]
    run.fit()
    ours = load_file(tmp_path / "dept" / "best" / "adapter_model.safetensors")

    model, tokenizer = wrapped_like(run, start)
    trainer = InOrder(model=model, args=arguments(tmp_path / "hf"), train_dataset=batches,
                      data_collator=collator(tokenizer, model), **RATES)  # fmt: skip
    trainer.train()
    theirs = adapter_of(model)
    assert set(ours) == set(theirs)
    for name in ours:
        assert not torch.equal(theirs[name], start[name]), name  # it trained
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0, 0.0]  # the linear schedule ran out
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [RATES["lr_prompt"], RATES["lr_lowrank"]]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_checkpoints_hold_the_adapter_only_and_resume_equals_an_uninterrupted_run(setup, tmp_path):
    run = dept_run(setup, tmp_path / "dept")
    start, data = adapter_of(run.unwrapped), run.encoded
    run.close()

    def trainer(out, **extra):
        model, tokenizer = wrapped_like(run, start)
        args = arguments(out, save_strategy="steps", save_steps=2)
        return DePTTrainer(model=model, args=args, train_dataset=data, data_collator=collator(tokenizer, model),
                           **RATES, **extra)  # fmt: skip

    whole = trainer(tmp_path / "whole")
    whole.train()
    cut = trainer(tmp_path / "cut", callbacks=[StopAt(2)])
    cut.train()  # a run killed after its step-2 checkpoint
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert ADAPTER_FILES <= files and CHECKPOINT_FILES <= files
    assert not {f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth"))} - {
        "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
    }  # fmt: skip
    weights = load_file(checkpoint / "adapter_model.safetensors")
    assert sum(t.numel() for t in weights.values()) == whole.model.num_trainable_parameters()
    assert DePTModel.from_pretrained(load_backbone(run.opts.model)[0], checkpoint).adapters["default"] is not None

    resumed = trainer(tmp_path / "cut")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == STEPS
    for name, value in adapter_of(whole.model).items():
        torch.testing.assert_close(adapter_of(resumed.model)[name], value, rtol=0, atol=0, msg=name)


def test_sft_trainer_trains_on_completions_with_the_offsets_on_the_prompt(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    tok = make_tiny_tokenizer(tmp_path / "model")
    tok.pad_token = tok.eos_token
    make_tiny_llama(tmp_path / "model", tokenizer=tok)
    backbone, tokenizer = load_backbone(str(tmp_path / "model"))
    from dept.core.config import DePTConfig

    model = DePTModel(backbone, DePTConfig(prompt_length=4, rank=2, max_length=32, prompt_init="vocab"))
    pairs = [{"prompt": f"the movie was {w} {i}.", "completion": f" {'pos' if i % 2 else 'neg'}"}
             for i, w in enumerate(["great", "bad", "fine", "dull"] * 4)]  # fmt: skip
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=4, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_length=32, disable_tqdm=True)  # fmt: skip
    trainer = DePTSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer, **RATES)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] != -100).sum() < batch["attention_mask"].sum()  # the prompt is not a target
    with torch.no_grad():  # TRL's fused head on the backbone computes dept's own loss
        fused = trainer.compute_loss(model, dict(batch))
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(fused, ours, rtol=1e-5, atol=1e-6)
    trainer.train()
    b = model.adapters["default"].lora_embedding_B
    assert b.abs().sum() > 0  # B starts at zero: only offsets on source tokens could move it
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_activation_checkpointing_and_bf16_train_under_the_trainer(setup, tmp_path):
    run = dept_run(setup, tmp_path / "dept")
    start, data = adapter_of(run.unwrapped), run.encoded
    run.close()
    model, tokenizer = wrapped_like(run, start)
    args = arguments(tmp_path / "hf", max_steps=2, activation_checkpointing=True, bf16=True, logging_steps=1)
    trainer = DePTTrainer(model=model, args=args, train_dataset=data, data_collator=collator(tokenizer, model), **RATES)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    assert not torch.equal(adapter_of(model)["prompt_embeddings"], start["prompt_embeddings"])


def test_the_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    import re

    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### transformers.Trainer and TRL") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"smollm2-135m"' in code
    make_tiny_llama(tmp_path / "model", tokenizer=make_tiny_tokenizer(tmp_path / "model"), max_position_embeddings=512)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace('"smollm2-135m"', repr(str(tmp_path / "model"))), "README", "exec"), namespace)
    files = {p.name for p in (tmp_path / "out" / "trainer" / "checkpoint-20").iterdir()}
    assert "adapter_model.safetensors" in files and not any(f.startswith(("model", "pytorch_model")) for f in files)


def test_accelerate_launch_trains_on_two_processes(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    make_tiny_llama(tmp_path / "model", tokenizer=make_tiny_tokenizer(tmp_path / "model"))
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29519", str(REPO_ROOT / "tests" / "trainer_script.py"),
           str(tmp_path / "model"), str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world_size=2" in done.stdout
    files = {p.name for p in (tmp_path / "out" / "checkpoint-3").iterdir()}
    assert ADAPTER_FILES <= files and not any(f.startswith(("model", "pytorch_model")) for f in files)
