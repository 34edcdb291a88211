"""Pass/fail targets for a benchmark run, read from a JSON file that lives with the results.

The thresholds are claims about one set of results (e.g. "DePT/PT training time <= 0.80 on
SmolLM2, SST-2 lengths, batch 16"), not part of the measuring code, so they sit beside the
results they judge (benchmarks/efficiency/targets.json in the repository). Without a targets file
a run reports its figures and ratios only. Format:

    {"workload": {"model": ..., "lengths": ..., "batch_size": ..., "device": ...},
     "checks": [{"name", "description", "method", "reference", "metric", "max",
                 optional "minus_one": true (judge ratio − 1), "format": "percent"}],
     "scaling": {"description", "models": [...], "method", "metric", "max_increase"}}

`metric` is a ratio name of `dept.bench.timing` (train_step, infer_latency, gen_time for time;
train_added_mem, infer_added_mem, ... for memory). Time checks are judged on the workload's primary
clock; the other clock's value is recorded next to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from dept.bench.timing import MEMORY_METRICS, TIME_METRICS, paired_ratio, samples


def load_targets(path: Optional[Path]) -> Optional[dict[str, Any]]:
    if path is None:
        return None
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the targets file {path}: {err}") from err
    for check in spec.get("checks", []):
        missing = {"name", "description", "method", "reference", "metric", "max"} - set(check)
        if missing or check["metric"] not in {**TIME_METRICS, **MEMORY_METRICS}:
            raise ValueError(f"{path}: target {check.get('name')!r} lacks {sorted(missing)} or has an unknown metric.")
    return spec


def time_guide(spec: Optional[dict[str, Any]]) -> Optional[float]:
    """The strictest time-ratio threshold, drawn as a line on the charts."""
    if not spec:
        return None
    values = [c["max"] for c in spec.get("checks", []) if c["metric"] in TIME_METRICS and not c.get("minus_one")]
    return min(values, default=None)


def evaluate_targets(workloads: Sequence[dict], spec: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its measured value and pass/fail ("not run" when the workload it is defined
    on was not part of this run); empty without a targets spec."""
    if not spec:
        return []
    where_spec = spec["workload"]
    w = _find(workloads, **where_spec)
    where = w["key"] if w else "{model}/{lengths}/bs{batch_size}/{device}".format(**where_spec)
    checks = [_evaluate(target, w, where) for target in spec.get("checks", [])]
    if "scaling" in spec:
        checks.extend(scaling_checks(workloads, spec["scaling"]))
    return checks


def _find(workloads: Sequence[dict], model: str, lengths: str, batch_size: Optional[int] = None, device: str = "cpu"):
    for w in workloads:
        spec = w["workload"]
        if spec["model"] == model and spec["lengths"] == lengths and spec["device"] == device:
            if batch_size is None or spec["batch_size"] == batch_size:
                return w
    return None


def _usable(workload: Optional[dict], *keys: str) -> bool:
    methods = workload["methods"] if workload else {}
    return all(k in methods and "error" not in methods[k] for k in keys)


def _evaluate(target: dict[str, Any], w: Optional[dict], where: str) -> dict[str, Any]:
    key, ref, metric = target["method"], target["reference"], target["metric"]
    offset = 1.0 if target.get("minus_one") else 0.0
    usable = _usable(w, key, ref)
    if metric in MEMORY_METRICS:
        value = None
        if usable:
            field = MEMORY_METRICS[metric]
            num, den = (w["methods"][k].get("memory", {}).get(field) for k in (key, ref))
            value = num / den - offset if num is not None and den else None
        check = _check(target["name"], target["description"], value, target["max"], where)
    else:
        clock = w.get("clock", "wall") if w else "wall"
        values = {}
        for clk in ("wall", "cpu"):
            pair = None
            if usable:
                phase = TIME_METRICS[metric]
                pair = paired_ratio(samples(w["methods"][key], phase, clk), samples(w["methods"][ref], phase, clk))
            values[clk] = pair["median"] - offset if pair else None
        check = _check(target["name"], target["description"], values[clock], target["max"], where)
        check.update(clock=clock, wall=values["wall"], cpu=values["cpu"])
    if target.get("format"):
        check["format"] = target["format"]
    return check


def _check(name: str, description: str, value: Optional[float], threshold: float, where: str) -> dict[str, Any]:
    status = "not run" if value is None else ("pass" if value <= threshold else "fail")
    return {"name": name, "description": description, "value": value, "threshold": threshold, "status": status,
            "workload": where}  # fmt: skip


def scaling_checks(workloads: Sequence[dict], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The method's ratio for each model of `spec["models"]` (same lengths and device): the saving
    (1 − ratio) must not shrink by more than `max_increase` from one size to the next."""
    models, tolerance = tuple(spec["models"]), spec["max_increase"]
    method, metric = spec.get("method", "dept"), spec.get("metric", "train_step")
    family = os.path.commonprefix(models) + "*"
    out = []
    groups: dict[tuple[str, str], dict[str, float]] = {}
    for w in workloads:
        wspec = w["workload"]
        value = w["ratios"].get(method, {}).get(metric)
        if wspec["model"] in models and value is not None:
            groups.setdefault((wspec["lengths"], wspec["device"]), {})[wspec["model"]] = value
    for (lengths, device), values in sorted(groups.items()):
        if not all(m in values for m in models):
            continue
        series = [values[m] for m in models]
        worst = max(b - a for a, b in zip(series, series[1:]))  # growth of the ratio = shrink of the saving
        description = (
            f"{spec['description']} (" + " → ".join(f"{v:.3f}" for v in series) + "); "
            f"value = largest increase, allowed {tolerance}"
        )
        check = _check(f"scaling_{lengths}_{device}", description, worst, tolerance, f"{family}/{lengths}/{device}")
        check["series"] = dict(zip(models, series))
        out.append(check)
    if not out:
        out.append(_check("scaling", spec["description"], None, tolerance, family))
    return out
