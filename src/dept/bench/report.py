"""Reports for `dept bench`: results.json, results.md (tables with ratios to PT l=100), PNG charts
and the console summary.

Kept apart from the measuring code so the report can be re-rendered from a saved results.json,
with the targets checked again, without measuring anything:
`python -m dept.bench.report OUTPUT_DIR [TARGETS_JSON]`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from dept.bench.options import REFERENCE
from dept.bench.targets import evaluate_targets, load_targets, time_guide

logger = logging.getLogger(__name__)

#: Memory definition shown under every memory table: the targets use the added memory.
MEMORY_NOTE = (
    "Memory is measured in a separate probe process (fresh interpreter, backbone loaded, kernels "
    "warmed up, each method warmed up once before its baseline). *added* = peak minus the memory "
    "just before the method was built: activations, gradients, optimizer state and the adapter, "
    "i.e. the memory the method adds. *peak* = the memory of the process holding only the frozen "
    "backbone plus *added*: the peak of a process running only that method (RSS on CPU, "
    "`torch.cuda.max_memory_allocated` on GPU). The backbone weights are the same for every "
    "method, so the targets use *added*, which is what the paper's memory claim is about; *peak* "
    "ratios are closer to 1 because the weights and the Python runtime are in both. On CPU the "
    "probe runs with `MALLOC_MMAP_THRESHOLD_=65536` so RSS follows live tensors rather than "
    "glibc's heap retention (with the default allocator RSS carries a few hundred MB of freed "
    "heap that varies between runs)."
)
#: Where LoRA sits, by the results' `lora_target_modules` (absent from results written before the
#: benchmark used the training's LoRA baseline: those targeted the query and value projections).
LORA_WHERE = {
    "all-linear": "every linear layer (peft's all-linear, output layer excluded), the same LoRA baseline as "
    "`dept train --method lora`",
    None: "the attention query and value projections (PEFT's default targets at the time of this run)",
}
#: Facts about the compared methods that a reader needs to read the tables right.
METHOD_NOTES = (
    "PT l=60 (ours) is DePT without the low-rank update: the same sequence length as DePT m=60, so "
    "DePT − PT(l=60) is the cost of the A·B offsets alone.",
    "LoRA (PEFT) is rank r on {lora_where}, alpha = 2r, no dropout. It is not budget-matched; it is "
    "there as the usual alternative. Dropout is off for every method.",
    "PEFT's prompt tuning on an encoder-decoder allocates a second l×d block for the decoder "
    "(num_transformer_submodules=2) that its prompt-tuning forward never uses, hence twice the "
    "trainable parameters at the same compute.",
    "PEFT and LoRA are called as users call them, with labels: transformers then computes logits for "
    "every position and a float32 log-softmax over the full vocabulary, which is most of their extra "
    "scoring memory on the 49k-vocabulary SmolLM2.",
    "Generation on CPU: transformers' generate() asks for the last position's logits through a "
    "non-contiguous slice, and a frozen bf16 output projection on such a slice runs as a bmm over a "
    "batch-expanded copy of the vocabulary matrix (batch x hidden x vocabulary). "
    "DePTModel.generate passes an index tensor instead; PEFT and LoRA pay it at every prefill, which "
    "explains most of their lower CPU tokens/s (seen on CPU; not checked on CUDA).",
)

TIME_NOTE = (
    "Times are medians over interleaved rounds (methods alternate A B C… then …C B A each round); "
    "`(×)` is the median over rounds of the same-round quotient method / PT l=100, so contention "
    "lasting a round or more cancels. Each workload states its clock: on single-threaded CPU runs "
    "the process CPU time of the step (the wall time it takes on a dedicated core, blind to time "
    "spent waiting for a core on a shared machine), otherwise wall time; results.json holds both "
    "clocks for every step. Training step = forward + backward + clip + AdamW step; scoring = one "
    "no-grad forward with labels; generation = greedy decoding of a fixed number of new tokens per row."
)
NO_TARGETS = (
    "No targets file for this run: figures and ratios only. `--targets PATH` (or a targets.json in "
    "the output folder, as in the repository's benchmarks/efficiency) adds pass/fail."
)


# --------------------------------------------------------------------------- formatting helpers


def _fmt(value: Optional[float], spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _params(count: int) -> str:
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,}"


def _ratio(value: Optional[float]) -> str:
    return "" if value is None else f" ({value:.2f}×)"


def _median(entry: dict, name: str) -> Optional[float]:
    stats = entry.get(name)
    return stats["median"] if stats else None


def _mem(entry: dict, name: str) -> Optional[float]:
    return entry.get("memory", {}).get(name)


# --------------------------------------------------------------------------- markdown


def _target_value(t: dict[str, Any], value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:+.1%}" if t.get("format") == "percent" else f"{value:.3f}"


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """Targets with the judged value; time targets also show the other clock's value."""
    if not targets:
        return NO_TARGETS
    lines = [
        "| target | measured | other clock | threshold | status | workload |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        value = _target_value(t, t["value"])
        if t.get("clock"):
            other = "wall" if t["clock"] == "cpu" else "cpu"
            value += f" ({t['clock']})"
            other_value = f"{_target_value(t, t.get(other))} ({other})"
        else:
            other_value = ""
        bound = f"≤ {t['threshold']:.0%}" if t.get("format") == "percent" else "≤ " + _fmt(t["threshold"], ".2f")
        status = {"pass": "**PASS**", "fail": "**FAIL**"}.get(t["status"], t["status"])
        lines.append(f"| {t['description']} | {value} | {other_value} | {bound} | {status} | {t['workload']} |")
    return "\n".join(lines)


def workload_table(workload: dict[str, Any]) -> str:
    """One row per method: figures with their ratio to PT l=100 in parentheses."""
    head = (
        "| method | trainable params | train step s | train samples/s | scoring latency ms | generation tok/s | "
        "train mem added MB | train peak MB | scoring mem added MB | scoring peak MB |"
    )
    lines = [head, "|---|" + "---:|" * 9]
    for key, entry in workload["methods"].items():
        if "error" in entry:
            lines.append(f"| {entry['label']} | build failed: {entry['error'][:80]} |" + " |" * 8)
            continue
        r = workload["ratios"].get(key, {})
        clock = workload.get("clock", "wall")
        infer = _median(entry, f"infer_{clock}_s")
        gen_ratio = None if not r.get("gen_time") else 1.0 / r["gen_time"]
        cells = [
            entry["label"],
            f"{entry['trainable_params']:,}",
            _fmt(_median(entry, f"train_{clock}_s")) + _ratio(r.get("train_step")),
            _fmt(entry.get("train_samples_per_s"), ".2f"),
            _fmt(None if infer is None else infer * 1e3, ".1f") + _ratio(r.get("infer_latency")),
            _fmt(entry.get("gen_tokens_per_s"), ".1f") + _ratio(gen_ratio),
            _fmt(_mem(entry, "train_added_mb"), ".0f") + _ratio(r.get("train_added_mem")),
            _fmt(_mem(entry, "train_peak_mb"), ".0f") + _ratio(r.get("train_peak_rss")),
            _fmt(_mem(entry, "infer_added_mb"), ".0f") + _ratio(r.get("infer_added_mem")),
            _fmt(_mem(entry, "infer_peak_mb"), ".0f") + _ratio(r.get("infer_peak_rss")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    problems = _problems(workload)
    if problems:
        lines.append("")
        lines.extend(f"- {p}" for p in problems)
    return "\n".join(lines)


def _problems(workload: dict[str, Any]) -> list[str]:
    out = []
    for entry in workload["methods"].values():
        for phase, err in (entry.get("errors") or {}).items():
            out.append(f"{entry['label']}: {phase} failed: `{err[:200]}`")
        for name, err in entry.get("memory", {}).items():
            if name.endswith("error"):
                out.append(f"{entry['label']}: memory probe ({name}): `{str(err)[:200]}`")
    return out


def workload_section(workload: dict[str, Any]) -> str:
    spec, model, tokens = workload["workload"], workload["model"], workload["tokens"]
    steps = f"{spec['warmup']} warm-up + {spec['steps']} measured rounds"
    lines = [
        f"### {workload['key']}",
        "",
        f"- backbone: `{spec['model']}` ({model['kind']}, {_params(model['parameters'])} parameters, "
        f"d={model['hidden_size']}, {model['layers']} layers, weights {model['dtype']}); "
        f"DePT budget-matched rank r={workload['dept_rank']}",
        f"- inputs: {workload['data']}; {tokens['mean_real_tokens_per_row']:.1f} real tokens/row, "
        f"padded length {tokens['mean_padded_length']:.1f} ({tokens['note']}); sequence seen by the model "
        f"≈ {tokens['model_length_pt']:.0f} (PT l=100) vs {tokens['model_length_dept']:.0f} (DePT m=60)",
        f"- device {spec['device']}, precision {spec['precision']}, batch {spec['batch_size']}, {steps}, "
        f"times on the **{workload.get('clock', 'wall')}** clock; generation {workload['gen_new_tokens']} new "
        f"tokens/row; load average {_fmt(workload['loadavg']['start'], '.1f')} → "
        f"{_fmt(workload['loadavg']['end'], '.1f')}",
        "",
        workload_table(workload),
    ]
    return "\n".join(lines)


def scaling_table(workloads: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| workload | parameters | DePT/PT train step | DePT/PT scoring | DePT/PT train mem added |",
        "|---|---:|---:|---:|---:|",
    ]
    for w in workloads:
        if "dept" not in w["ratios"]:
            continue
        r = w["ratios"]["dept"]
        lines.append(
            f"| {w['key']} | {_params(w['model']['parameters'])} | {_fmt(r.get('train_step'))} | "
            f"{_fmt(r.get('infer_latency'))} | {_fmt(r.get('train_added_mem'))} |"
        )
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    device = machine.get("gpu") or (
        f"{machine['cpu']} ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads)"
    )
    parts = [
        "# DePT efficiency benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}  ",
        f"Machine: {device}; torch {machine['torch']}, transformers {machine['transformers']}, "
        f"peft {machine['peft']}, Python {machine['python']}  ",
        f"Code: dept commit {machine.get('dept_commit') or 'unknown'}",
        "",
    ]
    parts.extend(f"> {note}" for note in results.get("notes", []))
    parts += ["", "## Targets", "", targets_table(results.get("targets", [])), ""]
    parts += ["## DePT / PT ratios by workload", "", scaling_table(results["workloads"]), ""]
    parts += ["## Workloads", "", TIME_NOTE, "", MEMORY_NOTE, ""]
    lora_where = LORA_WHERE.get(results.get("lora_target_modules"), results.get("lora_target_modules"))
    parts += [f"- {note.format(lora_where=lora_where)}" for note in METHOD_NOTES] + [""]
    for workload in results["workloads"]:
        parts += [workload_section(workload), ""]
    parts += ["## Charts", "", "![ratios](ratios.png)", "", "![scaling](scaling.png)", ""]
    return "\n".join(parts)


def console_summary(results: dict[str, Any]) -> str:
    """What the CLI prints: per workload, each method's ratios to PT; then the targets."""
    lines = []
    for w in results["workloads"]:
        lines.append(f"\n{w['key']}  ({w['data']}; times: {w.get('clock', 'wall')} clock)")
        lines.append(
            f"  {'method':28s} {'train s':>9s} {'×PT':>6s} {'score ms':>9s} {'×PT':>6s} {'gen tok/s':>9s} "
            f"{'mem+ MB':>8s} {'×PT':>6s}"
        )
        for key, entry in w["methods"].items():
            if "error" in entry:
                lines.append(f"  {entry['label']:28s} build failed: {entry['error'][:60]}")
                continue
            r = w["ratios"].get(key, {})
            clock = w.get("clock", "wall")
            infer = _median(entry, f"infer_{clock}_s")
            lines.append(
                f"  {entry['label']:28s} {_fmt(_median(entry, f'train_{clock}_s')):>9s} "
                f"{_fmt(r.get('train_step'), '.2f'):>6s} {_fmt(None if infer is None else infer * 1e3, '.1f'):>9s} "
                f"{_fmt(r.get('infer_latency'), '.2f'):>6s} {_fmt(entry.get('gen_tokens_per_s'), '.1f'):>9s} "
                f"{_fmt(_mem(entry, 'train_added_mb'), '.0f'):>8s} {_fmt(r.get('train_added_mem'), '.2f'):>6s}"
            )
    targets = results.get("targets", [])
    lines.append("\nTargets:" if targets else f"\n{NO_TARGETS}")
    for t in targets:
        lines.append(
            f"  [{t['status'].upper():7s}] {t['description']}: {_fmt(t['value'])} (threshold {t['threshold']})"
        )
    for note in results.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: Path, targets: Optional[dict[str, Any]] = None) -> None:
    """Check the targets, then write results.json, results.md, ratios.png and scaling.png in `out_dir`."""
    from dept.runs.plots import plot_ratios, plot_scaling

    results["targets"] = evaluate_targets(results["workloads"], targets)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(render_markdown(results), encoding="utf-8")
    guide = time_guide(targets)
    plot_ratios(results["workloads"], out_dir / "ratios.png", REFERENCE, guide)
    plot_scaling(results["workloads"], out_dir / "scaling.png", guide)
    names = ("results.json", "results.md", "ratios.png", "scaling.png")
    logger.info("wrote %s", ", ".join(str(out_dir / n) for n in names))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m dept.bench.report OUTPUT_DIR [TARGETS_JSON]  (re-renders the report)")
    out = Path(sys.argv[1])
    targets_path = Path(sys.argv[2]) if len(sys.argv) == 3 else out / "targets.json"
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    write_report(saved, out, load_targets(targets_path if targets_path.is_file() else None))
