"""How far did training move the adapter? The soft prompt's RMS and the RMS of the offset it adds to the
input embeddings, both against the RMS of the backbone's embeddings.

An offset far below the embeddings' scale changes the backbone's input by that fraction: it cannot be
what separates DePT from prompt tuning with its prompt alone. DePT's offset (α/√r)·A·B is read at
every one of its s positions; ADePT's ReLU(e·A + a)·B + b at every token of the vocabulary. The
offset's mean over those rows is the part every input shares (for ADePT, b plus the FFN's mean
output; b is also reported alone): an update that is mostly its mean shifts every embedding alike
and says little about the token or position. With --out, rows of adapters measured earlier are kept
(the suite does not keep adapters, so an earlier row cannot be measured again).

    .venv/bin/python benchmarks/quality/offset_size.py --model smollm2-135m RUN_OR_ADAPTER [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dept.backbones import load_backbone
from dept.core.checkpoint import read_adapter
from dept.core.rates import embedding_rms


def rms(t: torch.Tensor) -> float:
    return t.float().pow(2).mean().sqrt().item()


def adapter_folder(path: Path) -> Path:
    """A run folder holds its adapter in best/ (or last/); an adapter folder is itself."""
    for candidate in (path, path / "best", path / "last"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise SystemExit(f"{path}: no adapter_config.json there or in best/ or last/.")


def with_earlier_rows(rows: list[dict], out: Path | None, key: str) -> list[dict]:
    """The rows already in OUT's .json that were not measured again, then these: the suite keeps no
    adapters, so a row measured once cannot be measured again."""
    if not (out and out.with_suffix(".json").is_file()):
        return rows
    measured = {r[key] for r in rows}
    return [r for r in json.loads(out.with_suffix(".json").read_text()) if r[key] not in measured] + rows


def write_table(text: str, rows: list[dict], out: Path | None) -> None:
    """Print the table; with --out also write it, and its rows as .json beside it."""
    print(text)
    if out:
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


@torch.no_grad()
def offsets(config, tensors: dict[str, torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor | None:
    """One offset row per position (DePT) or per vocabulary token (ADePT)."""
    if not config.rank:
        return None
    if config.update == "token":
        a, b = tensors["lora_embedding_a"], tensors["lora_embedding_b"]
        hidden = torch.relu(embeddings @ tensors["lora_embedding_A"] + a)
        return hidden @ tensors["lora_embedding_B"] + b
    return tensors["lora_embedding_A"] @ tensors["lora_embedding_B"] * config.scaling


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=None, help="Table (Markdown), .json beside; keeps its rows.")
    args = parser.parse_args(argv)
    try:  # adapters first: a wrong path or file fails before the backbone loads
        adapters = [read_adapter(adapter_folder(path))[:2] for path in args.adapters]
        backbone, _ = load_backbone(args.model, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    embeddings = backbone.get_input_embeddings().weight.detach().float()
    scale = embedding_rms(backbone)
    rows = []
    for path, (config, tensors) in zip(args.adapters, adapters):
        tensors = {k: v.float() for k, v in tensors.items()}
        offset = offsets(config, tensors, embeddings)
        rows.append(
            {"adapter": str(path), "update": config.update if config.rank else "none", "rank": config.rank,
             "prompt_rms": rms(tensors["prompt_embeddings"]), "embedding_rms": scale,
             "offset_rms": None if offset is None else rms(offset),
             "offset_mean_rms": None if offset is None else rms(offset.mean(0)),
             "bias_rms": rms(tensors["lora_embedding_b"]) if "lora_embedding_b" in tensors else None}
        )  # fmt: skip
    rows = with_earlier_rows(rows, args.out, key="adapter")
    lines = [
        f"Embedding RMS of {args.model}: {scale:.4g}. Every size is over it. Shared part: the offset's mean over",
        "its rows; b: ADePT's bias alone (- where there is none or the row predates that column).",
        "",
        "| adapter | update | rank | prompt RMS / embedding RMS | offset RMS / embedding RMS | its shared part | b |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        offset, shared, bias = (
            "-" if r.get(k) is None else f"{r[k] / r['embedding_rms']:.2e}"
            for k in ("offset_rms", "offset_mean_rms", "bias_rms")
        )
        lines.append(
            f"| {r['adapter']} | {r['update']} | {r['rank']} | {r['prompt_rms'] / r['embedding_rms']:.3g} | "
            f"{offset} | {shared} | {bias} |"
        )
    write_table("\n".join(lines) + "\n", rows, args.out)


if __name__ == "__main__":
    main()
