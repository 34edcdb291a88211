"""SuperGLUE tasks: ``superglue/{boolq,cb,copa,multirc,wic,wsc,rte}``.

Templates follow the official DePT code, with two additions marked (+):

| task | source template | label words (id order) | metrics (main first) |
|---|---|---|---|
| boolq | ``question: … passage: …`` | false, true | accuracy |
| cb | ``premise: … hypothesis: …`` | entailment, contradiction, neutral | accuracy, macro_f1 |
| copa | ``premise: … question: cause|effect (+) choice1: … choice2: …`` | choice1, choice2 | accuracy |
| multirc | ``question: … answer: … paragraph: …`` (one example per answer) | false, true | f1a, em |
| wic | ``sentence1: … sentence2: … word: …`` | false, true | accuracy |
| wsc | ``text: … * noun * … # pronoun # … span1: … span2: …`` (+ span fields) | false, true | accuracy |
| rte | ``premise: … hypothesis: …`` | entailment, not_entailment | accuracy |

All are "small" sets: validation / test = halves of the shuffled official val set.

- COPA: the official code drops the ``question`` field, which is what tells "cause" from "effect";
  it is kept here. Label 0 = choice1, 1 = choice2.
- MultiRC: one example per (paragraph, question, answer); ``meta`` carries ``paragraph_id``,
  ``question_id``, ``answer_id`` and ``group`` (``"<paragraph>/<question>"``), used to keep the
  answers of a question in one split and for the per-question exact match (EM). ``f1a`` is the
  binary F1 over all answers.
- WSC: the text is marked T5-style (``*`` around span 1, the noun phrase; ``#`` around span 2, the
  pronoun) and the two span texts are appended. The local files are the original SuperGLUE WSC
  (a few rows have wrong word indices; the nearest occurrence of the span text is marked); the hub
  path uses ``wsc.fixed`` like the official code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dept.tasks.registry import Task, register_task
from dept.tasks.sources import Record, bool_label, hub_source, label_index, local_source, read_jsonl
from dept.tasks.templates import fields_source, mark_wsc_spans, remove_markup

HUB_SUPERGLUE = "aps/super_glue"
_FILES = {"train": "train.jsonl", "validation": "val.jsonl"}
_HUB_SPLITS = {"train": "train", "validation": "validation"}


def _hub_label(num_labels: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_labels:
            raise ValueError(f"bad label {v!r}, expected 0..{num_labels - 1}")
        return v

    return parse


def _flat_converter(
    fields: Sequence[str], parse_label: Callable[[Any], int], extra: Sequence[str] = ()
) -> Callable[[dict], list[Record]]:
    """Object with ``fields`` + ``label`` + ``idx`` -> one record."""

    def convert(obj: dict) -> list[Record]:
        rec: Record = {f: str(obj[f]) for f in fields}
        for f in extra:
            rec[f] = obj[f]
        rec["label"] = parse_label(obj["label"])
        rec["idx"] = obj.get("idx")
        return [rec]

    return convert


def _simple_format(
    fields: Sequence[str], meta_fields: Sequence[str] = ()
) -> Callable[[Mapping[str, Any]], tuple[str, dict]]:
    def fmt(rec: Mapping[str, Any]) -> tuple[str, dict]:
        return fields_source(rec, fields), {m: rec[m] for m in meta_fields}

    return fmt


def superglue_task(
    config: str,
    dir_name: str,
    label_words: Sequence[str],
    metric_set: str,
    format_fn: Callable[[Mapping[str, Any]], tuple[str, dict]],
    local_convert: Callable[[dict], list[Record]],
    hub_convert: Callable[[dict], list[Record]],
    *,
    hub_config: str | None = None,
    group_key: str | None = None,
    aliases: Sequence[str] = (),
    description: str = "",
) -> Task:
    parser = functools.partial(read_jsonl, convert=local_convert)
    sources = (
        local_source("superglue", dir_name, _FILES, parser),
        hub_source(HUB_SUPERGLUE, hub_config or config, _HUB_SPLITS, hub_convert),
    )
    task = Task(
        name=f"superglue/{config}",
        label_words=list(label_words),
        metric_set=metric_set,
        split_kind="small",
        format_fn=format_fn,
        sources=sources,
        group_key=group_key,
        description=description,
    )
    return register_task(task, aliases=[f"superglue-{config}", *aliases])


# --- BoolQ, CB, RTE, WiC: flat records -------------------------------------------------------------

BOOLQ = superglue_task(
    "boolq",
    "BoolQ",
    ["false", "true"],
    "accuracy",
    _simple_format(["question", "passage"]),
    _flat_converter(["question", "passage"], bool_label),
    _flat_converter(["question", "passage"], _hub_label(2)),
    description="Boolean questions about a Wikipedia passage.",
)
CB = superglue_task(
    "cb",
    "CB",
    ["entailment", "contradiction", "neutral"],
    "accuracy_macro_f1",
    _simple_format(["premise", "hypothesis"]),
    _flat_converter(["premise", "hypothesis"], label_index(["entailment", "contradiction", "neutral"])),
    _flat_converter(["premise", "hypothesis"], _hub_label(3)),
    description="CommitmentBank, 3-way entailment.",
)
RTE = superglue_task(
    "rte",
    "RTE",
    ["entailment", "not_entailment"],
    "accuracy",
    _simple_format(["premise", "hypothesis"]),
    _flat_converter(["premise", "hypothesis"], label_index(["entailment", "not_entailment"])),
    _flat_converter(["premise", "hypothesis"], _hub_label(2)),
    description="Recognizing Textual Entailment (SuperGLUE copy of GLUE RTE).",
)
WIC = superglue_task(
    "wic",
    "WiC",
    ["false", "true"],
    "accuracy",
    _simple_format(["sentence1", "sentence2", "word"], meta_fields=["word"]),
    _flat_converter(["sentence1", "sentence2", "word"], bool_label),
    _flat_converter(["sentence1", "sentence2", "word"], _hub_label(2)),
    description="Word-in-Context: is the word used with the same sense in both sentences?",
)


# --- COPA ------------------------------------------------------------------------------------------


def _copa_question(obj: dict) -> str:
    q = str(obj["question"]).strip()
    if q not in ("cause", "effect"):
        raise ValueError(f"bad question {q!r}, expected 'cause' or 'effect'")
    return q


def _copa_converter(parse_label: Callable[[Any], int]) -> Callable[[dict], list[Record]]:
    def convert(obj: dict) -> list[Record]:
        rec = {k: str(obj[k]) for k in ("premise", "choice1", "choice2")}
        rec["question"] = _copa_question(obj)
        rec["label"] = parse_label(obj["label"])
        rec["idx"] = obj.get("idx")
        return [rec]

    return convert


COPA = superglue_task(
    "copa",
    "COPA",
    ["choice1", "choice2"],
    "accuracy",
    _simple_format(["premise", "question", "choice1", "choice2"], meta_fields=["question"]),
    _copa_converter(label_index([0, 1])),
    _copa_converter(_hub_label(2)),
    description="Choice of Plausible Alternatives: which choice is the cause/effect of the premise.",
)


# --- MultiRC ---------------------------------------------------------------------------------------


def _multirc_record(paragraph: str, question: str, answer: str, label: int, p_id: Any, q_id: Any, a_id: Any) -> Record:
    return {
        "paragraph": paragraph,
        "question": question,
        "answer": answer,
        "label": label,
        "idx": a_id,
        "paragraph_id": p_id,
        "question_id": q_id,
        "answer_id": a_id,
    }


_parse_multirc_label = label_index([0, 1])


def _multirc_local(obj: dict) -> list[Record]:
    """One file line = one paragraph with its questions and their answer options."""
    passage = obj["passage"]
    text = str(passage["text"])
    out = []
    for q in passage["questions"]:
        for a in q["answers"]:
            out.append(
                _multirc_record(
                    text,
                    str(q["question"]),
                    str(a["text"]),
                    _parse_multirc_label(a["label"]),
                    obj["idx"],
                    q["idx"],
                    a["idx"],
                )
            )
    return out


def _multirc_hub(row: dict) -> list[Record]:
    idx = row["idx"]
    return [
        _multirc_record(
            str(row["paragraph"]),
            str(row["question"]),
            str(row["answer"]),
            _hub_label(2)(row["label"]),
            idx["paragraph"],
            idx["question"],
            idx["answer"],
        )
    ]


def _multirc_format(rec: Mapping[str, Any]) -> tuple[str, dict]:
    clean = {k: remove_markup(rec[k]) for k in ("question", "answer", "paragraph")}
    meta = {
        "paragraph_id": rec["paragraph_id"],
        "question_id": rec["question_id"],
        "answer_id": rec["answer_id"],
        "group": f"{rec['paragraph_id']}/{rec['question_id']}",
    }
    return fields_source(clean, ["question", "answer", "paragraph"]), meta


MULTIRC = superglue_task(
    "multirc",
    "MultiRC",
    ["false", "true"],
    "multirc",
    _multirc_format,
    _multirc_local,
    _multirc_hub,
    group_key="group",
    description="Multi-sentence reading comprehension; one example per answer option.",
)


# --- WSC -------------------------------------------------------------------------------------------

_WSC_KEYS = ("span1_index", "span2_index", "span1_text", "span2_text")


def _wsc_converter(parse_label: Callable[[Any], int], nested: bool) -> Callable[[dict], list[Record]]:
    def convert(obj: dict) -> list[Record]:
        spans = obj["target"] if nested else obj
        rec: Record = {"text": str(obj["text"])}
        for k in _WSC_KEYS:
            rec[k] = spans[k]
        for k in ("span1_index", "span2_index"):
            if isinstance(rec[k], bool) or not isinstance(rec[k], int):
                raise ValueError(f"bad {k} {rec[k]!r}, expected an integer")
        rec["label"] = parse_label(obj["label"])
        rec["idx"] = obj.get("idx")
        return [rec]

    return convert


def _wsc_format(rec: Mapping[str, Any]) -> tuple[str, dict]:
    marked = mark_wsc_spans(rec["text"], rec["span1_text"], rec["span1_index"], rec["span2_text"], rec["span2_index"])
    view = {"text": marked, "span1": rec["span1_text"], "span2": rec["span2_text"]}
    return fields_source(view, ["text", "span1", "span2"]), {k: rec[k] for k in _WSC_KEYS}


WSC = superglue_task(
    "wsc",
    "WSC",
    ["false", "true"],
    "accuracy",
    _wsc_format,
    _wsc_converter(bool_label, nested=True),
    _wsc_converter(_hub_label(2), nested=False),
    hub_config="wsc.fixed",
    aliases=["superglue-wsc.fixed", "superglue/wsc.fixed"],
    description="Winograd Schema Challenge: does the pronoun (span 2) refer to the noun phrase (span 1)?",
)
