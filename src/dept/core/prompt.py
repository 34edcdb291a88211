"""The adapter (prompt P plus a DePT or ADePT update) and the one function that turns a batch's input
embeddings into the backbone's inputs: prompt prepended, offsets added out of place.

Offsets follow each row's *real* token positions (from the attention mask), so a left-padded row,
a right-padded row and the same row unpadded all get the same update: no padding to s is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dept.core.config import DePTConfig

# A is drawn from seed + this, P from seed: two streams, so a random P and A are not correlated.
LOWRANK_SEED_OFFSET = 1_000_003
TOKEN_UPDATE_DROPOUT = 0.1


class DePTAdapter(nn.Module):
    """P (m×d) and the update's tensors (`DePTConfig.update_shapes`), initialised as the official
    codes: A kaiming-uniform, the rest zeros, so step 0 is exactly prompt tuning with the short
    prompt. `head` holds this adapter's own copy of a classifier's task head (empty for LMs)."""

    def __init__(
        self,
        config: DePTConfig,
        hidden_size: int,
        prompt_init: Optional[torch.Tensor] = None,
        head: Optional[dict[str, nn.Module]] = None,
    ):
        super().__init__()
        self.config = config
        if prompt_init is None:
            generator = torch.Generator().manual_seed(config.seed)
            prompt_init = torch.randn(config.prompt_length, hidden_size, generator=generator)
        if tuple(prompt_init.shape) != (config.prompt_length, hidden_size):
            raise ValueError(
                f"prompt init has shape {tuple(prompt_init.shape)}, expected ({config.prompt_length}, {hidden_size})."
            )
        self.prompt_embeddings = nn.Parameter(prompt_init.detach().clone().float())
        # Prompt tuning (rank 0) has no update tensors at all: zero-size trainable tensors never reach the
        # loss, and DDP fails on parameters that get no gradient.
        for name, shape in config.update_shapes(hidden_size).items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        for name in ("lora_embedding_A", "lora_embedding_B"):
            if not hasattr(self, name):
                self.register_parameter(name, None)
        if config.rank:
            # Its own stream: drawn from the prompt's seed, A would be correlated with a random P.
            generator = torch.Generator().manual_seed(config.seed + LOWRANK_SEED_OFFSET)
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.lora_embedding_A, a=math.sqrt(5), generator=generator)
        # ADePT's dropout on e·A + a (the official 0.1); a no-op in eval mode, so rows stay independent.
        self.dropout = nn.Dropout(TOKEN_UPDATE_DROPOUT if config.update == "token" else 0.0)
        self.head = nn.ModuleDict(head or {})

    @property
    def prompt_length(self) -> int:
        return self.config.prompt_length

    @property
    def has_update(self) -> bool:
        return bool(self.config.rank)

    @property
    def max_positions(self) -> Optional[int]:
        """The longest input the adapter can take: DePT's A covers s positions; PT and ADePT have no table."""
        return self.config.max_length if self.has_update and self.config.update == "position" else None

    def offsets(self, embeds: torch.Tensor, positions: torch.Tensor, offset_mask: torch.Tensor) -> torch.Tensor:
        """The offset of every token, (…, L, d) in fp32, from its embedding and its position among the
        row's real tokens; `offset_mask` marks the tokens that will get it (only those are length-checked).
        DePT reads (α/√r)·A[pos]·B; ADePT computes ReLU(dropout(e·A + a))·B + b."""
        if self.config.update == "token":
            hidden = self.dropout(
                embeds.to(self.lora_embedding_A.dtype) @ self.lora_embedding_A + self.lora_embedding_a
            )
            return F.relu(hidden) @ self.lora_embedding_B + self.lora_embedding_b
        _check_length(self, positions, offset_mask)
        # Tokens past s (a causal answer after a long source) get no offset: clamp only to look up.
        reachable = positions.clamp(max=self.config.max_length - 1)
        return F.embedding(reachable, self.lora_embedding_A) @ self.lora_embedding_B * self.config.scaling


