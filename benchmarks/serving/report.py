"""results.json of the serving load test -> results.md (tables, the two targets) and throughput.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {"mixed": "(a) mixed adapters", "adapter": "(b) one adapter per batch", "none": "(c) no batching"}


def _cell(cells, scheduler, adapters, concurrency):
    return next(
        (c for c in cells if (c["scheduler"], c["adapters"], c["concurrency"]) == (scheduler, adapters, concurrency)),
        None,
    )


def targets(results: dict) -> list[str]:
    cells = results["cells"]
    top = max(c["concurrency"] for c in cells)
    most = max(c["adapters"] for c in cells)
    lines = []
    a, b = _cell(cells, "mixed", most, top), _cell(cells, "adapter", most, top)
    if a and b:
        ratio = a["requests_per_s"] / b["requests_per_s"]
        ok = ratio >= 2 and a["p99_s"] <= b["p99_s"]
        lines.append(
            f"- **{most} adapters, (a) ≥ 2× (b) at no worse p99** (concurrency {top}): {ratio:.2f}× "
            f"({a['requests_per_s']:.2f} vs {b['requests_per_s']:.2f} req/s; p99 {a['p99_s']:.2f} s vs "
            f"{b['p99_s']:.2f} s): **{'pass' if ok else 'not reached'}**"
        )
    one, many = _cell(cells, "mixed", 1, top), _cell(cells, "mixed", most, top)
    if one and many:
        ratio = many["requests_per_s"] / one["requests_per_s"]
        lines.append(
            f"- **(a) with {most} adapters within 15 % of (a) with 1** (concurrency {top}): {ratio:.1%} "
            f"({many['requests_per_s']:.2f} vs {one['requests_per_s']:.2f} req/s): "
            f"**{'pass' if ratio >= 0.85 else 'not reached'}**"
        )
    total = sum(c["requests"] for c in cells)
    errors, fives = sum(c["errors"] for c in cells), sum(c["server_errors"] for c in cells)
    lines.append(f"- **Every request answered, zero 5xx**: {total} requests, {errors} errors, {fives} 5xx")
    for scheduler, memory in results.get("memory", {}).items():
        before, after = memory["rss_before_mb"], memory["rss_after_mb"]
        if before and after:
            lines.append(
                f"- **Memory back within 10 %** ({scheduler}): RSS {before:.0f} MB after warm-up, {after:.0f} MB "
                f"after the load ({after / before - 1:+.1%}): **{'pass' if after <= 1.1 * before else 'not reached'}**"
            )
    return lines


def write_report(results: dict, out: Path) -> None:
    cells = sorted(
        results["cells"], key=lambda c: (c["adapters"], c["concurrency"], list(LABELS).index(c["scheduler"]))
    )
    setup = results.get("setup", {})
    lines = [
        "# Serving load test: mixed-adapter batches vs one adapter per batch vs no batching",
        "",
        f"`{setup.get('command', 'python benchmarks/serving/run.py')}` on {setup.get('machine', '?')}; "
        f"`dept serve --model {setup.get('model')}` with max_batch_size {setup.get('max_batch_size')}, "
        f"max_wait_ms {setup.get('max_wait_ms')}, precision {setup.get('precision')}. Requests: "
        f"{setup.get('prompts')}, greedy, max_tokens {setup.get('max_tokens')}, round-robin over the adapters "
        f"(prompt lengths m = {setup.get('prompt_lengths')}; the first 1, 4 and 16 all average 24).",
        "",
        "## Targets",
        "",
        *targets(results),
        "",
        "## All cells",
        "",
        "| adapters | concurrency | scheduler | req/s | tokens/s | p50 (s) | p99 (s) | errors |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c['adapters']} | {c['concurrency']} | {LABELS[c['scheduler']]} | {c['requests_per_s']:.2f} | "
            f"{c['tokens_per_s']:.1f} | {c['p50_s']:.2f} | {c['p99_s']:.2f} | {c['errors']} |"
        )
    batching = results.get("batching", {})
    if batching:
        lines += ["", "Backbone calls per server over the whole run (`GET /health`):", ""]
        lines += [
            "| scheduler | prefill calls | largest prefill | decode steps | largest step |",
            "|---|---:|---:|---:|---:|",
        ]
        for scheduler, h in batching.items():
            lines.append(
                f"| {LABELS[scheduler]} | {h['prefill_calls']} | {h['largest_prefill']} | {h['steps']} | {h['largest_step']} |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(results["cells"], out / "throughput.png")


def _plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({c["concurrency"] for c in cells})
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), sharey=True, squeeze=False)
    for ax, level in zip(axes[0], levels):
        for scheduler, label in LABELS.items():
            points = sorted(
                (c["adapters"], c["requests_per_s"])
                for c in cells
                if c["scheduler"] == scheduler and c["concurrency"] == level
            )
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({c["adapters"] for c in cells}), [str(a) for a in sorted({c["adapters"] for c in cells})])
        ax.set_title(f"concurrency {level}")
        ax.set_xlabel("adapters in the load")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("requests / s")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("dept serve on SmolLM2-135M: throughput vs number of adapters")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    write_report(json.loads((folder / "results.json").read_text()), folder)
