"""Memory of each method, measured in a separate probe process.

Why a separate process: a process's peak RSS only ever grows, and the timing process holds every
method at once. The probe (`python -m dept.bench.memory SPEC OUT`) is a fresh interpreter: it loads
the backbone, warms the kernels up with one plain forward/backward, and records `backbone_mb`.
Then, per method: one unmeasured warm-up pass (lazy imports and kernel JIT are one-time costs, not
the method's memory), `gc` + `malloc_trim`, the baseline RSS, a reset of the kernel's peak counter
(writing 5 to /proc/self/clear_refs resets VmHWM), the measured steps, and VmHWM.
*added* = VmHWM − baseline: activations, gradients, optimizer state and the adapter.
*peak* = `backbone_mb` + added: the peak of a process that runs only this method. On a GPU the
probe reads `torch.cuda.max_memory_allocated` instead.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dept.bench.methods import MODIFIES_BACKBONE, BenchMethod, build_method, generate, score, train_step
from dept.bench.options import BenchOptions, Workload, options_from_dict, options_to_dict
from dept.bench.workloads import Batch, build_backbone, build_batches
from dept.precision import autocast, avoid_broken_attention_kernels

logger = logging.getLogger(__name__)

#: glibc: every allocation above 64 KiB gets its own mapping, unmapped when freed.
PROBE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}

_LIBC: Optional[ctypes.CDLL] = None


def release_memory(device: str) -> None:
    """Collect garbage and hand free heap back to the OS, so RSS reflects live tensors only."""
    global _LIBC
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return
    if sys.platform.startswith("linux"):
        try:
            _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim(0)
        except OSError:  # not glibc (e.g. musl): nothing to trim
            pass


def _proc_status_mb(field_name: str) -> Optional[float]:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class MemoryMeter:
    """Current and peak memory of this process: RSS on CPU (VmRSS / VmHWM, the peak reset through
    /proc/self/clear_refs), allocated bytes on CUDA."""

    def __init__(self, device: str):
        self.device = device
        self.cuda = device.startswith("cuda")

    def current_mb(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**20
        value = _proc_status_mb("VmRSS")
        if value is None:
            raise RuntimeError("Cannot read /proc/self/status: CPU memory probes need Linux; pass --no-memory.")
        return value

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
        except OSError as err:
            raise RuntimeError(
                f"Cannot reset the peak RSS through /proc/self/clear_refs ({err}); pass --no-memory."
            ) from err

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        value = _proc_status_mb("VmHWM")
        return value if value is not None else self.current_mb()


def _touch_parameters(model: nn.Module) -> None:
    """Read every weight once, so lazily mapped checkpoint pages are resident before a baseline."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.sum()


def _warm_kernels(model: nn.Module, batch: Batch, device: str, precision: str) -> None:
    """One plain forward/backward, so kernel caches and thread pools exist before the baseline."""
    ids, mask, labels = batch.input_ids[:2], batch.attention_mask[:2], batch.labels[:2]
    with autocast(device, precision):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    out.loss.backward()


