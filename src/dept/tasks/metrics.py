"""Task metrics on parsed predictions, reported in percent (x100) like the DePT paper.

Every function here takes *parsed* predictions and references:

- classification: label ids (``int``); a prediction of ``None`` means "not a valid label"
  (unparseable generation) and always counts as wrong, never crashes;
- regression: floats; ``None`` means "not a number".

How an invalid prediction is counted wrong, metric by metric:

- accuracy / exact match: it never equals the reference;
- binary F1 and Matthews correlation (two classes): it is replaced by the opposite of its
  reference (the official DePT/T5 ``f1_score_with_invalid`` rule), so it is a false positive or a
  false negative;
- macro-F1 (several classes): it becomes an extra class ``-1`` outside ``labels=range(k)``, so it
  is a miss for its true class and a false positive for none;
- Pearson / Spearman: it is replaced by the end of the valid score range farthest from its
  reference (0 for a reference >= the midpoint, else the top), the most wrong valid score.

A correlation that is undefined (constant predictions) is reported as 0.0, as the official code
does.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from dept._extras import requires

Pred = int | float | None


def _sklearn_metrics():
    """scikit-learn and scipy load on first use (the [tasks] extra): listing tasks needs neither."""
    with requires("tasks"):
        from sklearn import metrics

    return metrics


def _scipy_stats():
    with requires("tasks"):
        from scipy import stats

    return stats


def _check(preds: Sequence[Pred], refs: Sequence[Pred]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions for {len(refs)} references")
    if len(refs) == 0:
        raise ValueError("cannot compute metrics on an empty list of predictions")
    if any(r is None for r in refs):
        raise ValueError("a reference is None: references must be valid labels")


def _flip_invalid_binary(preds: Sequence[Pred], refs: Sequence[int]) -> list[int]:
    return [int(p) if p is not None else 1 - int(r) for p, r in zip(preds, refs)]


def accuracy(preds: Sequence[Pred], refs: Sequence[Pred]) -> float:
    _check(preds, refs)
    return 100.0 * sum(p is not None and p == r for p, r in zip(preds, refs)) / len(refs)


def binary_f1(preds: Sequence[Pred], refs: Sequence[int]) -> float:
    """F1 of the positive class (label id 1)."""
    _check(preds, refs)
    p = _flip_invalid_binary(preds, refs)
    return 100.0 * float(_sklearn_metrics().f1_score(list(refs), p, pos_label=1, zero_division=0))


def matthews(preds: Sequence[Pred], refs: Sequence[int]) -> float:
    _check(preds, refs)
    labels = set(refs) | {p for p in preds if p is not None}
    p = _flip_invalid_binary(preds, refs) if labels <= {0, 1} else [-1 if x is None else x for x in preds]
    with warnings.catch_warnings():  # single-class inputs: sklearn warns and returns 0
        warnings.simplefilter("ignore")
        value = float(_sklearn_metrics().matthews_corrcoef(list(refs), p))
    return 0.0 if math.isnan(value) else 100.0 * value


def macro_f1(preds: Sequence[Pred], refs: Sequence[int], num_labels: int) -> float:
    _check(preds, refs)
    p = [-1 if x is None else int(x) for x in preds]
    return 100.0 * float(
        _sklearn_metrics().f1_score(list(refs), p, labels=list(range(num_labels)), average="macro", zero_division=0)
    )


def _fill_regression(preds: Sequence[Pred], refs: Sequence[float], value_range: tuple[float, float]) -> list[float]:
    lo, hi = value_range
    mid = (lo + hi) / 2
    return [float(p) if p is not None else (lo if r >= mid else hi) for p, r in zip(preds, refs)]


def _corr(fn: Callable, preds: Sequence[Pred], refs: Sequence[float], value_range: tuple[float, float]) -> float:
    _check(preds, refs)
    p = _fill_regression(preds, refs, value_range)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(refs) == 0:
        return 0.0
    value = float(fn(list(refs), p)[0])
    return 0.0 if math.isnan(value) else 100.0 * value


def pearson(preds: Sequence[Pred], refs: Sequence[float], value_range: tuple[float, float]) -> float:
    return _corr(_scipy_stats().pearsonr, preds, refs, value_range)


def spearman(preds: Sequence[Pred], refs: Sequence[float], value_range: tuple[float, float]) -> float:
    return _corr(_scipy_stats().spearmanr, preds, refs, value_range)


def group_exact_match(preds: Sequence[Pred], refs: Sequence[Pred], groups: Sequence[Hashable]) -> float:
    """Percent of groups (MultiRC questions) whose every answer is predicted correctly."""
    _check(preds, refs)
    if len(groups) != len(refs):
        raise ValueError(f"got {len(groups)} group ids for {len(refs)} references")
    ok: dict[Hashable, bool] = defaultdict(lambda: True)
    for p, r, g in zip(preds, refs, groups):
        ok[g] = ok[g] and p is not None and p == r
    return 100.0 * sum(ok.values()) / len(ok)


# --- metric sets: name -> (metric names in order, function) -------------------------------------
# The first name is the task's main metric (best-checkpoint selection).


def _accuracy_set(preds, refs, *, groups=None, num_labels=None, value_range=None):
    return {"accuracy": accuracy(preds, refs)}


def _accuracy_f1_set(preds, refs, *, groups=None, num_labels=None, value_range=None):
    return {"accuracy": accuracy(preds, refs), "f1": binary_f1(preds, refs)}


def _mcc_set(preds, refs, *, groups=None, num_labels=None, value_range=None):
    return {"matthews_correlation": matthews(preds, refs)}


def _corr_set(preds, refs, *, groups=None, num_labels=None, value_range=None):
    if value_range is None:
        value_range = (float(min(refs)), float(max(refs)))
    return {"pearson": pearson(preds, refs, value_range), "spearmanr": spearman(preds, refs, value_range)}


def _accuracy_macro_f1_set(preds, refs, *, groups=None, num_labels=None, value_range=None):
    if num_labels is None:
        num_labels = max(refs) + 1
    return {"accuracy": accuracy(preds, refs), "macro_f1": macro_f1(preds, refs, num_labels)}


def _multirc_set(preds, refs, *, groups=None, num_labels=None, value_range=None):
    out = {"f1a": binary_f1(preds, refs)}
    if groups is not None:
        out["em"] = group_exact_match(preds, refs, groups)
    return out


METRIC_SETS: dict[str, tuple[tuple[str, ...], Callable[..., dict[str, float]]]] = {
    "accuracy": (("accuracy",), _accuracy_set),
    "accuracy_f1": (("accuracy", "f1"), _accuracy_f1_set),
    "matthews": (("matthews_correlation",), _mcc_set),
    "correlation": (("pearson", "spearmanr"), _corr_set),
    "accuracy_macro_f1": (("accuracy", "macro_f1"), _accuracy_macro_f1_set),
    "multirc": (("f1a", "em"), _multirc_set),
}
