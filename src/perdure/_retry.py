"""Retry policies for activities and workflows."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from perdure._errors import InvalidArgumentError
from perdure._identifiers import shown

__all__ = ["RetryPolicy", "next_attempt_at"]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a failed activity attempt is retried.

    The delay before attempt ``n + 1`` is
    ``min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval)``.
    """

    initial_interval: timedelta = timedelta(seconds=1)
    """Delay before the first retry."""
    backoff_coefficient: float = 2.0
    """Each retry waits this many times longer than the previous one."""
    maximum_interval: timedelta | None = None
    """Cap on the delay; defaults to 100 times ``initial_interval``."""
    maximum_attempts: int = 0
    """Total attempts allowed, the first included; 0 means unlimited."""
    non_retryable_error_types: Sequence[str] = ()
    """Error type names (the exception class name, or ApplicationError.type) never retried."""

    def __post_init__(self) -> None:
        # recorded in history as JSON: a NaN or a wrong type would come back as null
        # (or not at all), so every field is checked here, where the mistake is made
        coefficient = self.backoff_coefficient
        if not isinstance(coefficient, int | float) or isinstance(coefficient, bool) \
                or not math.isfinite(coefficient) or coefficient < 1:
            raise InvalidArgumentError(
                f"RetryPolicy.backoff_coefficient must be a finite number of at least 1, not "
                f"{shown(coefficient)}")
        attempts = self.maximum_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) \
                or not 0 <= attempts <= 2**31 - 1:
            raise InvalidArgumentError(
                "RetryPolicy.maximum_attempts must be 0 (unlimited) or a positive whole "
                f"number, not {shown(attempts)}")
        for name in ("initial_interval", "maximum_interval"):
            interval = getattr(self, name)
            if interval is None and name == "maximum_interval":
                continue
            if not isinstance(interval, timedelta) or interval <= timedelta(0):
                raise InvalidArgumentError(
                    f"RetryPolicy.{name} must be a positive timedelta, not {shown(interval)}")
        types = self.non_retryable_error_types
        if not isinstance(types, list | tuple | set | frozenset) \
                or not all(isinstance(t, str) for t in types):
            raise InvalidArgumentError(
                "RetryPolicy.non_retryable_error_types must be a list of error type names "
                f"(strings), not {shown(types)}")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = self.initial_interval.total_seconds()
        cap = (
            self.maximum_interval.total_seconds()
            if self.maximum_interval is not None
            else base * 100
        )
        try:
            grown = base * self.backoff_coefficient ** (attempt - 1)
        except OverflowError:  # attempt 1,025 of a doubling back-off: long past the cap
            grown = math.inf
        return float(min(grown, cap))

    def allows_another_attempt(self, attempt: int) -> bool:
        """Whether a retry may follow failed attempt number ``attempt``."""
        return self.maximum_attempts == 0 or attempt < self.maximum_attempts

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in history."""
        return {
            "initial_interval": self.initial_interval.total_seconds(),
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": (
                self.maximum_interval.total_seconds() if self.maximum_interval else None
            ),
            "maximum_attempts": self.maximum_attempts,
            "non_retryable_error_types": list(self.non_retryable_error_types),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        """Rebuild a policy from its recorded JSON form."""
        maximum = data.get("maximum_interval")
        return cls(
            initial_interval=timedelta(seconds=data["initial_interval"]),
            backoff_coefficient=data["backoff_coefficient"],
            maximum_interval=timedelta(seconds=maximum) if maximum is not None else None,
            maximum_attempts=data["maximum_attempts"],
            non_retryable_error_types=tuple(data.get("non_retryable_error_types", ())),
        )


def next_attempt_at(
    policy: RetryPolicy, attempt: int, now: float, *, error_type: str = "",
    non_retryable: bool = False, deadline: float | None = None,
    delay: float | None = None,
) -> float | None:
    """When the attempt after failed attempt ``attempt`` may start, or None if the policy
    (attempts, non-retryable types, a ``deadline`` it would pass) allows no more.
    ``delay`` replaces the policy's back-off (the error said when to try again)."""
    if non_retryable:
        return None
    if error_type and (error_type in policy.non_retryable_error_types
                       or error_type.rsplit(".", 1)[-1] in policy.non_retryable_error_types):
        return None
    if not policy.allows_another_attempt(attempt):
        return None
    if delay is not None and not (math.isfinite(delay) and delay >= 0):
        delay = None  # a hint (ApplicationError.next_retry_delay) that is no duration
    at = now + (delay if delay is not None else policy.delay_after(attempt))
    if deadline is not None and at >= deadline:
        return None
    return at
