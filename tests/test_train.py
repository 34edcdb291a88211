"""`dept train` end to end on a tiny model: resume after a kill, 2 processes vs 1, results files."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import dept.runs.rundir
from dept.options import MethodOptions
from dept.runs.train import Run, TrainOptions, batch_rows

from conftest import DATA_DIR
from tiny import make_tiny_llama, make_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny Llama + tokenizer folder and a small sentiment CSV task (single-token labels)."""
    root = tmp_path_factory.mktemp("tiny")
    tok = make_tiny_tokenizer(root / "model", add_eos=False)
    make_tiny_llama(root / "model", tokenizer=tok)
    rows = ["text,label"]
    words = ["great", "terrible", "wonderful", "boring", "good", "bad"]
    for i in range(48):
        word = words[i % len(words)]
        rows.append(f"the movie was {word} {i},{'pos' if i % 2 == 0 else 'neg'}")
    (root / "task.csv").write_text("\n".join(rows) + "\n")
    return root


def options(root, out, **overrides) -> TrainOptions:
    base = dict(
        task=f"csv:{root / 'task.csv'}",
        task_options={"text_fields": ["text"], "label_field": "label"},
        model=str(root / "model"),
        output_dir=str(out),
        max_steps=6,
        batch_size=4,
        eval_every=3,
        eval_samples=4,
        test_samples=4,
        precision="fp32",
        seed=3,
        warmup_steps=2,
        method=MethodOptions(
            method="dept", prompt_length=4, rank=2, max_length=32, prompt_init="vocab", lr_prompt=0.1, lr_lowrank=0.05
        ),
    )
    base.update(overrides)
    return TrainOptions(**base)


def adapter_tensors(folder):
    return load_file(folder / "model" / "adapter_model.safetensors")


def test_training_writes_results_curve_and_best_adapter(tiny_setup, tmp_path, monkeypatch):
    checkout = {"commit": "at-start"}
    monkeypatch.setattr(dept.runs.rundir, "code_commit", lambda: checkout["commit"])
    run = Run(options(tiny_setup, tmp_path, zero_shot=True))
    checkout["commit"] = "edited-mid-run"
    results = run.fit()
    assert results["commit"] == "at-start"  # the code the process runs, not the checkout when it ends
    assert results["steps"] == 6 and results["trainable_parameters"] > 0
    assert {"validation", "test", "zero_shot_validation", "zero_shot_test"} <= set(results)
    for name in (
        "results.json",
        "metrics.jsonl",
        "training_curve.png",
        "run.json",
        "best/adapter_config.json",
        "checkpoint/trainer_state.pt",
    ):
        assert (tmp_path / name).exists(), name
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in logged) and any("val_accuracy" in r for r in logged)
    norms = [r["grad_norm"] for r in logged if "loss" in r]  # before clipping: says whether the clip bites
    assert norms and all(math.isfinite(n) and n > 0 for n in norms)


