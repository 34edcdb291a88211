"""Few-shot sampling."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from dept.tasks.registry import Example

logger = logging.getLogger(__name__)


def k_shot(examples: Sequence[Example], k: int, seed: int = 42) -> list[Example]:
    """Class-balanced few-shot sample: ``k`` examples per class label (``k`` in total when the
    labels are floats or None, i.e. regression / generation), deterministic from ``seed``.

    Classes are visited in sorted label order and sampled with one ``random.Random(seed)``; a class
    with fewer than ``k`` examples contributes all of them (with a warning). The result is shuffled
    with the same generator, so it does not list the classes in blocks.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = random.Random(seed)
    items = list(examples)
    classification = bool(items) and all(isinstance(e.label, int) and not isinstance(e.label, bool) for e in items)
    if not classification:
        if len(items) < k:
            logger.warning("k_shot: only %d examples for k=%d", len(items), k)
        return rng.sample(items, min(k, len(items)))
    by_label: dict[int, list[Example]] = {}
    for e in items:
        by_label.setdefault(e.label, []).append(e)
    out: list[Example] = []
    for label in sorted(by_label):
        pool = by_label[label]
        if len(pool) < k:
            logger.warning("k_shot: class %s has only %d examples (k=%d); taking all", label, len(pool), k)
        out.extend(rng.sample(pool, min(k, len(pool))))
    rng.shuffle(out)
    return out
