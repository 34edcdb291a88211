"""Custom tasks from your own CSV / TSV / JSONL files.

``get_task("csv:path/data.csv", text_fields=["a", "b"], label_field="y")`` (also ``tsv:`` and
``jsonl:``) builds a task whose source is ``"a: … b: …"`` (fields in the order given; default:
every column except the label, in file order) and whose target is the label text.

A ``jsonl:`` file whose records hold ``prompt`` + ``completion`` or ``messages`` (and no label field) is
instruction data: a free-form generation task (:mod:`dept.tasks.instructions`; ``task_type="instruction"``
forces it, ``text_fields`` or another ``task_type`` rule it out).

Task type (override with ``task_type="classification" | "regression"``): regression when every
label is a number and there are more than ``REGRESSION_MIN_DISTINCT`` (10) distinct values;
otherwise classification with label words = the sorted distinct label strings (numerically sorted
when all are numbers; JSON booleans become ``"false"``/``"true"``). Classification metrics:
accuracy (main) + macro-F1; regression: Pearson (main) + Spearman, target text ``f"{value:g}"``,
``value_range`` = (smallest, largest) label.

Splits:

- ``PATH`` is a **file**: there is no official split, so under both split rules the rows are
  shuffled with ``seed`` and cut 80 / 10 / 10: train = first ``n * 8 // 10``, validation = half
  (rounded down) of the rest, test = the remainder.
- ``PATH`` is a **directory** with ``train.<ext>`` and ``validation|dev|val.<ext>`` (and optionally
  ``test.<ext>``): with a test file, the three files are used as they are; without one, the paper
  small-set rule applies (validation / test = halves of the shuffled validation file), and
  ``split_rule="official"`` uses the validation file as test too.

The files are read when the task is built (to find the labels); ``load(data_dir=...)`` ignores
``data_dir`` for custom tasks.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dept.options import not_utf8
from dept.tasks.instructions import instruction_task, is_instruction
from dept.tasks.registry import MAX_REGRESSION_CANDIDATES, REGRESSION_STEP, Task, regression_candidates
from dept.tasks.sources import Record, Source, iter_jsonl
from dept.tasks.templates import fields_source

REGRESSION_MIN_DISTINCT = 10
_EXTS = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl"}
_VALIDATION_NAMES = ("validation", "dev", "val")
TASK_TYPES = (None, "classification", "regression", "instruction")


def _read_rows(path: Path, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    if fmt == "jsonl":
        return list(iter_jsonl(path))
    delimiter = "\t" if fmt == "tsv" or path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        rows = []
        try:
            if not reader.fieldnames:
                raise ValueError(f"{path}: empty file (expected a header line)")
            for row in reader:
                if None in row:  # more values than header columns
                    raise ValueError(f"{path}:{reader.line_num}: more columns than the header has")
                rows.append((reader.line_num, row))
        except UnicodeDecodeError as err:
            raise ValueError(not_utf8(path, err)) from None
        return rows


def _label_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v).strip()


def _number_text(v: float) -> str:
    return f"{float(v):g}"


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _check_regression_labels(spec: str, files, raw, labels, values: list[float]) -> None:
    """Finite labels over a range that rank scoring can cover: it reads one label string per 0.2."""
    for split, texts in labels.items():
        for (lineno, _), text in zip(raw[split], texts):
            if not math.isfinite(float(text)):
                raise ValueError(f"{files[split]}:{lineno}: regression label {text!r} is not a finite number")
    low, high = min(values), max(values)
    count = regression_candidates(low, high)
    if count > MAX_REGRESSION_CANDIDATES:
        raise ValueError(
            f"custom task {spec!r}: regression labels span {low:g}..{high:g}, {count:,} score strings at "
            f"{REGRESSION_STEP:g} steps for rank scoring, over the limit of {MAX_REGRESSION_CANDIDATES}; rescale the "
            f"labels to a range of at most {(MAX_REGRESSION_CANDIDATES - 1) * REGRESSION_STEP:g}, "
            "or set task_type='classification'"
        )


def _find_files(root: Path, ext: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if (root / f"train{ext}").is_file():
        files["train"] = root / f"train{ext}"
    for n in _VALIDATION_NAMES:
        if (root / f"{n}{ext}").is_file():
            files["validation"] = root / f"{n}{ext}"
            break
    if (root / f"test{ext}").is_file():
        files["test"] = root / f"test{ext}"
    if "train" not in files or "validation" not in files:
        raise FileNotFoundError(
            f"custom task directory {root} needs train{ext} and one of "
            f"{', '.join(n + ext for n in _VALIDATION_NAMES)} (test{ext} optional); found "
            f"{sorted(p.name for p in root.iterdir())}"
        )
    return files


def custom_task(
    spec: str,
    *,
    text_fields: Sequence[str] | None = None,
    label_field: str = "label",
    task_type: str | None = None,
    name: str | None = None,
) -> Task:
    """Build a task from ``"csv:PATH"``, ``"tsv:PATH"`` or ``"jsonl:PATH"`` (file or directory)."""
    fmt, _, raw_path = spec.partition(":")
    if fmt not in _EXTS or not raw_path:
        raise ValueError(f"custom task spec must be 'csv:PATH', 'tsv:PATH' or 'jsonl:PATH', got {spec!r}")
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {', '.join(map(repr, TASK_TYPES[1:]))}, got {task_type!r}")
    path = Path(raw_path).expanduser()
    if path.is_dir():
        files = _find_files(path, _EXTS[fmt])
    elif path.is_file():
        files = {"all": path}
    else:
        raise FileNotFoundError(
            f"custom task {spec!r}: {path} does not exist (give a file or a directory of "
            f"train/validation[/test]{_EXTS[fmt]} files)"
        )

    raw: dict[str, list[tuple[int, dict[str, Any]]]] = {s: _read_rows(p, fmt) for s, p in files.items()}
    first = next((rows[0][1] for rows in raw.values() if rows), {})
    if task_type == "instruction" or (task_type is None and not text_fields and is_instruction(first, label_field)):
        if fmt != "jsonl":
            raise ValueError(
                f"custom task {spec!r}: instruction data (prompt/completion or messages) is read from jsonl:"
            )
        return instruction_task(spec, path, files, raw, name)
    fields = list(text_fields) if text_fields else None
    labels: dict[str, list[str]] = {}
    for split, rows in raw.items():
        if not rows:
            raise ValueError(f"{files[split]}: no examples in file")
        if fields is None:
            fields = [k for k in rows[0][1] if k != label_field]
            if not fields:
                raise ValueError(f"{files[split]}: no text fields besides the label field {label_field!r}")
        labels[split] = []
        for lineno, row in rows:
            for f in [*fields, label_field]:
                if f not in row or row[f] is None:
                    raise ValueError(f"{files[split]}:{lineno}: missing field {f!r} (fields: {list(row)})")
            text = _label_text(row[label_field])
            if text == "":
                raise ValueError(f"{files[split]}:{lineno}: empty label in field {label_field!r}")
            labels[split].append(text)

    distinct = sorted({t for ts in labels.values() for t in ts})
    numeric = all(_is_number(t) for t in distinct)
    regression = task_type == "regression" or (
        task_type is None and numeric and len(distinct) > REGRESSION_MIN_DISTINCT
    )
    if regression and not numeric:
        bad = next(t for t in distinct if not _is_number(t))
        raise ValueError(f"custom task {spec!r}: task_type='regression' but label {bad!r} is not a number")
    if regression:
        label_words = None
        values = [float(t) for t in distinct]
        _check_regression_labels(spec, files, raw, labels, values)
    else:
        label_words = sorted(distinct, key=lambda t: (float(t), t)) if numeric else distinct
        index = {w: i for i, w in enumerate(label_words)}

    splits: dict[str, list[Record]] = {}
    for split, rows in raw.items():
        recs = []
        for (lineno, row), text in zip(rows, labels[split]):
            rec: Record = {f: str(row[f]) for f in fields}
            rec["label"] = float(text) if regression else index[text]
            rec["idx"] = len(recs)
            rec["line"] = lineno
            recs.append(rec)
        splits[split] = recs

    def read(data_dir: str | os.PathLike | None) -> dict[str, list[Record]]:
        return splits

    def fmt_fn(rec: Mapping[str, Any]) -> tuple[str, dict]:
        return fields_source(rec, fields), {"line": rec["line"]}

    task = Task(
        name=name or f"custom/{path.stem if path.is_file() else path.name}",
        label_words=label_words,
        metric_set="correlation" if regression else "accuracy_macro_f1",
        split_kind="custom",
        format_fn=fmt_fn,
        sources=(Source("local", read, f"check {path}"),),
        is_regression=regression,
        target_fn=_number_text if regression else None,
        value_range=(min(values), max(values)) if regression else None,
        description=f"custom task from {spec}",
    )
    return task
