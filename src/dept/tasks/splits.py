"""Split rules of the DePT paper (Shi & Lipani, ICLR 2024; the ATTEMPT rule), deterministic from a seed.

``split_rule="paper"`` (the DePT / ATTEMPT rule, default):

- small sets (CoLA, RTE, MRPC, STS-B, WNLI, CB, COPA, WiC, WSC, BoolQ, MultiRC, SuperGLUE RTE):
  train = official train; the official dev set is shuffled, validation = its first ``n // 2``
  items, test = the other ``n - n // 2`` (RTE 277 -> 138 / 139, CoLA 1043 -> 521 / 522);
- large sets (SST-2, QNLI, QQP): the official train set is shuffled, validation = its first 1000
  items, train = the rest (in shuffled order), test = the official dev set;
- MNLI: train = official train, validation = dev mismatched, test = dev matched.

``split_rule="official"``: train = official train, validation = official dev, and test = the
same official dev set again (the official test labels are hidden, so there is no labelled test
set; "test" numbers under this rule are dev numbers). For MNLI validation = test = dev matched and
the extra key ``"validation_mismatched"`` holds dev mismatched.

Shuffling (``shuffle=``):

- ``"python"`` (default): ``random.Random(seed).shuffle`` of ``range(n)``; identical on every
  platform and Python version >= 3.2.
- ``"torch"``: ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``, the exact
  permutation of the official DePT code (``AbstractTask.shuffled_indices``), so that with the same
  file order as the Hugging Face datasets the validation/test examples are the paper's. torch is
  imported only when asked for. In this mode grouping is ignored (the official code splits MultiRC
  by answer, so answers of one question can straddle validation and test).

Groups (MultiRC): with ``shuffle="python"`` the *groups* (questions) are shuffled and halved, so all
answers of a question stay in the same split; "half" then counts questions (953 -> 476 / 477).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")

SPLIT_RULES = ("paper", "official")
SHUFFLES = ("python", "torch")
LARGE_VALIDATION_SIZE = 1000


def permutation(n: int, seed: int, shuffle: str = "python") -> list[int]:
    """A deterministic permutation of ``range(n)``."""
    if shuffle == "python":
        idx = list(range(n))
        random.Random(seed).shuffle(idx)
        return idx
    if shuffle == "torch":
        import torch  # only for reproducing the official split indices

        gen = torch.Generator()
        gen.manual_seed(seed)
        return torch.randperm(n, generator=gen).tolist()
    raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")


def split_half(
    items: Sequence[T],
    seed: int,
    *,
    shuffle: str = "python",
    group_of: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """Shuffle ``items`` and cut them in two: ``(first n // 2, remaining n - n // 2)``.

    With ``group_of`` (and ``shuffle="python"``) whole groups are shuffled and cut, keeping each
    group's items together and in their original order.
    """
    if group_of is None or shuffle == "torch":
        perm = permutation(len(items), seed, shuffle)
        half = len(items) // 2
        return [items[i] for i in perm[:half]], [items[i] for i in perm[half:]]
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(group_of(item), []).append(item)
    keys = list(groups)
    perm = permutation(len(keys), seed, shuffle)
    half = len(keys) // 2
    first = [x for i in perm[:half] for x in groups[keys[i]]]
    second = [x for i in perm[half:] for x in groups[keys[i]]]
    return first, second


def hold_out(items: Sequence[T], n_out: int, seed: int, *, shuffle: str = "python") -> tuple[list[T], list[T]]:
    """Shuffle ``items``; return ``(rest, held_out)`` with ``len(held_out) == n_out``."""
    if len(items) <= n_out:
        raise ValueError(f"cannot hold out {n_out} validation examples from a training set of {len(items)}")
    perm = permutation(len(items), seed, shuffle)
    return [items[i] for i in perm[n_out:]], [items[i] for i in perm[:n_out]]
