"""Text-to-text formatting helpers: field-name templates, STS-B targets, MultiRC markup, WSC marks.

Templates follow the official DePT code (``src/tasks.py``, inherited from ATTEMPT / compacter):
the source is ``"name1: value1 name2: value2 ..."`` with no task-name prefix (the official
``add_prefix`` defaults to False).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


def fields_source(record: Mapping[str, Any], fields: Sequence[str | tuple[str, str]]) -> str:
    """``"a: <record[a]> b: <record[b]>"``; a field may be ``(shown name, record key)``."""
    parts = []
    for f in fields:
        shown, key = (f, f) if isinstance(f, str) else f
        parts.append(f"{shown}: {str(record[key]).strip()}")
    return " ".join(parts)


def stsb_target(score: float | str) -> str:
    """STS-B score -> target text: rounded to the nearest multiple of 0.2 (halves up), one decimal.

    Fixes the official ``np.round((label * 5) / 5, decimals=1)``, which rounds to 0.1 (the
    multiply/divide cancel) and so yields 51 target strings instead of the intended 26.
    Decimal arithmetic on the printed value avoids binary-float surprises (3.7 -> 3.8, 0.1 -> 0.2).
    """
    d = Decimal(str(score).strip())
    q = (d * 5).quantize(Decimal(1), rounding=ROUND_HALF_UP) / 5
    q = min(max(q, Decimal(0)), Decimal(5))
    return f"{q:.1f}"


STSB_TARGETS = [f"{i / 5:.1f}" for i in range(26)]  # "0.0", "0.2", ..., "5.0"


def remove_markup(text: str) -> str:
    """MultiRC: drop ``<b>``/``</b>``, turn ``<br>`` into a space (as T5 and DePT do)."""
    text = re.sub(r"<br>", " ", text)
    return re.sub(r"<(/)?b>", "", text)


def _locate_span(text: str, words: list[tuple[int, int]], span: str, index: int) -> tuple[int, int] | None:
    """Character range of ``span`` starting at word ``index`` (whitespace-split words).

    As in T5's regex, the span's last word need only be a prefix of the text word (``him`` in
    ``him,"``); matching ignores case and collapses whitespace. If the given index does not match
    (a few SuperGLUE WSC rows have wrong indices), the nearest matching position is used.
    """
    sw = span.split()
    if not sw:
        return None

    def matches(i: int) -> bool:
        if i < 0 or i + len(sw) > len(words):
            return False
        for j, w in enumerate(sw):
            tok = text[words[i + j][0] : words[i + j][1]].lower()
            if j < len(sw) - 1 and tok != w.lower():
                return False
            if j == len(sw) - 1 and not tok.startswith(w.lower()):
                return False
        return True

    order = sorted(range(len(words)), key=lambda i: (abs(i - index), i))
    for i in order:
        if matches(i):
            start = words[i][0]
            end = words[i + len(sw) - 1][0] + len(sw[-1])
            return start, end
    return None


def mark_wsc_spans(text: str, span1_text: str, span1_index: int, span2_text: str, span2_index: int) -> str:
    """T5-style WSC marking: ``* noun *`` around span 1 and ``# pronoun #`` around span 2.

    ``"Still, anyone who ... away from him ."`` -> ``"Still, * anyone * who ... away from # him # ."``
    Word indices count whitespace-separated words of the original text (the official regex marks
    span 2 with an index shifted by the two words the first mark added; working on character
    offsets of the original text makes that shift unnecessary). A span that cannot be found is
    left unmarked.
    """
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    # (position, 0 = closing / 1 = opening, nesting key, inserted text); sorting puts closings
    # before openings at one position and nests overlapping spans: "* # their # mothers *".
    inserts: list[tuple[int, int, int, str]] = []
    for span, index, mark in ((span1_text, span1_index, "*"), (span2_text, span2_index, "#")):
        loc = _locate_span(text, words, span, int(index))
        if loc is not None:
            start, end = loc
            inserts += [(start, 1, -end, f"{mark} "), (end, 0, -start, f" {mark}")]
    pieces, last = [], 0
    for pos, _, _, s in sorted(inserts):
        pieces += [text[last:pos], s]
        last = pos
    return "".join(pieces) + text[last:]
