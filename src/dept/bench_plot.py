"""Reports for `dept bench`: results.json, results.md (tables with ratios to PT l=100) and PNG charts.

Kept apart from the measuring code so the figures can be re-rendered from a saved results.json
(`write_report(json.load(...), out_dir)`) without re-running anything.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

logger = logging.getLogger(__name__)

REFERENCE = "pt"
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
#: Facts about the compared methods that a reader needs to read the tables right.
METHOD_NOTES = (
    "PT l=60 (ours) is DePT without the low-rank update: the same sequence length as DePT m=60, so "
    "DePT − PT(l=60) is the cost of the A·B offsets alone.",
    "LoRA (PEFT defaults: query and value projections, alpha = 2r, no dropout) is not budget-matched; "
    "it is there as the usual alternative. Dropout is off for every method.",
    "PEFT's prompt tuning on an encoder-decoder allocates a second l×d block for the decoder "
    "(num_transformer_submodules=2) that its prompt-tuning forward never uses, hence twice the "
    "trainable parameters at the same compute.",
    "PEFT and LoRA are called as users call them, with labels: transformers then computes logits for "
    "every position and a float32 log-softmax over the full vocabulary, which is most of their extra "
    "scoring memory on the 49k-vocabulary SmolLM2.",
    "Generation on CPU: transformers' generate() asks for the last position's logits through a "
    "non-contiguous slice, and a frozen bf16 output projection on such a slice runs as a bmm over a "
    "batch-expanded copy of the vocabulary matrix (0.9 GB and ~2.5 s at batch 16 for SmolLM2). "
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
    return f"{value:+.1%}" if t["name"] == "dept_overhead" else f"{value:.3f}"


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """Targets with the judged value; time targets also show the other clock's value."""
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
        bound = f"≤ {t['threshold']:.0%}" if t["name"] == "dept_overhead" else "≤ " + _fmt(t["threshold"], ".2f")
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
    for key, entry in workload["methods"].items():
        for phase, err in (entry.get("errors") or {}).items():
            out.append(f"{entry['label']}: {phase} failed: `{err[:200]}`")
        mem = entry.get("memory", {})
        for name, err in mem.items():
            if name.endswith("error"):
                out.append(f"{entry['label']}: memory probe ({name}): `{str(err)[:200]}`")
    return out


def workload_section(workload: dict[str, Any]) -> str:
    spec, model, tokens = workload["workload"], workload["model"], workload["tokens"]
    steps = f"{spec['warmup']} warm-up + {spec['steps']} measured rounds"
    lines = [
        f"### {workload['key']}",
        "",
        f"- backbone: `{spec['model']}` ({model['kind']}, {_params(model['parameters'])} parameters, d={model['hidden_size']}, "
        f"{model['layers']} layers, weights {model['dtype']}); DePT budget-matched rank r={workload['dept_rank']}",
        f"- inputs: {workload['data']}; {tokens['mean_real_tokens_per_row']:.1f} real tokens/row, "
        f"padded length {tokens['mean_padded_length']:.1f} ({tokens['note']}); "
        f"sequence seen by the model ≈ {tokens['model_length_pt']:.0f} (PT l=100) vs {tokens['model_length_dept']:.0f} (DePT m=60)",
        f"- device {spec['device']}, precision {spec['precision']}, batch {spec['batch_size']}, {steps}, "
        f"times on the **{workload.get('clock', 'wall')}** clock; "
        f"generation {workload['gen_new_tokens']} new tokens/row; load average {_fmt(workload['loadavg']['start'], '.1f')} → {_fmt(workload['loadavg']['end'], '.1f')}",
        "",
        workload_table(workload),
    ]
    return "\n".join(lines)


def scaling_table(workloads: Sequence[dict[str, Any]]) -> str:
    rows = [w for w in workloads if "dept" in w["ratios"]]
    lines = [
        "| workload | parameters | DePT/PT train step | DePT/PT scoring | DePT/PT train mem added |",
        "|---|---:|---:|---:|---:|",
    ]
    for w in rows:
        r = w["ratios"]["dept"]
        lines.append(
            f"| {w['key']} | {_params(w['model']['parameters'])} | {_fmt(r.get('train_step'))} | "
            f"{_fmt(r.get('infer_latency'))} | {_fmt(r.get('train_added_mem'))} |"
        )
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    device = machine.get("gpu") or f"{machine['cpu']} ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads)"
    parts = [
        "# DePT efficiency benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}  ",
        f"Machine: {device}; torch {machine['torch']}, transformers {machine['transformers']}, peft {machine['peft']}, "
        f"Python {machine['python']}",
        "",
    ]
    parts.extend(f"> {note}" for note in results.get("notes", []))
    parts += ["", "## Targets", "", targets_table(results["targets"]), ""]
    parts += ["## DePT / PT ratios by workload", "", scaling_table(results["workloads"]), ""]
    parts += ["## Workloads", "", TIME_NOTE, "", MEMORY_NOTE, ""]
    parts += [f"- {note}" for note in METHOD_NOTES] + [""]
    for workload in results["workloads"]:
        parts += [workload_section(workload), ""]
    parts += ["## Charts", "", "![ratios](ratios.png)", "", "![scaling](scaling.png)", ""]
    return "\n".join(parts)


