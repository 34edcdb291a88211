"""DePTConfig: the few numbers that define one DePT or ADePT adapter, validated and JSON-serialisable.

Two kinds of update share the prompt and everything around it (`update`):
- "position" (DePT, Shi & Lipani 2024): token at position i gets (α/√r)·A[i]·B, A (s×r), B (r×d);
- "token" (ADePT, Tang et al. 2025): token embedding e gets ReLU(dropout(e·A + a))·B + b, A (d×r), a (r),
  B (r×d), b (d). It has no position table, so its cost does not depend on s, and, as in the official
  code, it does not apply lora_alpha/√r (which that code computes and never uses).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The official code's init text, typo included, so TEXT-initialised prompts match their checkpoints.
OFFICIAL_INIT_TEXT = "Classify this text is postive or not:"
PROMPT_INITS = ("text", "vocab", "random")
UPDATES = ("position", "token")  # DePT, ADePT


@dataclass
class DePTConfig:
    """One adapter: a soft prompt of `prompt_length` vectors plus a rank-`rank` update of the input
    embeddings, position-wise (DePT: the first `max_length` positions) or token-wise (ADePT).
    `rank=0` is vanilla prompt tuning, whatever the update."""

    prompt_length: int = field(
        default=60, metadata={"help": "m: number of soft-prompt vectors prepended to the input."}
    )
    rank: int = field(default=30, metadata={"help": "r: rank of the embedding update; 0 = vanilla prompt tuning."})
    max_length: int = field(
        default=256,
        metadata={
            "help": "s: longest input (in tokens) a position-wise A (s×r) covers; token-wise updates have no limit."
        },
    )
    lora_alpha: float = field(
        default=8.0,
        metadata={"help": "Position-wise update scale lora_alpha / sqrt(rank), as in the official DePT code."},
    )
    update: str = field(
        default="position",
        metadata={"help": "position (DePT: offsets A[pos]·B) or token (ADePT: offsets ReLU(e·A + a)·B + b)."},
    )
    prompt_init: str = field(
        default="text",
        metadata={"help": "text (tokens of init_text, cycled), vocab (random vocabulary rows) or random (N(0,1))."},
    )
    init_text: str = field(
        default=OFFICIAL_INIT_TEXT,
        metadata={"help": "Text whose token embeddings initialise the prompt when prompt_init='text'."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for the adapter's random initialisation."})

    def __post_init__(self) -> None:
        for name in ("prompt_length", "rank", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"DePTConfig.{name} must be an integer, got {value!r}.")
        if self.prompt_length < 1:
            raise ValueError(f"DePTConfig.prompt_length must be >= 1, got {self.prompt_length}.")
        if self.rank < 0:
            raise ValueError(f"DePTConfig.rank must be >= 0 (0 = vanilla prompt tuning), got {self.rank}.")
        if self.max_length < 1:
            raise ValueError(f"DePTConfig.max_length must be >= 1, got {self.max_length}.")
        if not isinstance(self.lora_alpha, (int, float)) or not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"DePTConfig.lora_alpha must be a positive number, got {self.lora_alpha!r}.")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(f"DePTConfig.prompt_init must be one of {PROMPT_INITS}, got {self.prompt_init!r}.")
        if self.update not in UPDATES:
            raise ValueError(f"DePTConfig.update must be one of {UPDATES}, got {self.update!r}.")
        if self.prompt_init == "text" and not self.init_text:
            raise ValueError("DePTConfig.init_text must be non-empty when prompt_init='text'.")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / math.sqrt(self.rank) if self.rank else 0.0

    def update_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """The update's tensors by their saved names (the official codes' names); none at rank 0."""
        r, d = self.rank, hidden_size
        if not r:
            return {}
        if self.update == "position":
            return {"lora_embedding_A": (self.max_length, r), "lora_embedding_B": (r, d)}
        return {
            "lora_embedding_A": (d, r),
            "lora_embedding_B": (r, d),
            "lora_embedding_a": (r,),
            "lora_embedding_b": (d,),
        }

    def num_trainable(self, hidden_size: int) -> int:
        """m·d plus the update (DePT s·r + r·d; ADePT r·(2d + 1) + d): what the budget rule equates with PT's l·d."""
        return self.prompt_length * hidden_size + sum(math.prod(s) for s in self.update_shapes(hidden_size).values())

    @classmethod
    def from_budget(
        cls, budget_tokens: int, prompt_length: int, hidden_size: int, max_length: int = 256, **kwargs: Any
    ) -> DePTConfig:
        """The largest rank within PT's l·d: DePT r = floor((l − m)·d / (s + d)); ADePT (`update="token"`)
        r = floor(((l − m)·d − d) / (2d + 1)), independent of s (T5-Base, l=100, m=60: r = 19)."""
        if prompt_length > budget_tokens:
            raise ValueError(
                f"prompt_length ({prompt_length}) exceeds the budget of {budget_tokens} prompt tokens; "
                "choose prompt_length <= budget_tokens."
            )
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}.")
        spare = (budget_tokens - prompt_length) * hidden_size
        if kwargs.get("update", "position") == "token":
            rank = max(0, spare - hidden_size) // (2 * hidden_size + 1)
        else:
            rank = spare // (max_length + hidden_size)
        return cls(prompt_length=prompt_length, rank=rank, max_length=max_length, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DePTConfig:
        if not isinstance(data, dict):
            raise ValueError(f"A DePTConfig must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown DePTConfig field(s) {unknown}; allowed fields are {sorted(known)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DePTConfig:
        """Parse JSON text, or read it from a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"DePTConfig JSON is malformed: {err}") from err
        return cls.from_dict(data)
