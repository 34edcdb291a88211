"""One benchmark run: plan the workloads, time every method interleaved in this process, measure
memory in probe processes, then hand the results to the report step.

Precision: `bf16` stores the frozen backbone in bfloat16 and runs under bf16 autocast; the
trainable parameters stay fp32. A training step is forward + backward + gradient clipping + AdamW
step; inference is one scoring forward with labels; generation is greedy decoding of a fixed
number of new tokens.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dept._extras import requires
from dept.bench.memory import measure_memory, release_memory
from dept.bench.methods import BenchMethod, build_method, generate, score, train_step
from dept.bench.options import METHOD_LABELS, REFERENCE, BenchOptions, Workload, options_to_dict
from dept.bench.report import write_report
from dept.bench.targets import load_targets
from dept.bench.timing import primary_clock, summarize, time_interleaved, workload_ratios
from dept.bench.workloads import Batch, build_backbone, build_batches, plan_workloads
from dept.methods.baselines import LORA_TARGET_MODULES
from dept.precision import avoid_broken_attention_kernels, cpu_name, cpu_supports_bf16
from dept.runs.rundir import code_commit

logger = logging.getLogger(__name__)


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Plan, run every workload, write JSON/Markdown/PNG to opts.output_dir (with the targets
    checked when a targets file is given or sits in the output folder)."""
    with requires("bench"):
        import matplotlib  # noqa: F401  (fail before measuring, not after)
        import peft  # noqa: F401
    opts = dataclasses.replace(opts, targets=opts.targets_file())
    targets = load_targets(opts.targets)
    torch.set_flush_denormal(True)  # random weights can produce denormals; x86 runs them slowly
    try:
        return _run_workloads(opts, targets)
    finally:
        torch.set_flush_denormal(False)  # process-wide CPU state: leave the caller's process as it was


def _run_workloads(opts: BenchOptions, targets) -> dict[str, Any]:
    avoid_broken_attention_kernels()
    workloads, notes = plan_workloads(opts)
    if opts.quick:  # tiny models: one probe process per workload and one thread are plenty
        opts = dataclasses.replace(opts, threads=opts.threads or 1, new_tokens=min(opts.new_tokens, 4))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    results: dict[str, Any] = {
        "command": opts.command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "options": options_to_dict(opts),
        "lora_target_modules": LORA_TARGET_MODULES,
        "notes": notes,
        "workloads": [],
    }
    for workload in workloads:
        try:
            results["workloads"].append(run_workload(workload, opts))
        except (ImportError, OSError) as err:  # e.g. the SmolLM2 weight package is not installed here
            logger.warning("Skipping %s: %s", workload.key, err)
            results["notes"].append(f"{workload.key} skipped: {type(err).__name__}: {str(err).splitlines()[0]}")
        release_memory(workload.device)
        write_report(results, Path(opts.output_dir), targets)  # after each workload: a killed run keeps them
    if not workloads:
        write_report(results, Path(opts.output_dir), targets)
    return results