def console_summary(results: dict[str, Any]) -> str:
    """What the CLI prints: per workload, each method's ratios to PT; then the targets."""
    lines = []
    for w in results["workloads"]:
        lines.append(f"\n{w['key']}  ({w['data']}; times: {w.get('clock', 'wall')} clock)")
        lines.append(f"  {'method':28s} {'train s':>9s} {'×PT':>6s} {'score ms':>9s} {'×PT':>6s} {'gen tok/s':>9s} {'mem+ MB':>8s} {'×PT':>6s}")
        for key, entry in w["methods"].items():
            if "error" in entry:
                lines.append(f"  {entry['label']:28s} build failed: {entry['error'][:60]}")
                continue
            r = w["ratios"].get(key, {})
            clock = w.get("clock", "wall")
            infer = _median(entry, f"infer_{clock}_s")
            lines.append(
                f"  {entry['label']:28s} {_fmt(_median(entry, f'train_{clock}_s')):>9s} {_fmt(r.get('train_step'), '.2f'):>6s} "
                f"{_fmt(None if infer is None else infer * 1e3, '.1f'):>9s} {_fmt(r.get('infer_latency'), '.2f'):>6s} "
                f"{_fmt(entry.get('gen_tokens_per_s'), '.1f'):>9s} {_fmt(_mem(entry, 'train_added_mb'), '.0f'):>8s} "
                f"{_fmt(r.get('train_added_mem'), '.2f'):>6s}"
            )
    lines.append("\nTargets:")
    for t in results["targets"]:
        lines.append(f"  [{t['status'].upper():7s}] {t['description']}: {_fmt(t['value'])} (threshold {t['threshold']})")
    for note in results.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- charts

BAR_CLIP = 2.0  # PEFT's full-vocabulary logits make some memory ratios >10x; cut bars there
BAR_METRICS = (
    ("train_step", "train step"),
    ("infer_latency", "scoring latency"),
    ("train_added_mem", "train mem added"),
    ("infer_added_mem", "scoring mem added"),
)


def plot_ratios(results: dict[str, Any], path: Path) -> None:
    """One panel per workload: each method's ratio to PT l=100 for time and added memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = results["workloads"]
    cols = min(3, max(1, len(workloads)))
    rows = max(1, (len(workloads) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.2 * rows), squeeze=False)
    for ax, w in zip(axes.flat, workloads):
        keys = [k for k in w["ratios"] if k != REFERENCE]
        width = 0.8 / max(1, len(keys))
        for i, key in enumerate(keys):
            values = [w["ratios"][key].get(metric) or 0.0 for metric, _ in BAR_METRICS]
            xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(BAR_METRICS))]
            ax.bar(xs, [min(v, BAR_CLIP) for v in values], width, label=w["methods"][key]["label"])
            for x, v in zip(xs, values):  # bars cut at BAR_CLIP carry their value
                if v > BAR_CLIP:
                    ax.text(x, BAR_CLIP, f"{v:.1f}×", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.8, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, BAR_CLIP * 1.18)
        ax.set_xticks(range(len(BAR_METRICS)), [label for _, label in BAR_METRICS], fontsize=8)
        ax.set_ylabel("ratio to PT l=100 (lower is better)")
        ax.set_title(w["key"], fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(results: dict[str, Any], path: Path) -> None:
    """DePT/PT ratios against backbone size, one line per (length regime, device) and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (used through matplotlib.ticker)

    groups: dict[str, list[dict]] = {}
    for w in results["workloads"]:
        if "dept" in w["ratios"]:
            spec = w["workload"]
            family = "t5" if w["model"]["kind"] == "seq2seq" else "causal"
            groups.setdefault(f"{family} {spec['lengths']} {spec['device']}", []).append(w)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, ws in sorted(groups.items()):
        ws = sorted(ws, key=lambda w: w["model"]["parameters"])
        xs = [w["model"]["parameters"] / 1e6 for w in ws]
        label = name if len(ws) > 1 else f"{ws[0]['workload']['model']} {name.split(' ', 1)[1]}"
        for ax, metric in zip(axes, ("train_step", "train_added_mem")):
            ys = [w["ratios"]["dept"].get(metric) for w in ws]
            ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", label=label)
            if len(ws) > 1:  # name the sizes along a scaling line
                for x, w, y in zip(xs, ws, ys):
                    if y is not None:
                        ax.annotate(w["workload"]["model"], (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    for ax, title in zip(axes, ("DePT/PT training-step time", "DePT/PT training memory added")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([10, 20, 50, 100, 200, 500, 1000, 2000, 5000]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.8, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("backbone parameters (M)")
        ax.set_ylabel("ratio (lower = bigger saving)")
        ax.set_title(title)
        if groups:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    """results.json, results.md, ratios.png and scaling.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(render_markdown(results), encoding="utf-8")
    plot_ratios(results, out_dir / "ratios.png")
    plot_scaling(results, out_dir / "scaling.png")
    logger.info("wrote %s", ", ".join(str(out_dir / n) for n in ("results.json", "results.md", "ratios.png", "scaling.png")))


def rerender(out_dir: Path) -> None:
    """Re-write results.md and the charts from `out_dir/results.json` (no measuring)."""
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    write_report(results, out_dir)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m dept.bench_plot OUTPUT_DIR  (re-renders results.md and the PNGs)")
    rerender(Path(sys.argv[1]))