def test_killed_run_resumes_to_the_same_adapter(tiny_setup, tmp_path, monkeypatch):
    Run(options(tiny_setup, tmp_path / "straight")).fit()

    saves = {"n": 0}
    original = Run._save_checkpoint

    def save_then_die(self):
        original(self)
        saves["n"] += 1
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(Run, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Run(options(tiny_setup, tmp_path / "killed")).fit()
    monkeypatch.setattr(Run, "_save_checkpoint", original)
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["step"] == 3
    Run(options(tiny_setup, tmp_path / "killed", resume=True)).fit()

    straight = adapter_tensors(tmp_path / "straight" / "checkpoint")
    resumed = adapter_tensors(tmp_path / "killed" / "checkpoint")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_keeps_zero_shot_and_logs_each_step_once(tiny_setup, tmp_path, monkeypatch):
    original = Run._log

    def log_then_die(self, record):
        original(self, record)
        if record["step"] == 5 and "loss" in record:
            raise KeyboardInterrupt("killed two steps after the checkpoint at step 3")

    monkeypatch.setattr(Run, "_log", log_then_die)
    with pytest.raises(KeyboardInterrupt):
        Run(options(tiny_setup, tmp_path, zero_shot=True, log_every=1)).fit()
    monkeypatch.setattr(Run, "_log", original)
    results = Run(options(tiny_setup, tmp_path, zero_shot=True, log_every=1, resume=True)).fit()

    assert {"zero_shot_validation", "zero_shot_test"} <= set(results)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_gradient_accumulation_equals_the_full_batch(tiny_setup, tmp_path):
    Run(options(tiny_setup, tmp_path / "full", max_steps=3)).fit()
    Run(options(tiny_setup, tmp_path / "accum", max_steps=3, batch_size=2, grad_accum=2)).fit()
    full, accum = adapter_tensors(tmp_path / "full" / "checkpoint"), adapter_tensors(tmp_path / "accum" / "checkpoint")
    for key in full:
        torch.testing.assert_close(full[key], accum[key], atol=1e-5, rtol=1e-4)


def test_early_stopping_and_transfer_init(tiny_setup, tmp_path):
    opts = options(tiny_setup, tmp_path / "src", max_steps=30, eval_every=1, patience=1)
    opts.method.lr_prompt = 1e-12  # next to nothing changes, so the second evaluation is no better
    opts.method.lr_lowrank = 1e-12
    results = Run(opts).fit()
    assert results["steps"] == 2
    transfer = options(tiny_setup, tmp_path / "dst", max_steps=1)
    transfer.method.init_from = str(tmp_path / "src" / "best")
    transfer.method.reset_lowrank_b = True
    run = Run(transfer)
    adapter = run.unwrapped.adapters["default"]
    source = load_file(tmp_path / "src" / "best" / "adapter_model.safetensors")
    assert torch.equal(adapter.prompt_embeddings.detach(), source["prompt_embeddings"])
    assert not adapter.lora_embedding_B.any() and adapter.prompt_embeddings.requires_grad


def test_non_finite_learning_rate_is_refused_before_loading(tiny_setup, tmp_path):
    opts = options(tiny_setup, tmp_path / "run")
    opts.method.lr_prompt = float("inf")
    with pytest.raises(ValueError, match="--lr-prompt must be a finite number above 0"):
        Run(opts)
    assert not (tmp_path / "run").exists()


def test_a_nan_mid_run_is_never_saved(tiny_setup, tmp_path):
    run = Run(options(tiny_setup, tmp_path, eval_every=1))
    step = run.optimizer.step

    def diverge(*args, **kwargs):
        step(*args, **kwargs)
        if run.state["step"] == 2:  # the third update goes wrong
            with torch.no_grad():
                run.unwrapped.adapters["default"].prompt_embeddings[0, 0] = float("nan")

    run.optimizer.step = diverge
    with pytest.raises(FloatingPointError, match=r"not finite .*diverged is .*checkpoint \(step 2\).*--resume"):
        run.fit()
    for folder in (tmp_path / "best", tmp_path / "checkpoint" / "model"):
        for key, tensor in load_file(folder / "adapter_model.safetensors").items():
            assert torch.isfinite(tensor).all(), (folder, key)
    assert Run(options(tiny_setup, tmp_path, eval_every=1, resume=True)).fit()["steps"] == 6  # the advice works


def test_resume_may_change_the_step_budget_and_learning_rates(tiny_setup, tmp_path, caplog):
    Run(options(tiny_setup, tmp_path)).fit()
    longer = options(tiny_setup, tmp_path, max_steps=8, resume=True)
    longer.method.lr_prompt = 0.2
    run = Run(longer)
    assert "max_steps 6 -> 8" in caplog.text and "method.lr_prompt 0.1 -> 0.2" in caplog.text
    assert run.fit()["steps"] == 8
    assert run.optimizer.param_groups[0]["initial_lr"] == 0.2


def test_save_every_checkpoints_without_evaluating(tiny_setup, tmp_path, monkeypatch):
    calls = {"eval": 0, "save": 0}
    evaluate, save = Run._eval_and_select, Run._save_checkpoint
    monkeypatch.setattr(
        Run, "_eval_and_select", lambda self: calls.__setitem__("eval", calls["eval"] + 1) or evaluate(self)
    )
    monkeypatch.setattr(
        Run, "_save_checkpoint", lambda self: calls.__setitem__("save", calls["save"] + 1) or save(self)
    )
    Run(options(tiny_setup, tmp_path, max_steps=4, eval_every=4, save_every=1)).fit()
    assert calls == {"eval": 1, "save": 4}


def test_truncation_is_one_warning_with_the_count(tiny_setup, tmp_path, caplog):
    opts = options(tiny_setup, tmp_path, max_steps=1)
    opts.method.max_length = 6
    Run(opts).fit()
    warnings = [r.getMessage() for r in caplog.records if "longer than max_length" in r.getMessage()]
    assert len(warnings) == 1 and "38 of 38 training rows" in warnings[0], warnings
    caplog.clear()
    Run(options(tiny_setup, tmp_path / "long", max_steps=1)).fit()
    assert "longer than max_length" not in caplog.text


def test_rank_above_the_hidden_size_is_refused_and_over_budget_warned(caplog):
    from dept.methods import METHODS

    dept_config = METHODS["dept"].config
    with pytest.raises(ValueError, match=r"above 32, the highest rank .* \(hidden size 32\)"):
        dept_config(MethodOptions(rank=40), hidden_size=32)
    with pytest.raises(ValueError, match=r"above 32, the highest rank"):
        METHODS["adept"].config(MethodOptions(method="adept", rank=40), hidden_size=32)
    dept_config(MethodOptions(rank=30, budget=10, prompt_length=4), hidden_size=32)
    assert "over the budget of 10 prompt tokens (320 parameters)" in caplog.text
    with pytest.raises(ValueError, match=r"--lora-rank 33 is above 32, the backbone's hidden size"):
        METHODS["lora"].build(MethodOptions(method="lora", lora_rank=33), make_tiny_llama(), None, "causal")


def test_data_order_is_the_same_for_any_number_of_processes():
    opts = TrainOptions(batch_size=4, seed=1)
    one = batch_rows(5, 0, opts, 10, 0, 1)
    two = batch_rows(5, 0, opts, 10, 0, 2) + batch_rows(5, 0, opts, 10, 1, 2)
    assert sorted(one) == sorted(two)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["dept", "pt"])
