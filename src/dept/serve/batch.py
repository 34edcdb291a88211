"""Rows of different adapters decoding together on one KV cache (continuous batching).

A DePT adapter only shapes a row's prefill, `[P ; E(x) + offsets]`; after that every row is the
plain backbone continuing its own cache. So new rows are prefilled together (mixed adapters, one
call) and then join the running batch: both caches are left-padded to one length and stacked, the
attention mask hides the padding, and each row keeps its own position ids. Finished rows leave by
index. What a row computes therefore does not depend on what it was batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from dept.core.kinds import cache_name
from dept.core.model import DePTModel
from dept.data import Encoded, pad_batch


@dataclass
class Rows:
    """Decoding state of some rows: their cache, attention mask over it, and next position ids."""

    cache: DynamicCache
    mask: torch.Tensor  # (B, T), 0 on padding
    positions: torch.Tensor  # (B,), the position id of each row's next token


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad)


class DecodeBatch:
    """The rows decoding now. Rows join only if the backbone's cache is plain per-layer key/value
    tensors (Llama, GPT-2, Qwen…); sliding-window or recurrent caches decode in fixed batches."""

    def __init__(self, model: DePTModel, pad_id: int):
        self.model = model
        self.backbone = model.base_model
        self.pad_id = pad_id
        self.state: Optional[Rows] = None
        self.joinable = True
        self.cache_name = cache_name(self.backbone)

    def __len__(self) -> int:
        return 0 if self.state is None else self.state.mask.shape[0]

    def prefill(self, prompts: Sequence[Sequence[int]], adapter_names: Sequence[str]) -> tuple[torch.Tensor, Rows]:
        """Logits of each prompt's next token (B, V), and the new rows' state (not yet joined)."""
        device = self.backbone.get_input_embeddings().weight.device
        batch = pad_batch([Encoded(list(p), []) for p in prompts], "causal", self.pad_id)
        out, mask, positions = self.model.prefill(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), list(adapter_names)
        )
        cache = out[self.cache_name]
        self.joinable = all(type(layer) is DynamicLayer for layer in cache.layers)
        return out.logits[:, -1], Rows(cache, mask, positions[:, -1] + 1)

    def join(self, new: Rows) -> None:
        """Append rows after the running ones (their order is the order of `prefill`'s prompts)."""
        if self.state is None:
            self.state = new
            return
        old = self.state
        width = max(old.mask.shape[1], new.mask.shape[1])
        layers = [
            (torch.cat([_left_pad(k0, width, -2), _left_pad(k1, width, -2)]),
             torch.cat([_left_pad(v0, width, -2), _left_pad(v1, width, -2)]))
            for (k0, v0), (k1, v1) in zip(_kv(old.cache), _kv(new.cache))
        ]  # fmt: skip
        mask = torch.cat([_left_pad(old.mask, width, 1), _left_pad(new.mask.to(old.mask.dtype), width, 1)])
        self.state = Rows(DynamicCache(ddp_cache_data=layers), mask, torch.cat([old.positions, new.positions]))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row its last token; logits of the next one (B, V)."""
        s = self.state
        s.mask = torch.cat([s.mask, s.mask.new_ones(len(s.mask), 1)], dim=1)
        out = self.backbone(
            input_ids=tokens[:, None].to(s.mask.device),
            attention_mask=s.mask,
            position_ids=s.positions[:, None],
            use_cache=True,
            **{self.cache_name: s.cache},
        )
        s.cache = out[self.cache_name]
        s.positions = s.positions + 1
        return out.logits[:, -1]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows (in this order); drops the padding columns no row needs any more."""
        if not rows:
            self.state = None
            return
        s = self.state
        index = torch.tensor(list(rows), device=s.mask.device)
        if len(index) == len(s.mask) and bool((index == torch.arange(len(index), device=index.device)).all()):
            return
        mask = s.mask[index]
        if not self.joinable:
            s.cache.batch_select_indices(index)
            s.mask, s.positions = mask, s.positions[index]
            return
        start = int(mask.any(0).nonzero()[0])
        layers = [(k[index, :, start:], v[index, :, start:]) for k, v in _kv(s.cache)]
        self.state = Rows(DynamicCache(ddp_cache_data=layers), mask[:, start:], s.positions[index])


GREEDY_BELOW = 1e-4  # a temperature under this samples greedily: logits / T would overflow, and argmax is the pick


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: Optional[torch.Generator]) -> int:
    """One token from one row's logits: greedy at temperature 0 (or below `GREEDY_BELOW`), else
    nucleus sampling with the row's own generator (so a seeded request samples the same tokens in
    any batch). The most likely token always stays in the nucleus, however small `top_p` is."""
    if temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = (logits.float() / temperature).softmax(-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs >= top_p
        outside[0] = False  # a top_p too small for float32 would otherwise drop every token
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs.masked_fill(outside, 0))
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
