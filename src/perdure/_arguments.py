"""Checking what callers pass: durations, enum values, whole numbers, flags.

Each check either returns the value in the form Perdure stores, or raises
:class:`InvalidArgumentError` naming the argument, what it got and what it takes, before
anything is written. Ids and names have their own rule (``_identifiers``).
"""

from __future__ import annotations

import enum
import math
from datetime import timedelta
from typing import Any, TypeVar

from perdure._errors import InvalidArgumentError
from perdure._identifiers import shown
from perdure._recorded import replaying_recorded

__all__ = [
    "MAX_WHOLE_NUMBER",
    "check_bool",
    "check_enum",
    "check_retry_policy",
    "check_seconds",
    "check_whole_number",
]

E = TypeVar("E", bound=enum.Enum)

MAX_WHOLE_NUMBER = 2**63 - 1
"""The largest integer both backends store (a signed 64-bit column)."""


def check_seconds(value: Any, what: str, *, zero: bool = False) -> float | None:
    """A duration (``timedelta`` or seconds) as finite, positive seconds; ``None`` stays
    ``None``. ``zero`` admits 0 (a wait that gives up at once)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float: no duration is that long
            seconds = math.inf
    else:
        raise InvalidArgumentError(
            f"{what} must be a timedelta or a number of seconds, not "
            f"{type(value).__name__} ({shown(value)})")
    if replaying_recorded():
        return seconds  # history holds it already (older Perdure let infinity through)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        raise InvalidArgumentError(
            f"{what} must be a finite, {'non-negative' if zero else 'positive'} duration, "
            f"not {shown(value)} (leave it None for no limit)")
    return seconds


def check_enum(cls: type[E], value: Any, what: str) -> E:
    """``value`` as a member of ``cls`` (a member, or one of its values)."""
    try:
        return cls(value)
    except (ValueError, TypeError):
        allowed = ", ".join(repr(m.value) for m in cls)
        raise InvalidArgumentError(
            f"{what} must be a {cls.__name__} ({allowed}), not {shown(value)}") from None


def check_whole_number(value: Any, what: str, *, minimum: int = 0,
                       maximum: int = MAX_WHOLE_NUMBER) -> int:
    """An ``int`` (not a bool) from ``minimum`` to ``maximum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(
            f"{what} must be a whole number, not {type(value).__name__} ({shown(value)})")
    if not minimum <= value <= maximum:
        raise InvalidArgumentError(
            f"{what} must be from {minimum} to {maximum}, not {shown(value)}")
    return value


def check_bool(value: Any, what: str) -> bool:
    """``True`` or ``False``, nothing else."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(
            f"{what} must be True or False, not {type(value).__name__} ({shown(value)})")
    return value


def check_retry_policy(value: Any, what: str = "retry_policy") -> Any:
    """A :class:`RetryPolicy` or ``None``."""
    from perdure._retry import RetryPolicy

    if value is not None and not isinstance(value, RetryPolicy):
        raise InvalidArgumentError(
            f"{what} must be a perdure.RetryPolicy or None, not {type(value).__name__} "
            f"({shown(value)})")
    return value