def test_two_processes_match_one(tiny_setup, tmp_path, method):
    """DDP on 2 CPU processes (gloo) with the same global batch gives the same adapter (for PT too:
    DDP fails on a trainable parameter that never reaches the loss)."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    common = [
        "train",
        "--task",
        f"csv:{tiny_setup / 'task.csv'}",
        "--text-fields",
        "text",
        "--label-field",
        "label",
        "--model",
        str(tiny_setup / "model"),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--eval-every",
        "4",
        "--eval-samples",
        "4",
        "--test-samples",
        "0",
        "--precision",
        "fp32",
        "--seed",
        "3",
        "--prompt-length",
        "4",
        "--rank",
        "2",
        "--max-length",
        "32",
        "--lr-prompt",
        "0.1",
        "--lr-lowrank",
        "0.05",
        "--warmup-steps",
        "1",
        "--method",
        method,
        "--budget",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single = [sys.executable, "-m", "dept.cli", *common, "--output-dir", str(tmp_path / "one")]
    # --multi_gpu is accelerate's torchrun-based launcher; dept picks gloo itself on a machine without CUDA.
    double = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        "-m",
        "dept.cli",
        *common,
        "--output-dir",
        str(tmp_path / "two"),
    ]
    for cmd in (single, double):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["processes"] == 2
    one = adapter_tensors(tmp_path / "one" / "checkpoint")
    two = adapter_tensors(tmp_path / "two" / "checkpoint")
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=1e-4)
    if method == "dept":
        assert not torch.equal(one["lora_embedding_B"], torch.zeros_like(one["lora_embedding_B"]))
    else:
        assert set(one) == {"prompt_embeddings"}


@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "glue" / "RTE" / "dev.tsv").is_file(), reason=f"no GLUE RTE files at {DATA_DIR}")
def test_seeds_score_the_same_examples_and_train_different_adapters(tiny_setup, tmp_path):
    """--seed moves initialisation and data order, never the paper split: RTE's dev set is halved by --split-seed."""
    runs, adapters = [], []
    for seed in (0, 1):
        opts = options(
            tiny_setup, tmp_path / f"seed-{seed}", task="glue/rte", task_options={}, data_dir=str(DATA_DIR), seed=seed
        )
        opts.method.prompt_init = "random"  # an init drawn from the seed, so the adapters differ from step 0
        opts.max_steps = opts.eval_every = 2
        run = Run(opts)
        runs.append(run)
        results = run.fit()
        assert results["split_seed"] == 42 and results["seed"] == seed
        assert json.loads((tmp_path / f"seed-{seed}" / "run.json").read_text())["split_seed"] == 42
        adapters.append(adapter_tensors(tmp_path / f"seed-{seed}" / "checkpoint"))
    for split in ("train_set", "val_set", "test_set"):
        texts = [[e.source for e in getattr(run, split)] for run in runs]
        assert texts[0] == texts[1], split
    assert not torch.equal(adapters[0]["prompt_embeddings"], adapters[1]["prompt_embeddings"])
    other = options(tiny_setup, tmp_path / "split-7", task="glue/rte", task_options={}, data_dir=str(DATA_DIR))
    other.split_seed = 7
    moved = Run(other)
    moved.close()
    assert [e.source for e in moved.test_set] != [e.source for e in runs[0].test_set]


def test_training_runs_the_backbone_with_its_dropout_on_and_scores_without(tiny_setup, tmp_path, monkeypatch):
    """As the official code: the frozen backbone's own dropout is on in training, off in evaluation."""
    import dept.runs.train
    import dept.scoring

    seen = {"train": [], "eval": []}
    monkeypatch.setattr(dept.runs.train, "lm_loss", _recording(dept.runs.train.lm_loss, seen["train"]))
    monkeypatch.setattr(dept.scoring, "rank_scores", _recording(dept.scoring.rank_scores, seen["eval"]))
    Run(options(tiny_setup, tmp_path)).fit()
    assert seen["train"] and all(seen["train"])
    assert seen["eval"] and not any(seen["eval"])


def _recording(function, log):
    def wrapper(model, *args, **kwargs):
        log.append(model.base_model.training)
        return function(model, *args, **kwargs)

    return wrapper
