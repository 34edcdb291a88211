"""How large are the input embeddings a DePT adapter adds to, per backbone?

With Adam every parameter moves about `lr` per step whatever its gradient's size, so a learning
rate means something only relative to the scale of what it changes: the prompt P lives among the
token embeddings, and the offsets (α/√r)·A·B are added to them. This script measures that scale,
the RMS of what the embedding layer outputs (embedding-scale multipliers such as Gemma's √d
included) over the whole vocabulary, for the offline backbones, and for T5-Base through the
official DePT checkpoints' prompts (initialised from T5-Base's vocabulary, then trained).

    .venv/bin/python benchmarks/quality/embedding_scale.py [--official ../shared/reference/dept-official]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent


def embedding_rms(name: str) -> dict:
    from dept import load_backbone
    from dept.core.rates import embedding_rms as rms

    model, _ = load_backbone(name)
    vocab, hidden = model.get_input_embeddings().weight.shape
    return {"backbone": name, "hidden_size": hidden, "vocab_size": vocab, "embedding_rms": rms(model)}


def official_prompt_rms(folder: Path) -> list[dict]:
    from dept.core.checkpoint import read_adapter

    rows = []
    for task in sorted(p for p in folder.iterdir() if (p / "adapter_config.json").is_file()):
        config, tensors, _ = read_adapter(task)
        prompt = tensors["prompt_embeddings"].float()
        rows.append({"backbone": f"t5-base (official DePT {task.name} prompt)", "hidden_size": prompt.shape[1],
                     "prompt_rms": float(prompt.pow(2).mean().sqrt())})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--official", type=Path, default=HERE.parents[2] / "shared" / "reference" / "dept-official")
    args = parser.parse_args()
    rows = []
    for name in args.backbones.split(","):
        try:
            rows.append(embedding_rms(name))
        except (OSError, ValueError, ImportError) as err:
            print(f"skipping {name}: {err}")
    if args.official.is_dir():
        rows += official_prompt_rms(args.official)
    (HERE / "embedding_scale.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "# Scale of the input embeddings per backbone",
        "",
        "`python benchmarks/quality/embedding_scale.py`: RMS of the embedding layer's output over the whole",
        "vocabulary (Gemma's sqrt(d) multiplier included). T5-Base's weights are not available offline; its",
        "column is the RMS of the official DePT prompts (initialised from its vocabulary, then trained).",
        "",
        "| backbone | d | RMS of the input embeddings | RMS of a trained prompt |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        emb = f"{r['embedding_rms']:.4f}" if "embedding_rms" in r else ""
        prompt = f"{r['prompt_rms']:.3f}" if "prompt_rms" in r else ""
        lines.append(f"| {r['backbone']} | {r['hidden_size']} | {emb} | {prompt} |")
    (HERE / "embedding_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
