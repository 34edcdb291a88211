"""Training-curve and results plots (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curve(metrics_file: Path, out_png: Path, main_metric: str) -> None:
    """Loss per logged step and the validation main metric per evaluation, on two axes."""
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
