"""A row's generated tokens as text: streamed incrementally, cut at the request's stop strings.

Text that may still turn into a stop string, or a multi-byte character not yet complete, is held
back until the next token decides it, so a stream never sends what the final text does not hold.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of `text` already handed out

    def add(self, token: int) -> tuple[str, bool]:
        """The new text this token makes safe to send, and whether a stop string ended the text."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            return self._flush(len(self.text)), True
        self.text = text
        safe = len(text) - text.endswith("\ufffd")  # an incomplete character decodes to U+FFFD
        safe -= max((_held(text[:safe], s) for s in self.stop), default=0)
        return self._flush(safe), False

    def finish(self) -> str:
        """Whatever was held back, once the row ends for another reason (EOS, length)."""
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : upto], upto
        return delta


def _held(text: str, stop: str) -> int:
    """How many characters at the end of `text` may still grow into `stop` (the longest proper
    prefix of `stop` that `text` ends with); only the last len(stop) - 1 characters are looked at."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
