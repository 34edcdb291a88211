"""The user's mistakes: one exception type the command line prints as one line, and the checks that raise it.

No torch here: options, the method registry and the command line refuse a mistake before anything heavy loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

MAX_LEARNING_RATE = 1e3  # Adam moves a parameter by about lr per step; embeddings' RMS is O(1) (defaults: 6 x RMS)


class UsageError(ValueError):
    """A mistake in what the user asked for; the command line prints it as one line, without a traceback."""


def check_choice(flag: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}; got {value!r}.")


def check_at_least(flag: str, value: Optional[float], low: float) -> None:
    if value is not None and value < low:
        raise UsageError(f"{flag} must be at least {low:g}; got {value}.")


def check_at_most(flag: str, value: Optional[float], high: float, why: str) -> None:
    if value is not None and value > high:
        limit = f"{high:g}" if isinstance(high, float) else f"{high:,}"
        raise UsageError(f"{flag} must be at most {limit} ({why}); got {value}.")


def check_learning_rate(flag: str, value: float) -> None:
    """A non-finite, non-positive or absurd rate can only produce a diverged adapter (or none at all)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a finite number above 0; got {value}.")
    check_at_most(flag, value, MAX_LEARNING_RATE, "Adam moves each parameter by about the rate per step")


def not_utf8(path: Any, err: UnicodeDecodeError) -> str:
    """The one-line message for a file that does not decode as UTF-8."""
    byte = err.object[err.start : err.start + 1].hex()
    return f"{path} is not UTF-8 text (byte 0x{byte}: {err.reason}); save it as UTF-8."


def read_text(path: Path, flag: str = "") -> str:
    """A text file's contents, or one line naming the file (and its flag) if it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{flag + ' ' if flag else ''}{not_utf8(path, err)}") from None
