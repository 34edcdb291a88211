"""What examples need from the tokenizer before they are encoded: the chat template, the length check of
instruction rows, and how many tokens an evaluation generates. Tasks never see a tokenizer, so a run
(`dept train`), `dept eval` and `dept predict` call these once the backbone's tokenizer is loaded.

With ``--chat-template`` a source is rendered by ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)``: an instruction record's messages before the answer (a
prompt/completion record is one user message), any other task's source as one user message. The target
then follows as usual (`dept.data.encode`: " " + target + EOS, the tokenizer's EOS, e.g. SmolLM2-Instruct's
``<|im_end|>``). `encode` tokenizes a source with the tokenizer's special tokens, so a template that writes
them itself (Llama 3's ``<|begin_of_text|>``) would get its BOS twice: the rendered text drops the prefix
the tokenizer adds on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Optional

from dept.data import target_ids
from dept.errors import UsageError

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 128  # generation length cap for an instruction task's evaluation (its longest completion below)
DEFAULT_NEW_TOKENS = 20  # the paper's generation length, for tasks without completions of their own


def _added_prefix(tokenizer) -> str:
    """The text of the special tokens the tokenizer puts before any text (a BOS), or ""."""
    empty, text = tokenizer("")["input_ids"], tokenizer("x")["input_ids"]
    lead = 0
    while lead < min(len(empty), len(text)) and empty[lead] == text[lead]:
        lead += 1
    return tokenizer.decode(empty[:lead]) if lead else ""


def render(tokenizer, messages: Sequence[dict], prefix: Optional[str] = None) -> str:
    """Messages before the answer, in the tokenizer's chat template, ending with the assistant's cue.
    `prefix`: `_added_prefix(tokenizer)`, when the caller renders many."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise UsageError(
            f"--chat-template: the tokenizer of {name} has no chat template; use an instruct/chat model "
            "(e.g. SmolLM2-135M-Instruct) or leave --chat-template out."
        )
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    prefix = _added_prefix(tokenizer) if prefix is None else prefix
    return text[len(prefix) :] if prefix and text.startswith(prefix) else text


def render_sources(tokenizer, examples: Iterable) -> None:
    """Replace each example's source by its chat-template rendering (idempotent: renders its messages)."""
    prefix = _added_prefix(tokenizer)  # two tokenizer calls, once rather than per example
    for e in examples:
        messages = e.meta.setdefault("messages", [{"role": "user", "content": e.source}])
        e.source = render(tokenizer, messages, prefix)


def check_lengths(tokenizer, kind: str, examples: Iterable, max_length: int) -> None:
    """Refuse an instruction row that does not fit --max-length: encode would cut its prompt (the chat
    template's assistant cue first), and a completion longer than the row would lose its end."""
    for e in examples:
        source = len(tokenizer(e.source)["input_ids"])
        answer = len(target_ids(tokenizer, e.target, kind)) + (tokenizer.eos_token_id is not None)
        total = source + answer if kind == "causal" else max(source, answer)
        if total > max_length:
            raise ValueError(
                f"{e.meta['file']}:{e.meta['line']}: prompt and completion take {source} + {answer} tokens, more than "
                f"--max-length {max_length}: the row would be cut; raise --max-length or shorten the record."
            )


def generation_length(tokenizer, kind: str, train: Sequence) -> int:
    """Tokens an evaluation may generate: the longest training completion's (its targets say how long an
    answer runs), at most MAX_NEW_TOKENS, so generation neither cuts answers nor runs on to 20 tokens'
    worth of noise after short ones. Validation and test targets are not looked at."""
    longest = max((len(target_ids(tokenizer, e.target, kind)) for e in train), default=DEFAULT_NEW_TOKENS)
    return max(1, min(MAX_NEW_TOKENS, longest))


def prepare(
    task, tokenizer, kind: str, train: Sequence, sets: Iterable[Sequence], chat_template: bool, max_length: int
) -> None:
    """Ready `sets` (lists of examples, some shared) and the full training split `train` for `kind`: the
    chat template when asked, and for free-form tasks the length check and `task.max_new_tokens` (from
    `train`)."""
    examples = list({id(e): e for s in (*sets, train) for e in s}.values())
    if chat_template:
        render_sources(tokenizer, examples)
    if getattr(task, "free_form", False):
        if kind == "classification":
            raise UsageError(f"{task.name} has free-form completions: it needs a causal or seq2seq backbone.")
        check_lengths(tokenizer, kind, examples, max_length)
        task.max_new_tokens = generation_length(tokenizer, kind, train)
        logger.info("%s: evaluation generates up to %d tokens", task.name, task.max_new_tokens)
