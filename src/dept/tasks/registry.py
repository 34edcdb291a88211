"""The task registry: :class:`Example`, :class:`Task`, :func:`get_task`, :func:`list_tasks`.

A task turns the official data files into text-to-text :class:`Example` s, applies the paper's
split rule and scores predictions. It knows nothing about models or tokenizers.

>>> task = get_task("glue/rte")
>>> splits = task.load(data_dir="path/to/data")          # train / validation / test
>>> splits["train"][0].source                             # "sentence1: ... sentence2: ..."
>>> task.metrics(["entailment", "oops"], splits["test"][:2])   # {"accuracy": ...}
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dept.tasks import metrics as _metrics
from dept.tasks.sources import Source, Splits, load_records
from dept.tasks.splits import LARGE_VALIDATION_SIZE, SHUFFLES, SPLIT_RULES, hold_out, permutation, split_half

REGRESSION_STEP = 0.2  # rank scoring of a regression task reads one score string per step of its value range
MAX_REGRESSION_CANDIDATES = 501  # a value range of at most 100: custom tasks with a wider one are refused


def regression_candidates(low: float, high: float) -> int:
    """How many score strings rank scoring reads for a regression task with values in [low, high]."""
    return int(round((high - low) / REGRESSION_STEP)) + 1


@dataclass(slots=True)
class Example:
    """One text-to-text example.

    ``source``: model input text; ``target``: the text the model should generate;
    ``label``: class id (index into ``Task.label_words``), float score (regression) or None;
    ``meta``: ``{"task", "idx", ...}`` plus task extras (MultiRC ``question_id``, ...).
    """

    source: str
    target: str
    label: int | float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


LABEL_STYLES = ("words", "digits")


@dataclass(eq=False)
class Task:
    """A text-to-text task. Build with the helpers in ``glue.py`` / ``superglue.py`` / ``custom.py``.

    Attributes
    ----------
    name: registry name, e.g. ``"glue/rte"``.
    label_words: target text per class id (``None`` for regression).
    metric_set: key of :data:`dept.tasks.metrics.METRIC_SETS`; its first metric is the main one.
    split_kind: ``"small"`` | ``"large"`` | ``"mnli"`` | ``"custom"`` (see :mod:`dept.tasks.splits`).
    format_fn: record -> ``(source text, extra meta)``.
    sources: where the official splits come from, tried in order.
    target_fn: regression only: label -> target text (STS-B rounding).
    value_range: regression only: the valid score range (for invalid predictions).
    group_key: meta key whose value groups examples (MultiRC question) for splits and EM.
    """

    name: str
    label_words: list[str] | None
    metric_set: str
    split_kind: str
    format_fn: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]
    sources: Sequence[Source]
    is_regression: bool = False
    target_fn: Callable[[float], str] | None = None
    value_range: tuple[float, float] | None = None
    group_key: str | None = None
    description: str = ""
    free_form = False  # free-form completions (dept.tasks.instructions): scored by generation, never ranked

    # --- labels and predictions -------------------------------------------------------------

    @property
    def num_labels(self) -> int | None:
        return None if self.label_words is None else len(self.label_words)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return _metrics.METRIC_SETS[self.metric_set][0]

    @property
    def main_metric(self) -> str:
        """The metric used for best-checkpoint selection (first key of :meth:`metrics`)."""
        return self.metric_names[0]

    def label_to_text(self, label: int | float) -> str:
        if self.is_regression:
            return self.target_fn(label) if self.target_fn else f"{float(label):g}"
        return self.label_words[int(label)]

    def parse_prediction(self, text: str) -> int | float | None:
        """Generated text -> class id / float score, or None when it is not a valid label.

        Classification: the stripped text must equal a label word (exactly, else ignoring case).
        Regression: the stripped text must be a finite number (``float()``).
        """
        if text is None:
            return None
        t = str(text).strip()
        if self.is_regression:
            try:
                v = float(t)
            except ValueError:
                return None
            return v if math.isfinite(v) else None
        words = self.label_words
        if t in words:
            return words.index(t)
        low = t.casefold()
        for i, w in enumerate(words):
            if w.casefold() == low:
                return i
        return None

    def _as_label(self, x: Any, *, strict: bool) -> int | float | None:
        if isinstance(x, Example):
            x = x.label
        if x is None:
            v = None
        elif isinstance(x, str):
            v = self.parse_prediction(x)
        elif isinstance(x, numbers.Real):
            f = float(x)
            if not math.isfinite(f):
                v = None
            elif self.is_regression:
                v = f
            else:
                v = int(f) if f == int(f) and 0 <= int(f) < self.num_labels else None
        else:
            raise TypeError(f"cannot interpret {type(x).__name__} {x!r} as a label of {self.name}")
        if v is None and strict:
            raise ValueError(f"reference {x!r} is not a valid label of task {self.name}")
        return v

    def metrics(
        self,
        predictions: Sequence[Any],
        references: Sequence[Any],
        groups: Sequence[Hashable] | None = None,
    ) -> dict[str, float]:
        """Score predictions; returns ``{main metric: value, ...}`` in percent.

        ``predictions``: generated texts (parsed with :meth:`parse_prediction`), label ids or
        floats; an invalid one (unparseable text, out-of-range id, None) counts as wrong.
        ``references``: :class:`Example` s (their ``label``), label ids / floats or target texts.
        ``groups``: MultiRC question ids for exact match; taken from the references' meta when
        they are Examples. Without groups MultiRC reports only ``f1a``.
        """
        if len(predictions) != len(references):
            raise ValueError(f"{self.name}: got {len(predictions)} predictions for {len(references)} references")
        if groups is None and self.group_key and references and all(isinstance(r, Example) for r in references):
            groups = [r.meta[self.group_key] for r in references]
        preds = [self._as_label(p, strict=False) for p in predictions]
        refs = [self._as_label(r, strict=True) for r in references]
        fn = _metrics.METRIC_SETS[self.metric_set][1]
        return fn(preds, refs, groups=groups, num_labels=self.num_labels, value_range=self.value_range)

    # --- data ---------------------------------------------------------------------------------

    def make_example(self, record: Mapping[str, Any]) -> Example:
        source, extra = self.format_fn(record)
        label = record.get("label")
        target = self.label_to_text(label) if label is not None else ""
        meta = {"task": self.name, "idx": record.get("idx"), **extra}
        return Example(source, target, label, meta)

    def read_records(self, data_dir: str | os.PathLike | None = None, *, use_hub: bool = True) -> tuple[Splits, str]:
        """The official labelled splits as raw records, and the source kind they came from."""
        return load_records(self.name, self.sources, data_dir, use_hub)

    def load_official(
        self, data_dir: str | os.PathLike | None = None, *, use_hub: bool = True
    ) -> dict[str, list[Example]]:
        """The official labelled splits as Examples: ``train``, ``validation`` (MNLI:
        ``validation_matched`` and ``validation_mismatched``), without any re-splitting."""
        records, kind = self.read_records(data_dir, use_hub=use_hub)
        out = {}
        for split, recs in records.items():
            exs = [self.make_example(r) for r in recs]
            for e in exs:
                e.meta["source"] = kind
            out[split] = exs
        return out

    def load(
        self,
        data_dir: str | os.PathLike | None = None,
        split_rule: str = "paper",
        seed: int = 42,
        *,
        shuffle: str = "python",
        use_hub: bool = True,
    ) -> dict[str, list[Example]]:
        """Load ``{"train", "validation", "test"}`` lists of :class:`Example`.

        ``split_rule="paper"`` (default): the DePT paper's rule (Shi & Lipani, ICLR 2024): small sets ->
        validation / test = first / second half of the shuffled official dev set; SST-2, QNLI,
        QQP -> validation = 1000 examples held out of train, test = official dev; MNLI ->
        validation = dev mismatched, test = dev matched.

        ``split_rule="official"``: train = official train, validation = official dev, and
        **test = the official dev set again** (official test labels are hidden). MNLI: validation
        = test = dev matched, plus ``"validation_mismatched"``.

        ``seed`` drives the shuffles (deterministic, see :mod:`dept.tasks.splits`);
        ``shuffle="torch"`` reproduces the official code's exact permutation.
        ``data_dir``: root of the original files (else ``$DEPT_DATA_DIR``; then the packaged
        STS-B copy; then the Hugging Face hub unless ``use_hub=False``).
        """
        if split_rule not in SPLIT_RULES:
            raise ValueError(f"split_rule must be one of {SPLIT_RULES}, got {split_rule!r}")
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
        off = self.load_official(data_dir, use_hub=use_hub)
        return self.apply_split_rule(off, split_rule, seed, shuffle=shuffle)

    def apply_split_rule(
        self,
        official: Mapping[str, list[Example]],
        split_rule: str = "paper",
        seed: int = 42,
        *,
        shuffle: str = "python",
    ) -> dict[str, list[Example]]:
        """Apply a split rule to official splits (``train`` + ``validation``; MNLI: matched /
        mismatched; custom tasks may carry ``test``, or a single ``all`` split cut 80/10/10)."""
        kind = self.split_kind
        group_of = (lambda e: e.meta[self.group_key]) if self.group_key else None
        if kind == "mnli":
            matched, mismatched = official["validation_matched"], official["validation_mismatched"]
            if split_rule == "paper":
                out = {"train": official["train"], "validation": mismatched, "test": matched}
            else:
                out = {
                    "train": official["train"],
                    "validation": matched,
                    "test": matched,
                    "validation_mismatched": mismatched,
                }
        elif "all" in official:  # custom task from a single file: 80 / 10 / 10 under both rules
            items = official["all"]
            perm = permutation(len(items), seed, shuffle)
            n_train = len(items) * 8 // 10
            n_val = (len(items) - n_train) // 2
            out = {
                "train": [items[i] for i in perm[:n_train]],
                "validation": [items[i] for i in perm[n_train : n_train + n_val]],
                "test": [items[i] for i in perm[n_train + n_val :]],
            }
        elif split_rule == "official":
            out = {
                "train": official["train"],
                "validation": official["validation"],
                "test": official.get("test", official["validation"]),
            }
        elif kind == "large":
            train, val = hold_out(official["train"], LARGE_VALIDATION_SIZE, seed, shuffle=shuffle)
            out = {"train": train, "validation": val, "test": official["validation"]}
        elif kind in ("small", "custom"):
            if "test" in official:  # custom data with its own labelled test file
                out = {"train": official["train"], "validation": official["validation"], "test": official["test"]}
            else:
                val, test = split_half(official["validation"], seed, shuffle=shuffle, group_of=group_of)
                out = {"train": official["train"], "validation": val, "test": test}
        else:
            raise ValueError(f"{self.name}: unknown split kind {kind!r}")
        for split, exs in out.items():
            if not exs:
                sizes = {k: len(v) for k, v in official.items()}
                raise ValueError(
                    f"task {self.name}: split {split!r} is empty under split_rule={split_rule!r} "
                    f"(official split sizes: {sizes}); check the data files"
                )
        return out

    def with_label_style(self, style: str) -> Task:
        """``"words"`` (default: natural-language label words) or ``"digits"`` (``"0"``, ``"1"``,
        ... as the official DePT code, needed to evaluate its released checkpoints)."""
        if style not in LABEL_STYLES:
            raise ValueError(f"label_style must be one of {LABEL_STYLES}, got {style!r}")
        if style == "words" or self.label_words is None:
            return dataclasses.replace(self, label_words=None if self.label_words is None else list(self.label_words))
        return dataclasses.replace(self, label_words=[str(i) for i in range(len(self.label_words))])

    def __repr__(self) -> str:
        kind = "regression" if self.is_regression else f"{self.num_labels} labels"
        return f"Task({self.name!r}, {kind}, main_metric={self.main_metric!r}, split_kind={self.split_kind!r})"


# --- the registry --------------------------------------------------------------------------------

_REGISTRY: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def register_task(task: Task, aliases: Sequence[str] = ()) -> Task:
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    for a in aliases:
        _ALIASES[a.lower()] = task.name
    return task


def list_tasks() -> list[str]:
    """Registered task names (custom ``csv:`` / ``jsonl:`` tasks are built on demand)."""
    return sorted(_REGISTRY)


def get_task(name: str, *, label_style: str = "words", **kwargs: Any) -> Task:
    """Look up a task by name (``"glue/rte"``, ``"superglue/boolq"``; official DePT names such as
    ``"rte"`` or ``"superglue-boolq"`` are accepted as aliases), or build a custom one:
    ``get_task("csv:data.csv", text_fields=["a", "b"], label_field="y")`` / ``"jsonl:..."``
    (see :func:`dept.tasks.custom.custom_task`).

    Unknown names raise ValueError listing close matches and all names.
    Returns a fresh copy; ``label_style="digits"`` gives the official ``"0"``/``"1"`` targets.
    """
    if name.startswith(("csv:", "jsonl:", "tsv:")):
        from dept.tasks.custom import custom_task

        return custom_task(name, **kwargs).with_label_style(label_style)
    if kwargs:
        raise TypeError(f"get_task({name!r}) got unexpected arguments {sorted(kwargs)} (only custom tasks take them)")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        candidates = list(_REGISTRY) + list(_ALIASES)
        close = difflib.get_close_matches(name.lower(), candidates, n=5, cutoff=0.5)
        close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown task {name!r}.{hint} Known tasks: {', '.join(list_tasks())}; "
            "or a custom 'csv:PATH' / 'jsonl:PATH' task."
        )
    return _REGISTRY[key].with_label_style(label_style)
