"""`dept bench`: the quick path end to end, plus the pieces whose correctness the figures rest on
(same batches for every method, paired ratios, target evaluation). Nothing here asserts speed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dept.bench import memory, methods, targets, timing, workloads
from dept.bench.options import DEFAULT_METHODS, BenchOptions, Workload
from dept.bench.runner import run_bench

from conftest import REPO_ROOT

TARGETS = targets.load_targets(REPO_ROOT / "benchmarks" / "efficiency" / "targets.json")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    opts = BenchOptions(
        quick=True,
        output_dir=out,
        data_dir=None,
        command="dept bench --quick",
        targets=REPO_ROOT / "benchmarks" / "efficiency" / "targets.json",
    )
    return run_bench(opts), out


def test_quick_run_writes_every_output(quick_results):
    _, out = quick_results
    for name in ("results.json", "results.md", "ratios.png", "scaling.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert "## Targets" in markdown and "dept bench --quick" in markdown


def test_quick_json_has_ratios_for_every_method(quick_results):
    _, out = quick_results
    results = json.loads((out / "results.json").read_text())
    assert {w["workload"]["model"] for w in results["workloads"]} == {"tiny", "tiny-t5"}
    for workload in results["workloads"]:
        assert set(workload["methods"]) == set(DEFAULT_METHODS)
        assert set(workload["ratios"]) == set(DEFAULT_METHODS)
        for key, ratios in workload["ratios"].items():
            for name in ("train_step", "infer_latency", "gen_time", "train_added_mem", "infer_added_mem"):
                assert ratios[name] is not None and math.isfinite(ratios[name]) and ratios[name] > 0, (key, name)
        assert workload["ratios"]["pt"]["train_step"] == pytest.approx(1.0)
        for entry in workload["methods"].values():
            assert entry["train_wall_s"]["n"] == workload["workload"]["steps"]
            assert entry["memory"]["train_added_mb"] is not None
    names = {t["name"] for t in results["targets"]}
    assert {"train_time", "train_memory", "infer_time", "infer_memory", "dept_overhead", "pt_vs_peft"} <= names


def test_trainable_parameter_budget_is_matched():
    opts = BenchOptions()
    # SmolLM2: d=576, s=256, l=100, m=60 -> r = floor(40*576/832) = 27; T5-base gives the paper's r=30
    assert methods.dept_rank(opts, 576) == 27
    assert methods.dept_rank(opts, 768) == 30


def test_every_method_sees_the_same_batches():
    opts = BenchOptions(data_dir=None)
    workload = Workload("tiny", "sst2", batch_size=4, steps=2, warmup=1)
    model, tok, kind = workloads.build_backbone("tiny", "cpu", "fp32")
    first, _ = workloads.build_batches(workload, opts, kind, tok, model)
    again, _ = workloads.build_batches(workload, opts, kind, tok, model)
    assert len(first) == 3
    for a, b in zip(first, again):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


def test_causal_batch_is_left_padded_with_loss_on_the_target_only():
    batch = workloads.make_batch(
        [([5, 6, 7], [9]), ([8], [10, 11])], "causal", pad_id=0, eos_id=1, max_length=256, pad_to=None
    )
    assert batch.input_ids.tolist() == [[5, 6, 7, 9, 1], [0, 8, 10, 11, 1]]
    assert batch.labels.tolist() == [[-100, -100, -100, 9, 1], [-100, -100, 10, 11, 1]]
    assert batch.gen_input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    padded = workloads.make_batch([([5, 6, 7], [9])], "causal", 0, 1, max_length=8, pad_to=8)
    assert padded.input_ids.shape == (1, 8) and int(padded.attention_mask.sum()) == 5


def test_seq2seq_batch_puts_the_target_in_the_decoder():
    batch = workloads.make_batch(
        [([5, 6, 7], [9]), ([8], [10, 11])], "seq2seq", pad_id=0, eos_id=1, max_length=256, pad_to=None
    )
    assert batch.input_ids.tolist() == [[5, 6, 7, 1], [8, 1, 0, 0]]
    assert batch.labels.tolist() == [[9, 1, -100], [10, 11, 1]]


def test_paired_ratio_cancels_per_round_drift():
    slow_machine = [1.0, 2.0, 4.0]  # the machine slows down round by round
    assert timing.paired_ratio([0.7 * t for t in slow_machine], slow_machine)["median"] == pytest.approx(0.7)
    assert timing.round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert timing.round_order(["a", "b", "c"], 1) == ["c", "b", "a"]


def _fake_workload(model, dept_ratio, lengths="sst2", bs=8):
    times = [1.0, 1.1, 0.9]
    return {
        "key": f"{model}/{lengths}/bs{bs}/cpu",
        "workload": {"model": model, "lengths": lengths, "batch_size": bs, "device": "cpu"},
        "methods": {
            "pt": {"train_wall_s": {"samples": times}},
            "dept": {"train_wall_s": {"samples": [t * dept_ratio for t in times]}},
        },
        "ratios": {"dept": {"train_step": dept_ratio}},
        "clock": "wall",
    }


def test_scaling_target_passes_when_the_saving_grows_and_fails_when_it_shrinks():
    growing = [_fake_workload("t5-small", 0.8), _fake_workload("t5-base", 0.75), _fake_workload("t5-large", 0.7)]
    check = targets.scaling_checks(growing, TARGETS["scaling"])[0]
    assert check["status"] == "pass" and check["series"]["t5-large"] == 0.7
    shrinking = [_fake_workload("t5-small", 0.7), _fake_workload("t5-base", 0.75), _fake_workload("t5-large", 0.8)]
    assert targets.scaling_checks(shrinking, TARGETS["scaling"])[0]["status"] == "fail"
    assert targets.scaling_checks([], TARGETS["scaling"])[0]["status"] == "not run"


def test_headline_targets_are_read_from_the_smollm2_sst2_workload():
    w = _fake_workload("smollm2-135m", 0.6, bs=16)
    w["methods"]["pt"]["memory"] = {"train_added_mb": 100.0, "infer_added_mb": 100.0}
    w["methods"]["dept"]["memory"] = {"train_added_mb": 70.0, "infer_added_mb": 90.0}
    checks = {t["name"]: t for t in targets.evaluate_targets([w], TARGETS)}
    assert checks["train_time"]["status"] == "pass" and checks["train_time"]["value"] == pytest.approx(0.6)
    assert checks["train_memory"]["status"] == "pass" and checks["train_memory"]["value"] == pytest.approx(0.7)
    assert checks["infer_memory"]["status"] == "fail"
    assert checks["dept_overhead"]["status"] == "not run"  # no pt_m in this fake run


def test_without_a_targets_file_the_report_gives_ratios_only(tmp_path):
    from dept.bench.report import NO_TARGETS, render_markdown

    assert targets.evaluate_targets([_fake_workload("smollm2-135m", 0.6, bs=16)], None) == []
    assert BenchOptions(output_dir=tmp_path).targets_file() is None
    (tmp_path / "targets.json").write_text("{}")
    assert BenchOptions(output_dir=tmp_path).targets_file() == tmp_path / "targets.json"  # lives with the results
    machine = {
        "cpu": "x",
        "cpu_count": 1,
        "torch_threads": 1,
        "torch": "t",
        "transformers": "t",
        "peft": "p",
        "python": "3",
    }
    markdown = render_markdown({"command": "c", "date": "d", "machine": machine, "workloads": [], "targets": []})
    assert NO_TARGETS in markdown


def test_options_reject_unknown_names():
    with pytest.raises(ValueError, match="--methods"):
        BenchOptions(methods=("pt", "prefix"))
    with pytest.raises(ValueError, match="must include"):
        BenchOptions(methods=("dept",))
    with pytest.raises(ValueError, match="--model"):
        BenchOptions(models=("gpt2",))


def test_memory_meter_sees_an_allocation():
    meter = memory.MemoryMeter("cpu")
    memory.release_memory("cpu")
    meter.reset_peak()
    before = meter.current_mb()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert meter.peak_mb() - before > 50
    del block


def _lm_head_inputs(dm):
    """Record every input the backbone's output projection sees."""
    seen = []
    dm.base_model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    return seen


def test_loss_logits_reach_the_output_projection_contiguous():
    """Regression guard for the CPU slowdown the benchmark found: a non-contiguous
    hidden[:, -k:] into a frozen linear runs as a bmm over a batch-expanded weight copy."""
    from dept import DePTConfig, DePTModel
    from dept.core.loss import keep_positions, logits_needed

    from conftest import tiny_llama

    assert keep_positions(1, 10, "cpu") == 1 and keep_positions(10, 10, "cpu") == 10
    assert keep_positions(3, 10, "cpu").tolist() == [7, 8, 9]
    dm = DePTModel(tiny_llama(), DePTConfig(prompt_length=4, rank=2, max_length=16, prompt_init="vocab"))
    seen = _lm_head_inputs(dm)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
    mask = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    out = dm(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=logits_needed(labels))
    assert seen[-1].shape[1] == 3 and seen[-1].is_contiguous()
    full = dm(input_ids=ids, attention_mask=mask, logits_to_keep=0).logits
    torch.testing.assert_close(out.logits, full[:, -3:])
    seen.clear()
    dm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert seen and all(x.is_contiguous() for x in seen)
