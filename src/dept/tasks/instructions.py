"""Instruction data: free-form completions from ``jsonl:`` files, scored by generation.

A ``jsonl:FILE`` (or folder of ``train`` / ``validation`` / ``test`` ``.jsonl`` files, split as any custom
task) whose records hold either form is an instruction task (:func:`dept.tasks.custom.custom_task` tells it
from a classification file by its fields)::

    {"prompt": "Name a primary colour.", "completion": "Red."}
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]}

The target is the completion (the last, assistant, message). The source is the prompt as written, or the
earlier messages joined as ``"role: content"`` lines followed by ``"assistant:"``; with ``--chat-template``
:mod:`dept.chat` renders them with the tokenizer's own template instead (it needs the tokenizer, which a task
never sees). Every record is checked when the task is built: an error names the file and line.

Metrics, in percent: ROUGE-L F1 (``rouge-score``'s ``RougeScorer(["rougeL"])``) and exact match after
stripping whitespace. ROUGE-L is the main metric (best checkpoint): exact match is 0 for nearly every
free-form answer early in training, so it cannot tell checkpoints apart, while ROUGE-L gives credit for the
longest common word subsequence. (rouge-score's tokenizer keeps only ASCII letters and digits: text in other
scripts scores 0 ROUGE-L; exact match still counts it.)
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dept._extras import requires
from dept.errors import UsageError
from dept.tasks.registry import Example, Task
from dept.tasks.sources import Record, Source

FORMS = ("prompt", "completion", "messages")  # a jsonl record with one of these fields is instruction data
METRICS = ("rougeL", "exact_match")  # the first is the main metric


def is_instruction(record: Mapping[str, Any], label_field: str = "label") -> bool:
    """A record of instruction data: it has a prompt/completion/messages field and no label field."""
    return label_field not in record and any(f in record for f in FORMS)


def _text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: empty {key!r}")
    return value


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    if value[-1]["role"] != "assistant":
        raise ValueError(
            f"{where}: the last message must be the assistant's answer (role 'assistant'), got {value[-1]['role']!r}"
        )
    if len(value) < 2:
        raise ValueError(f"{where}: 'messages' needs at least one message before the assistant's answer")
    if not value[-1]["content"].strip():
        raise ValueError(f"{where}: empty completion (the assistant message's content)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def plain_source(messages: Sequence[Mapping[str, str]]) -> str:
    """The source without a chat template: ``"role: content"`` lines, then ``"assistant:"`` to answer after."""
    return "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])


def parse_record(record: Mapping[str, Any], where: str) -> Record:
    """One jsonl object -> ``{source, target, messages}``; ``messages`` are those before the answer."""
    if "messages" in record:
        if "prompt" in record or "completion" in record:
            raise ValueError(f"{where}: give either 'messages' or 'prompt' + 'completion', not both")
        messages = _messages(record["messages"], where)
        prompt, answer = messages[:-1], messages[-1]["content"]
        return {"source": plain_source(prompt), "target": answer, "messages": prompt}
    missing = [f for f in ("prompt", "completion") if f not in record]
    if missing:
        raise ValueError(
            f"{where}: missing field {missing[0]!r}; an instruction record holds 'prompt' + 'completion' or "
            f"'messages' (fields: {list(record)})"
        )
    prompt = _text(record, "prompt", where)
    return {
        "source": prompt,
        "target": _text(record, "completion", where),
        "messages": [{"role": "user", "content": prompt}],
    }


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    return 100.0 * sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (the rouge-score package, no stemming), in percent."""
    with requires("hf"):
        from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return 100.0 * sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


@dataclass(eq=False)
class InstructionTask(Task):
    """A task of free-form completions: generated text is compared with the target text, never ranked.

    ``max_new_tokens``: how long an evaluation's generations may run; :func:`dept.chat.prepare` sets it from
    the training completions (it needs the tokenizer); ``None``: the generation default.
    """

    max_new_tokens: Optional[int] = None
    free_form = True

    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRICS

    def parse_prediction(self, text: str) -> str:
        return "" if text is None else str(text).strip()

    def make_example(self, record: Mapping[str, Any]) -> Example:
        meta = {"task": self.name, "idx": record["idx"], "file": record["file"], "line": record["line"]}
        meta["messages"] = record["messages"]
        return Example(record["source"], record["target"], None, meta)

    def metrics(
        self, predictions: Sequence[Any], references: Sequence[Any], groups: Sequence[Hashable] | None = None
    ) -> dict[str, float]:
        """ROUGE-L F1 and exact match of generated texts against Examples (their target) or texts."""
        if len(predictions) != len(references):
            raise ValueError(f"{self.name}: got {len(predictions)} predictions for {len(references)} references")
        if not references:
            raise ValueError("cannot compute metrics on an empty list of predictions")
        preds = [self.parse_prediction(p) for p in predictions]
        refs = [r.target if isinstance(r, Example) else str(r) for r in references]
        return {"rougeL": rouge_l(preds, refs), "exact_match": exact_match(preds, refs)}

    def __repr__(self) -> str:
        return f"InstructionTask({self.name!r}, main_metric={self.main_metric!r}, split_kind={self.split_kind!r})"


def instruction_task(
    spec: str, path: Path, files: Mapping[str, Path], raw: Mapping[str, list[tuple[int, dict]]], name: str | None
) -> InstructionTask:
    """The task of instruction records already read (``raw``: split -> (line number, object)) from ``files``."""
    splits: dict[str, list[Record]] = {}
    for split, rows in raw.items():
        if not rows:
            raise ValueError(f"{files[split]}: no examples in file")
        splits[split] = [
            {**parse_record(obj, f"{files[split]}:{lineno}"), "idx": i, "file": str(files[split]), "line": lineno}
            for i, (lineno, obj) in enumerate(rows)
        ]

    def read(data_dir: str | os.PathLike | None) -> dict[str, list[Record]]:
        return splits

    return InstructionTask(
        name=name or f"custom/{path.stem if path.is_file() else path.name}",
        label_words=None,
        metric_set="free_form",
        split_kind="custom",
        format_fn=lambda rec: (rec["source"], {}),
        sources=(Source("local", read, f"check {path}"),),
        description=f"instruction data from {spec}",
    )


def scoring_for(task: Task, scoring: Optional[str]) -> str:
    """The scoring a run uses: generation for free-form tasks (there are no label strings to rank), else
    ``scoring`` (default rank)."""
    free = getattr(task, "free_form", False)
    if scoring is None:
        return "generate" if free else "rank"
    if free and scoring == "rank":
        raise UsageError(
            f"--scoring rank ranks label strings, and {task.name} has free-form completions; "
            "use --scoring generate (its default)."
        )
    return scoring