@dataclass
class PromptedInputs:
    """What the backbone receives; `order` maps every output slot to a slot of [prompt ; input],
    so per-token tensors (labels, token types) can be laid out the same way with `carry`."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    order: torch.Tensor
    prompt_slots: int

    def carry(self, values: torch.Tensor, prompt_fill: int) -> torch.Tensor:
        fill = values.new_full((values.shape[0], self.prompt_slots), prompt_fill)
        return torch.cat([fill, values], dim=1).gather(1, self.order)


AdapterGroup = tuple[Optional[DePTAdapter], Optional[torch.Tensor]]


def prepend_prompts(
    inputs_embeds: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    groups: Sequence[AdapterGroup],
    padding_side: Literal["left", "right"],
    offset_mask: Optional[torch.Tensor] = None,
) -> PromptedInputs:
    """Apply DePT/ADePT to a batch. `groups` pairs each adapter (None = no adapter) with the rows it
    serves (None = all rows). Each row becomes [P ; E + offsets] with its real tokens contiguous,
    padded on `padding_side`, so rows of different prompt lengths share one batch.

    Offsets go to the tokens `offset_mask` marks (default: every real token), at their position
    among the row's real tokens: the input a causal LM conditions on, not its answer."""
    batch, _, hidden = inputs_embeds.shape
    mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    if attention_mask is not None:
        mask = attention_mask.to(torch.long)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    offset_mask = mask if offset_mask is None else offset_mask.to(torch.long) * mask
    slots = max((adapter.prompt_length for adapter, _ in groups if adapter is not None), default=0)
    prompt = inputs_embeds.new_zeros(batch, slots, hidden)
    prompt_mask = mask.new_zeros(batch, slots)
    offsets = torch.zeros_like(inputs_embeds)
    for adapter, rows in groups:
        if adapter is None:
            continue
        rows = torch.arange(batch, device=mask.device) if rows is None else rows
        m = adapter.prompt_length
        prompt[rows, slots - m :] = adapter.prompt_embeddings.to(prompt.dtype)
        prompt_mask[rows, slots - m :] = 1
        if adapter.has_update and len(rows):
            update = adapter.offsets(inputs_embeds[rows], positions[rows], offset_mask[rows])
            offsets = offsets.index_add(0, rows, update.to(offsets.dtype))
    inputs_embeds = inputs_embeds + offsets * offset_mask.unsqueeze(-1).to(offsets.dtype)

    full_embeds = torch.cat([prompt, inputs_embeds], dim=1)
    full_mask = torch.cat([prompt_mask, mask], dim=1)
    # Stable sort on the mask moves padding to one side and keeps the real tokens in order.
    order = torch.argsort(full_mask if padding_side == "left" else 1 - full_mask, dim=1, stable=True)
    compact_mask = full_mask.gather(1, order)
    return PromptedInputs(
        inputs_embeds=full_embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden)),
        attention_mask=compact_mask,
        position_ids=(compact_mask.cumsum(1) - 1).clamp(min=0),
        order=order,
        prompt_slots=slots,
    )


def _check_length(adapter: DePTAdapter, positions: torch.Tensor, offset_mask: torch.Tensor) -> None:
    longest = int(((positions + 1) * offset_mask).max())
    if longest > adapter.config.max_length:
        raise ValueError(
            f"Input of {longest} tokens is longer than the adapter's max_length of {adapter.config.max_length}; "
            "truncate inputs to max_length (the tokenization helpers do) or use an adapter with a larger max_length."
        )


def initial_prompt(config: DePTConfig, embeddings: nn.Module, vocab_size: int, tokenizer=None) -> torch.Tensor:
    """The prompt's starting values, drawn from the backbone's own embedding (so its scale fits)."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.prompt_init == "random":
        weight = embeddings.weight
        return torch.randn(config.prompt_length, weight.shape[1], generator=generator)
    if config.prompt_init == "vocab":
        token_ids = torch.randint(0, vocab_size, (config.prompt_length,), generator=generator)
    else:
        if tokenizer is None:
            raise ValueError(
                "prompt_init='text' needs the backbone's tokenizer: pass DePTModel(model, config, tokenizer=tok), "
                "or use prompt_init='vocab' or 'random'."
            )
        # Special tokens included, as the official code (T5's </s> is part of its init).
        ids = tokenizer(config.init_text)["input_ids"]
        if not ids:
            raise ValueError(f"init_text {config.init_text!r} tokenizes to nothing; choose another init_text.")
        repeats = math.ceil(config.prompt_length / len(ids))
        token_ids = torch.tensor((ids * repeats)[: config.prompt_length])
    weight = embeddings.weight
    with torch.no_grad():
        return embeddings(token_ids.to(weight.device)).detach().float().cpu()
