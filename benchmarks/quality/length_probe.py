"""Tests one explanation of DePT's SST-2 test gap in results.md. DePT's low-rank update is indexed
by token position; SST-2's training phrases are short (median 10 tokens), its test sentences long
(median 24), so rows of A past the training lengths get no gradient yet still multiply the trained
B. If that were the cause, DePT would trail PT mostly on long test inputs and recover with those
rows zeroed. This scores the adapters on test by input length, and DePT once more with the update
cut off at `--cutoff` positions. (Measured: it is not the cause; see length_probe.md.)

    .venv/bin/python benchmarks/quality/length_probe.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dept import DePTModel, load_backbone
from dept.scoring import evaluate
from dept.tasks import get_task

REPO = Path(__file__).resolve().parents[2]


def accuracy(task, predictions, examples, keep) -> float:
    picked = [(p, e) for p, e, k in zip(predictions, examples, keep) if k]
    return task.metrics([p for p, _ in picked], [e for _, e in picked])["accuracy"]


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    cli.add_argument(
        "--adapters",
        nargs="+",
        type=Path,
        default=[REPO / "runs" / "quality" / "glue-sst2" / m / "best" for m in ("pt", "dept")],
    )
    cli.add_argument("--cutoff", type=int, default=27, help="90th percentile of SST-2 training lengths (tokens).")
    cli.add_argument("--test-samples", type=int, default=500)
    args = cli.parse_args()
    task = get_task("glue/sst2")
    test = task.load(data_dir=args.data_dir, split_rule="paper", seed=42)["test"][: args.test_samples]
    backbone, tokenizer = load_backbone("smollm2-135m")
    long = [len(tokenizer(e.source)["input_ids"]) > args.cutoff for e in test]
    rows = []
    for folder in args.adapters:
        model = DePTModel.from_pretrained(backbone, folder, tokenizer=tokenizer)
        variants = [("as trained", None)]
        if model.dept_config.rank > 0:
            variants.append((f"A rows >= {args.cutoff} zeroed", args.cutoff))
        for name, cutoff in variants:
            if cutoff is not None:
                with torch.no_grad():
                    model.adapters[model.active_adapter].lora_embedding_A[cutoff:] = 0
            _, predictions = evaluate(model, tokenizer, "causal", task, test, 256, batch_size=32, precision="bf16")
            rows.append(
                {
                    "adapter": str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder),
                    "variant": name,
                    "all": accuracy(task, predictions, test, [True] * len(test)),
                    "short": accuracy(task, predictions, test, [not x for x in long]),
                    "long": accuracy(task, predictions, test, long),
                }
            )
            print(rows[-1], flush=True)
    lines = [
        f"SST-2 test accuracy by input length (short: <= {args.cutoff} tokens, {long.count(False)} examples; "
        f"long: {long.count(True)} examples)",
        "",
        "| adapter | variant | all | short | long |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['adapter']} | {r['variant']} | {r['all']:.1f} | {r['short']:.1f} | {r['long']:.1f} |" for r in rows
    ]
    out = REPO / "benchmarks" / "quality"
    (out / "length_probe.json").write_text(json.dumps({"cutoff": args.cutoff, "rows": rows}, indent=2))
    (out / "length_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
