"""Prompted input embeddings for serving a DePT adapter with an engine that takes `prompt_embeds`.

vLLM dropped prompt adapters in 2025; it serves soft prompts through per-request `prompt_embeds`
instead. A DePT row is exactly such a tensor: `[P ; E(x) + offsets]`, the `(m + L, d)` rows
DePTModel hands its causal backbone as `inputs_embeds`. vLLM has no encoder-decoder path, so only
decoder-only adapters export, and it warns that a malformed tensor can crash its engine, so every
tensor is checked here before it leaves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from dept.core.model import BASE, DePTModel


def export_prompt_embeds(
    dm: DePTModel, tokenizer, texts: Sequence[str], adapter_name: str = "default"
) -> list[torch.Tensor]:
    """One `(m + L, d)` tensor per text: `[P ; E(x) + offsets]`, with the offsets on every token of
    the text (it is all source), tokenized as dept does (`dept.data.encode`, special tokens
    included). Tensors are detached, on the CPU, in the backbone's embedding dtype; feeding one
    (unsqueezed) to the backbone as `inputs_embeds` gives DePTModel's output for that text.

    A text longer than a DePT adapter's max_length s (the positions its update covers) raises instead
    of being cut, so what is served is never silently another input; PT and ADePT take any length.
    ADePT's offsets depend on each token's embedding, so they are computed here, as in the model."""
    if dm.kind != "causal":
        raise ValueError(
            f"export_prompt_embeds needs a decoder-only (causal) backbone; this one is {dm.kind}. vLLM takes "
            "prompt_embeds for decoder-only models only (it has no encoder-decoder or classifier path), "
            "so serve this adapter with DePTModel instead."
        )
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings; wrap a single text in a list.")
    if adapter_name == BASE:
        raise ValueError(f"{BASE!r} is the plain backbone, with nothing to export; send vLLM the text itself.")
    dm._check_names([adapter_name])
    config = dm.adapters[adapter_name].config
    max_length = dm.adapters[adapter_name].max_positions
    embedding = dm.base_model.get_input_embeddings().weight
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a string.")
        ids = tokenizer(text)["input_ids"]  # = dept.data.encode(tokenizer, text, None, "causal", s) when it fits
        if not ids:
            raise ValueError(f"texts[{i}] tokenizes to no tokens; give a non-empty text.")
        if max_length is not None and len(ids) > max_length:
            raise ValueError(
                f"texts[{i}] is {len(ids)} tokens long, more than the max_length of {max_length} tokens of adapter "
                f"{adapter_name!r}; shorten it (dept.data.encode, as training does, would keep its first {max_length})."
            )
        input_ids = torch.tensor([ids], device=embedding.device)
        with torch.no_grad(), _inference(dm.adapters[adapter_name]):
            p = dm.prompted_inputs(input_ids, torch.ones_like(input_ids), adapter_names=[adapter_name])
        rows = (config.prompt_length + len(ids), dm.hidden_size)
        out.append(_checked(p.inputs_embeds[0].detach().to("cpu", copy=True), i, rows, embedding.dtype))
    return out


@contextlib.contextmanager
def _inference(adapter: torch.nn.Module) -> Iterator[None]:
    """Served embeddings are the eval-mode ones (no ADePT dropout), even from a model left in training mode."""
    training = adapter.training
    adapter.eval()
    try:
        yield
    finally:
        adapter.train(training)


def _checked(t: torch.Tensor, i: int, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """vLLM may crash on a malformed prompt_embeds tensor: refuse one before anyone sends it."""
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise ValueError(
            f"texts[{i}]: the exported tensor has shape {tuple(t.shape)} and dtype {t.dtype}; expected {shape} (m + L, d) "
            f"in {dtype}."
        )
    if not torch.isfinite(t).all():
        raise ValueError(
            f"texts[{i}]: the prompted embeddings hold NaN or inf; the adapter or backbone weights are not finite."
        )
    return t
