"""Every chart dept draws: the training curve of a run, the trials of a search, and the benchmark's ratio
and scaling charts.

matplotlib (an optional extra) is imported only when a chart is drawn, with the Agg backend so no
display is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from dept._extras import requires

BAR_CLIP = 2.0  # PEFT's full-vocabulary logits make some memory ratios >10x; cut bars there
BAR_METRICS = (
    ("train_step", "train step"),
    ("infer_latency", "scoring latency"),
    ("train_added_mem", "train mem added"),
    ("infer_added_mem", "scoring mem added"),
)


def _pyplot():
    with requires("train"):
        import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(metrics_file: Path, out_png: Path, main_metric: str) -> None:
    """Loss per logged step and the validation main metric per evaluation, on two axes."""
    plt = _pyplot()
    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r[f"val_{main_metric}"]) for r in records if f"val_{main_metric}" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        other = ax.twinx()
        other.plot(*zip(*evals), "o-", color="tab:orange", label=f"validation {main_metric}")
        other.set_ylabel(f"validation {main_metric}", color="tab:orange")
    ax.set_title(Path(metrics_file).parent.name)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def tuning_trials(rows: Sequence[dict[str, Any]], out_png: Path, metric: str, title: str) -> None:
    """`dept tune`: the validation score of each trial (pruned ones at their last reported score), and
    the searched learning rates against each other (or against the score), colored by score."""
    plt = _pyplot()

    def score(r):
        if r["value"] is not None:
            return r["value"]
        last = list(r["intermediate"].values())
        return last[-1] if last else None

    scored = [r for r in rows if score(r) is not None]
    values = [score(r) for r in scored]
    norm = plt.Normalize(min(values, default=0.0), max(values, default=1.0))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pruned, marker in ((False, "o"), (True, "x")):
        group = [r for r in scored if (r["state"] == "pruned") == pruned]
        if group:
            left.scatter(
                [r["trial"] for r in group],
                [score(r) for r in group],
                c=[score(r) for r in group],
                cmap="viridis",
                norm=norm,
                marker=marker,
                label="pruned (last score)" if pruned else "completed",
            )
    complete = sorted((r["trial"], r["value"]) for r in rows if r["value"] is not None)
    if complete:
        best = [max(v for _, v in complete[: i + 1]) for i in range(len(complete))]
        left.step([t for t, _ in complete], best, where="post", color="grey", linewidth=1, label="best so far")
        left.legend(fontsize=8)
    left.xaxis.get_major_locator().set_params(integer=True)
    left.set_xlabel("trial")
    left.set_ylabel(f"validation {metric}")
    rates = [k for k in (rows[0]["params"] if rows else {}) if k.startswith("lr")]
    if scored and rates:
        xs = [r["params"][rates[0]] for r in scored]
        ys = [r["params"][rates[1]] for r in scored] if len(rates) > 1 else values
        points = right.scatter(xs, ys, c=values, cmap="viridis", norm=norm, s=40)
        for r, x, y in zip(scored, xs, ys):
            label = str(r["trial"]) + (f" m={r['params']['prompt_length']}" if "prompt_length" in r["params"] else "")
            right.annotate(label, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        right.set_xscale("log")
        right.set_xlabel(rates[0])
        if len(rates) > 1:
            right.set_yscale("log")
            right.set_ylabel(rates[1])
        else:
            right.set_ylabel(f"validation {metric}")
        fig.colorbar(points, ax=right, label=f"validation {metric}")
    fig.suptitle(f"{title}: {len(rows)} trials")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110, format="png")
    plt.close(fig)


def _reference_lines(ax, guide: Optional[float]) -> None:
    ax.axhline(1.0, color="black", linewidth=0.8)
    if guide is not None:  # the benchmark's time target, when one was given
        ax.axhline(guide, color="grey", linewidth=0.8, linestyle="--")


def plot_ratios(workloads: Sequence[dict[str, Any]], path: Path, reference: str, guide: Optional[float] = None) -> None:
    """Benchmark: one panel per workload, each method's ratio to the reference method (PT l=100)
    for time and added memory."""
    plt = _pyplot()
    cols = min(3, max(1, len(workloads)))
    rows = max(1, (len(workloads) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.2 * rows), squeeze=False)
    for ax, w in zip(axes.flat, workloads):
        keys = [k for k in w["ratios"] if k != reference]
        width = 0.8 / max(1, len(keys))
        for i, key in enumerate(keys):
            values = [w["ratios"][key].get(metric) or 0.0 for metric, _ in BAR_METRICS]
            xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(BAR_METRICS))]
            ax.bar(xs, [min(v, BAR_CLIP) for v in values], width, label=w["methods"][key]["label"])
            for x, v in zip(xs, values):  # bars cut at BAR_CLIP carry their value
                if v > BAR_CLIP:
                    ax.text(x, BAR_CLIP, f"{v:.1f}×", ha="center", va="bottom", fontsize=6, rotation=90)
        _reference_lines(ax, guide)
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


def plot_scaling(workloads: Sequence[dict[str, Any]], path: Path, guide: Optional[float] = None) -> None:
    """Benchmark: DePT/PT ratios against backbone size, one line per (family, lengths, device)."""
    plt = _pyplot()
    from matplotlib import ticker

    groups: dict[str, list[dict]] = {}
    for w in workloads:
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
                        ax.annotate(
                            w["workload"]["model"], (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3)
                        )
    for ax, title in zip(axes, ("DePT/PT training-step time", "DePT/PT training memory added")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.FixedLocator([10, 20, 50, 100, 200, 500, 1000, 2000, 5000]))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        _reference_lines(ax, guide)
        ax.set_xlabel("backbone parameters (M)")
        ax.set_ylabel("ratio (lower = bigger saving)")
        ax.set_title(title)
        if groups:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