def run_workload(workload: Workload, opts: BenchOptions) -> dict[str, Any]:
    """Time every method interleaved in this process, then measure memory in probe processes."""
    started = time.time()
    device, precision = workload.device, workload.precision
    logger.info("workload %s (%s, %d+%d steps)", workload.key, precision, workload.warmup, workload.steps)
    load_start = _loadavg()
    backbone, tokenizer, kind = build_backbone(workload.model, device, precision, opts.seed)
    batches, provenance = build_batches(workload, opts, kind, tokenizer, backbone)
    batches = [b.to(device) for b in batches]
    facts = _model_facts(backbone, kind)
    methods, build_errors = _build_methods(opts.methods, backbone, kind, opts)
    if REFERENCE not in methods:
        raise RuntimeError(f"The reference method {REFERENCE!r} could not be built: {build_errors.get(REFERENCE)}")

    phases: dict[str, tuple] = {}
    phases["train"] = time_interleaved(
        methods, batches, workload.warmup, lambda m, b: train_step(m, b, device, precision), device, "train"
    )
    phases["infer"] = time_interleaved(
        methods, batches, workload.warmup, lambda m, b: score(m, b, device, precision), device, "infer"
    )
    gen_steps = opts.gen_steps or max(2, workload.steps // 2)
    gen_batches = batches[: min(len(batches), workload.warmup + gen_steps)]
    phases["gen"] = time_interleaved(
        methods, gen_batches, workload.warmup,
        lambda m, b: generate(m, b, device, precision, opts.new_tokens), device, "gen",
    )  # fmt: skip
    clock = primary_clock(device)
    trainable = {k: m.trainable for k, m in methods.items()}
    labels = {k: m.label for k, m in methods.items()}
    rank = next(iter(methods.values())).extra["rank"]
    del methods
    release_memory(device)
    memory = measure_memory(workload, opts.methods, opts)
    result = {
        "key": workload.key,
        "workload": dataclasses.asdict(workload),
        "model": facts,
        "dept_rank": rank,
        "data": provenance,
        "tokens": _token_facts(batches, kind, opts),
        "gen_new_tokens": opts.new_tokens,
        "clock": clock,
        "methods": _method_results(
            opts.methods, labels, trainable, phases, memory, build_errors, workload, opts, clock
        ),
        "loadavg": {"start": load_start, "end": _loadavg()},
        "seconds": time.time() - started,
    }
    result["ratios"] = workload_ratios(result)
    return result


def _build_methods(
    keys: Sequence[str], backbone: nn.Module, kind: str, opts: BenchOptions
) -> tuple[dict[str, BenchMethod], dict[str, str]]:
    methods: dict[str, BenchMethod] = {}
    errors: dict[str, str] = {}
    for key in keys:
        try:
            methods[key] = build_method(key, backbone, kind, opts, private_copy=True)
        except Exception as err:  # reported as this method's row; the others still run
            logger.warning("Could not build %s: %s", key, err)
            errors[key] = f"{type(err).__name__}: {err}"
    return methods, errors


def _method_results(
    keys: Sequence[str], labels: dict, trainable: dict, phases: dict, memory: dict, build_errors: dict,
    workload: Workload, opts: BenchOptions, clock: str,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    batch_size = workload.batch_size
    for key in keys:
        if key in build_errors:
            out[key] = {"label": METHOD_LABELS[key], "error": build_errors[key]}
            continue
        entry: dict[str, Any] = {"label": labels[key], "trainable_params": trainable[key], "errors": {}}
        for phase, (wall, cpu, errors) in phases.items():
            entry[f"{phase}_wall_s"] = summarize(wall[key])
            entry[f"{phase}_cpu_s"] = summarize(cpu[key])
            if key in errors:
                entry["errors"][phase] = errors[key]
        train, gen = entry[f"train_{clock}_s"], entry[f"gen_{clock}_s"]
        entry["train_samples_per_s"] = batch_size / train["median"] if train else None
        entry["gen_tokens_per_s"] = batch_size * opts.new_tokens / gen["median"] if gen else None
        entry["memory"] = memory.get(key, {})
        out[key] = entry
    return out


def _model_facts(model: nn.Module, kind: str) -> dict[str, Any]:
    cfg = model.config
    return {
        "kind": kind,
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": model.get_input_embeddings().weight.shape[1],
        "layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None),
        "vocab_size": model.get_input_embeddings().weight.shape[0],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def _token_facts(batches: Sequence[Batch], kind: str, opts: BenchOptions) -> dict[str, Any]:
    rows = sum(b.input_ids.shape[0] for b in batches)
    padded = statistics.mean(b.input_ids.shape[1] for b in batches)
    return {
        "mean_real_tokens_per_row": sum(b.real_tokens for b in batches) / rows,
        "mean_padded_length": padded,
        "model_length_pt": padded + opts.budget_tokens,
        "model_length_dept": padded + opts.prompt_length,
        "note": "encoder input (source + eos)" if kind == "seq2seq" else "source + label word + eos, left-padded",
    }


def machine_facts() -> dict[str, Any]:
    import peft
    import transformers

    facts: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "dept_commit": code_commit(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def _loadavg() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
