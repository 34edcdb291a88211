"""Interleaved timing and paired ratios: how the benchmark keeps a shared machine's noise out of
the comparison.

All methods live in one process and run one step each per round, the order alternating every
round (A B C D, then D C B A, ...), so slow drift of the machine hits all methods alike. Ratios
are *paired*: the median over rounds of t(method) / t(reference) in the same round, which cancels
contention that lasts a round or longer.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from dept.bench.methods import BenchMethod
from dept.bench.options import REFERENCE
from dept.bench.workloads import Batch

logger = logging.getLogger(__name__)

#: Ratio name -> timed phase, and ratio name -> memory figure of the probe (lower is better for all).
TIME_METRICS = {"train_step": "train", "infer_latency": "infer", "gen_time": "gen"}
MEMORY_METRICS = {
    "train_added_mem": "train_added_mb",
    "train_peak_rss": "train_peak_mb",
    "infer_added_mem": "infer_added_mb",
    "infer_peak_rss": "infer_peak_mb",
    "gen_added_mem": "gen_added_mb",
}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def round_order(keys: Sequence[str], round_index: int) -> list[str]:
    """A B C D, then D C B A, ...: every method runs early and late equally often."""
    return list(keys) if round_index % 2 == 0 else list(reversed(keys))


def time_interleaved(
    methods: dict[str, BenchMethod],
    batches: Sequence[Batch],
    warmup: int,
    run: Callable[[BenchMethod, Batch], None],
    device: str,
    phase: str,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str]]:
    """Per-method wall and CPU seconds of each measured round (warm-up rounds dropped), and the
    error of each method that failed (one method's failure must not sink the others' figures)."""
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    errors: dict[str, str] = {}
    for index, batch in enumerate(batches):
        for key in round_order(list(methods), index):
            if key in errors:
                continue
            synchronize(device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            try:
                run(methods[key], batch)
                synchronize(device)
            except Exception as err:  # recorded in the results next to the method's figures
                logger.warning("%s failed in %s: %s", methods[key].label, phase, err)
                errors[key] = f"{type(err).__name__}: {err}"
                continue
            if index >= warmup:
                wall[key].append(time.perf_counter() - start_wall)
                cpu[key].append(time.process_time() - start_cpu)
        logger.info(
            "%s round %d/%d: %s", phase, index + 1, len(batches),
            ", ".join(f"{k}={wall[k][-1]:.3f}s" for k in methods if index >= warmup and wall[k]),
        )  # fmt: skip
    return wall, cpu, errors


def primary_clock(device: str) -> str:
    """Which clock the ratios and targets use: process CPU time for single-threaded CPU runs,
    wall time otherwise.

    With one thread, a step's CPU time is the wall time it would take on a dedicated core, and it
    does not count the time the process waited for a core while other jobs ran on a shared
    machine. With several threads (or a GPU) CPU time is not a step's duration, so wall time it is.
    Both clocks are always recorded and shown."""
    return "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"


def summarize(values: Sequence[float]) -> Optional[dict[str, Any]]:
    if not values:
        return None
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": quartiles[0], "p75": quartiles[2], "n": len(values),
            "samples": [round(v, 6) for v in values]}  # fmt: skip


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Optional[dict[str, float]]:
    """Median (and quartiles) over rounds of numerator[i] / denominator[i], same-round pairs."""
    pairs = [a / b for a, b in zip(numerator, denominator) if b > 0]
    if not pairs or len(numerator) != len(denominator):
        return None
    summary = summarize(pairs)
    assert summary is not None
    return {"median": summary["median"], "p25": summary["p25"], "p75": summary["p75"]}


def samples(entry: dict[str, Any], phase: str, clock: str) -> list[float]:
    stats = entry.get(f"{phase}_{clock}_s")
    return list(stats["samples"]) if stats else []


def workload_ratios(result: dict[str, Any], reference: str = REFERENCE) -> dict[str, dict[str, Any]]:
    """Every method's figures over the reference's: paired per-round medians for time (on both
    clocks; the unsuffixed name is the workload's primary clock), plain quotients for memory
    (deterministic to ~1 MB in the probe)."""
    methods, clock = result["methods"], result.get("clock", "wall")
    ref = methods.get(reference, {})
    ratios: dict[str, dict[str, Any]] = {}
    for key, entry in methods.items():
        if "error" in entry:
            continue
        row: dict[str, Any] = {}
        for name, phase in TIME_METRICS.items():
            for clk in ("wall", "cpu"):
                pair = paired_ratio(samples(entry, phase, clk), samples(ref, phase, clk))
                row[f"{name}_{clk}"] = pair["median"] if pair else None
                if clk == clock:
                    row[name] = row[f"{name}_{clk}"]
                    row[f"{name}_iqr"] = [pair["p25"], pair["p75"]] if pair else None
        for name, field_name in MEMORY_METRICS.items():
            num, den = entry.get("memory", {}).get(field_name), ref.get("memory", {}).get(field_name)
            row[name] = num / den if num is not None and den else None
        ratios[key] = row
    return ratios
