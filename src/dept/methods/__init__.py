"""The methods `dept train` compares, by name: one object each knows how to build, train, save and
restore its model (`Method`). Adding a method is adding an entry here.

- pt: vanilla prompt tuning, a prompt of l = --budget tokens (DePT with r = 0);
- dept: DePT, a prompt of m tokens plus a position-wise low-rank update (Shi & Lipani, ICLR 2024);
- adept: ADePT, the same with a token-wise update (Tang et al., ICLR 2025);
- lora, full: the baselines (peft LoRA, full fine-tuning).
"""

from __future__ import annotations

from dept.errors import UsageError
from dept.methods.base import Method, num_trainable
from dept.methods.baselines import FullFineTuning, LoRA, load_full_state, lora_config
from dept.methods.prompt import PromptMethod

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        PromptMethod("dept", "DePT: m prompt tokens + position-wise update A[pos]·B", update="position"),
        PromptMethod("pt", "prompt tuning: l = --budget prompt tokens", update=None),
        PromptMethod("adept", "ADePT: m prompt tokens + token-wise update ReLU(e·A + a)·B + b", update="token"),
        LoRA(),
        FullFineTuning(),
    )
}


def get_method(name: str) -> Method:
    if not isinstance(name, str) or name not in METHODS:
        raise UsageError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "Method", "PromptMethod", "get_method", "load_full_state", "lora_config", "num_trainable"]
