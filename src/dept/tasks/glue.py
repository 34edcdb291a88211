"""GLUE tasks: ``glue/{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte,wnli}``.

Templates are the official DePT ones; label ids follow the Hugging Face ``nyu-mll/glue`` class
order, so ``label_style="digits"`` reproduces the official targets exactly.

| task | source template | label words (id order) | metrics (main first) | split |
|---|---|---|---|---|
| cola | ``sentence: …`` | unacceptable, acceptable | matthews_correlation | small |
| sst2 | ``sentence: …`` | negative, positive | accuracy | large |
| mrpc | ``sentence1: … sentence2: …`` | not_equivalent, equivalent | accuracy, f1 | small |
| qqp  | ``question1: … question2: …`` | not_duplicate, duplicate | accuracy, f1 | large |
| stsb | ``sentence1: … sentence2: …`` | regression, target ``"3.8"`` | pearson, spearmanr | small |
| mnli | ``premise: … hypothesis: …`` | entailment, neutral, contradiction | accuracy | mnli |
| qnli | ``question: … sentence: …`` | entailment, not_entailment | accuracy | large |
| rte  | ``sentence1: … sentence2: …`` | entailment, not_entailment | accuracy | small |
| wnli | ``sentence1: … sentence2: …`` | not_entailment, entailment | accuracy | small |
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dept.tasks.registry import Task, register_task
from dept.tasks.sources import (
    Record,
    float_label,
    hub_source,
    label_index,
    local_source,
    read_tsv,
    stsb_package_source,
)
from dept.tasks.templates import fields_source, stsb_target

HUB_GLUE = "nyu-mll/glue"

_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
_HUB_SPLITS = {"train": "train", "validation": "validation"}
_MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
_MNLI_HUB_SPLITS = {k: k for k in _MNLI_FILES}


def _hub_converter(fields: Sequence[str], num_labels: int | None) -> Callable[[dict], list[Record]]:
    def convert(row: dict) -> list[Record]:
        rec: Record = {f: str(row[f]) for f in fields}
        label = row["label"]
        if num_labels is None:
            rec["label"] = float_label(label)
        else:
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
                raise ValueError(f"bad label {label!r}, expected 0..{num_labels - 1}")
            rec["label"] = label
        rec["idx"] = row.get("idx")
        return [rec]

    return convert


def _format(fields: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[str, dict]]:
    def fmt(rec: Mapping[str, Any]) -> tuple[str, dict]:
        return fields_source(rec, fields), {}

    return fmt


def glue_task(
    config: str,
    dir_name: str,
    columns: Mapping[str, str | int],
    label_column: str | int,
    label_values: Sequence[str] | None,
    label_words: Sequence[str] | None,
    metric_set: str,
    split_kind: str,
    *,
    header: bool = True,
    ncols: int | None = None,
    aliases: Sequence[str] = (),
    description: str = "",
) -> Task:
    """Register one GLUE task. ``columns`` maps template field names (record keys, equal to the
    hub's column names) to TSV header names; ``label_values`` are the file's label strings in id
    order (``None`` = float score)."""
    fields = list(columns)
    regression = label_values is None
    parse_label = float_label if regression else label_index(list(label_values))
    files = _MNLI_FILES if split_kind == "mnli" else _FILES
    hub_splits = _MNLI_HUB_SPLITS if split_kind == "mnli" else _HUB_SPLITS
    parser = functools.partial(read_tsv, columns=columns, label=(label_column, parse_label), header=header, ncols=ncols)
    sources = [local_source("glue", dir_name, files, parser)]
    if config == "stsb":
        sources.append(stsb_package_source())
    sources.append(
        hub_source(HUB_GLUE, config, hub_splits, _hub_converter(fields, None if regression else len(label_values)))
    )
    task = Task(
        name=f"glue/{config}",
        label_words=None if regression else list(label_words),
        metric_set=metric_set,
        split_kind=split_kind,
        format_fn=_format(fields),
        sources=tuple(sources),
        is_regression=regression,
        target_fn=stsb_target if regression else None,
        value_range=(0.0, 5.0) if regression else None,
        description=description,
    )
    return register_task(task, aliases=[config, f"glue-{config}", *aliases])


COLA = glue_task(
    "cola",
    "CoLA",
    {"sentence": 3},
    1,
    ["0", "1"],
    ["unacceptable", "acceptable"],
    "matthews",
    "small",
    header=False,
    ncols=4,
    description="Corpus of Linguistic Acceptability (grammaticality).",
)
SST2 = glue_task(
    "sst2",
    "SST-2",
    {"sentence": "sentence"},
    "label",
    ["0", "1"],
    ["negative", "positive"],
    "accuracy",
    "large",
    aliases=["sst-2", "glue/sst-2"],
    description="Stanford Sentiment Treebank, binary sentiment.",
)
MRPC = glue_task(
    "mrpc",
    "MRPC",
    {"sentence1": "#1 String", "sentence2": "#2 String"},
    "Quality",
    ["0", "1"],
    ["not_equivalent", "equivalent"],
    "accuracy_f1",
    "small",
    description="Microsoft Research Paraphrase Corpus.",
)
QQP = glue_task(
    "qqp",
    "QQP",
    {"question1": "question1", "question2": "question2"},
    "is_duplicate",
    ["0", "1"],
    ["not_duplicate", "duplicate"],
    "accuracy_f1",
    "large",
    description="Quora Question Pairs.",
)
STSB = glue_task(
    "stsb",
    "STS-B",
    {"sentence1": "sentence1", "sentence2": "sentence2"},
    "score",
    None,
    None,
    "correlation",
    "small",
    aliases=["sts-b", "glue/sts-b"],
    description="Semantic Textual Similarity Benchmark (regression 0-5; target rounded to 0.2).",
)
MNLI = glue_task(
    "mnli",
    "MNLI",
    {"premise": "sentence1", "hypothesis": "sentence2"},
    "gold_label",
    ["entailment", "neutral", "contradiction"],
    ["entailment", "neutral", "contradiction"],
    "accuracy",
    "mnli",
    description="MultiNLI (validation = dev mismatched, test = dev matched).",
)
QNLI = glue_task(
    "qnli",
    "QNLI",
    {"question": "question", "sentence": "sentence"},
    "label",
    ["entailment", "not_entailment"],
    ["entailment", "not_entailment"],
    "accuracy",
    "large",
    description="Question NLI (from SQuAD).",
)
RTE = glue_task(
    "rte",
    "RTE",
    {"sentence1": "sentence1", "sentence2": "sentence2"},
    "label",
    ["entailment", "not_entailment"],
    ["entailment", "not_entailment"],
    "accuracy",
    "small",
    description="Recognizing Textual Entailment.",
)
WNLI = glue_task(
    "wnli",
    "WNLI",
    {"sentence1": "sentence1", "sentence2": "sentence2"},
    "label",
    ["0", "1"],
    ["not_entailment", "entailment"],
    "accuracy",
    "small",
    description="Winograd NLI.",
)
