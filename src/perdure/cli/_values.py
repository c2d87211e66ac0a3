"""The kinds of value the ``perdure`` command takes: durations, counts, dates.

Each is an argparse ``type=`` that refuses, in one line, whatever is not finite or not
in range (``nan``, ``inf``, a negative count): such a value would otherwise reach a
query whose answer depends on the backend (NaN sorts above every number in PostgreSQL,
below none in SQLite).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["MAX_DURATION", "duration", "when", "whole_number"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 100 * 365 * 86400
"""The longest duration taken (100 years): anything longer is a typo."""


def duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` (or plain seconds) to seconds: finite, from 0
    to 100 years."""
    value = text.strip().lower()
    try:
        if value and value[-1] in _UNITS:
            seconds = float(value[:-1]) * _UNITS[value[-1]]
        else:
            seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write it as 30d, 12h, 90m or 3600s"
        ) from None
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finite duration; write it as 30d, 12h, 90m or 3600s"
        )
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 100 years (36500d)")
    return seconds


def whole_number(least: int, most: int) -> Callable[[str], int]:
    """A ``type=`` for a whole number from ``least`` to ``most``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: from {least} to {most}"
            )
        return value

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


def when(text: str) -> datetime:
    """An ISO date or time (UTC unless it says otherwise)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: write it as 2026-11-29 or 2026-11-29T08:00:00+00:00"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value