def probe_memory(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Memory of each of `spec["methods"]`, measured in this (fresh) process.

    For each method: inference peak over `memory_steps` scoring forwards (the largest batches),
    generation peak over one generate call, training peak over `memory_steps` training steps (the
    first allocates AdamW's state). `*_hwm_mb` is the raw kernel counter, which also holds copies
    kept for other methods when one process measures several.
    """
    opts = options_from_dict(spec["options"])
    workload = Workload(**spec["workload"])
    device, precision = workload.device, workload.precision
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    backbone, tokenizer, kind = build_backbone(workload.model, device, precision, opts.seed)
    batches, _ = build_batches(workload, opts, kind, tokenizer, backbone)
    batches = sorted(batches, key=lambda b: b.input_ids.numel(), reverse=True)[: opts.memory_steps]
    batches = [b.to(device) for b in batches]
    _touch_parameters(backbone)
    _warm_kernels(backbone, batches[-1], device, precision)
    import peft  # noqa: F401  (imported before the baseline: module memory is not a method's)

    import dept.core.model  # noqa: F401
    import dept.core.optim  # noqa: F401

    meter = MemoryMeter(device)
    release_memory(device)
    backbone_mb = meter.current_mb()
    several = len(spec["methods"]) > 1
    results: dict[str, dict[str, Any]] = {}
    for key in spec["methods"]:
        results[key] = _probe_one(key, backbone, kind, batches, opts, workload, meter, several)
        results[key]["backbone_mb"] = backbone_mb
        for name in ("infer", "gen", "train"):
            if f"{name}_added_mb" in results[key]:
                results[key][f"{name}_peak_mb"] = backbone_mb + results[key][f"{name}_added_mb"]
    return results


def _run_all_phases(method: BenchMethod, batches: Sequence[Batch], workload: Workload, new_tokens: int) -> None:
    device, precision = workload.device, workload.precision
    score(method, batches[-1], device, precision)
    generate(method, batches[-1], device, precision, new_tokens)
    train_step(method, batches[-1], device, precision)


def _probe_one(
    key: str, backbone: nn.Module, kind: str, batches: Sequence[Batch], opts: BenchOptions,
    workload: Workload, meter: MemoryMeter, several: bool,
) -> dict[str, Any]:  # fmt: skip
    """Warm the method up once, throw it away, take the baseline, then build it afresh and measure.
    Methods that modify the backbone get a private copy when others will use it after them; the
    copy is made before the baseline, so it is not counted as the method's memory."""
    device, precision = workload.device, workload.precision
    modifies = key in MODIFIES_BACKBONE
    try:
        warm = build_method(key, copy.deepcopy(backbone) if modifies else backbone, kind, opts, private_copy=False)
        _run_all_phases(warm, batches, workload, opts.new_tokens)
        del warm
    except Exception as err:  # the measurement below records the failing phase
        logger.warning("memory probe warm-up of %s failed: %s", key, err)
    subject = copy.deepcopy(backbone) if modifies and several else backbone
    release_memory(device)
    base = meter.current_mb()
    out: dict[str, Any] = {"base_mb": base}
    method = build_method(key, subject, kind, opts, private_copy=False)

    def measure(name: str, action: Callable[[], None]) -> None:
        release_memory(device)
        meter.reset_peak()
        try:
            action()
        except Exception as err:  # recorded as this phase's error in the results
            out[f"{name}_error"] = f"{type(err).__name__}: {err}"
            return
        peak = meter.peak_mb()
        out[f"{name}_hwm_mb"] = peak
        out[f"{name}_added_mb"] = peak - base

    measure("infer", lambda: [score(method, b, device, precision) for b in batches])
    measure("gen", lambda: generate(method, batches[0], device, precision, opts.new_tokens))
    measure("train", lambda: [train_step(method, b, device, precision) for b in batches])
    method = subject = None  # drop them before the next method's baseline
    release_memory(device)
    return out


def probe_environment() -> dict[str, str]:
    """The probe's environment: ours plus PROBE_MALLOC_ENV.

    With glibc's defaults, freed tensors stay in the heap and RSS keeps up to several hundred MB
    that no tensor uses, varying from run to run (we saw ±30 % on SmolLM2 scoring). Giving every
    tensor above 64 KiB its own mapping makes RSS follow live tensors: repeated probes then agree
    to 1 MB. Timing runs keep the default allocator, as users run it."""
    env = dict(os.environ)
    env.update(PROBE_MALLOC_ENV)
    return env


def run_probe_process(workload: Workload, methods: Sequence[str], opts: BenchOptions) -> dict[str, dict[str, Any]]:
    """Run `probe_memory` in a fresh interpreter (so its peak belongs to these methods only)."""
    spec = {
        "workload": dataclasses.asdict(workload),
        "methods": list(methods),
        "options": options_to_dict(opts),
        "threads": opts.threads or torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="dept-bench-probe-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "dept.bench.memory", str(spec_path), str(out_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=probe_environment())
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout)[-2000:]
            logger.warning(
                "Memory probe for %s %s failed (exit %s): %s", workload.key, list(methods), proc.returncode, tail
            )
            return {key: {"error": f"probe exited with {proc.returncode}: {tail[-300:]}"} for key in methods}
        return json.loads(out_path.read_text())


def measure_memory(workload: Workload, keys: Sequence[str], opts: BenchOptions) -> dict[str, dict[str, Any]]:
    """One probe process for the whole workload (default) or one per method (--isolate-methods;
    same added figures, checked on SmolLM2 within 4 MB)."""
    if not opts.memory:
        return {}
    if not opts.isolate_methods:
        return run_probe_process(workload, keys, opts)
    results: dict[str, dict[str, Any]] = {}
    for key in keys:
        logger.info("memory probe: %s %s", workload.key, key)
        results.update(run_probe_process(workload, [key], opts))
    return results


if __name__ == "__main__":  # the probe process: python -m dept.bench.memory SPEC_JSON OUT_JSON
    spec_path, out_path = sys.argv[1:3]
    torch.set_flush_denormal(True)
    avoid_broken_attention_kernels()
    Path(out_path).write_text(json.dumps(probe_memory(json.loads(Path(spec_path).read_text()))))
