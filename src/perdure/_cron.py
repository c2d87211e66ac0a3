"""Cron schedules of workflows (``start_workflow(cron_schedule=...)``), read as Temporal
reads them: five standard fields in UTC, or a shorthand (``@hourly``, ``@daily``,
``@weekly``, ``@monthly``, ``@yearly``, ``@every 90m``).

Pure: when a chain's next run is due, given the last run's nominal time and now.
Five-field expressions are evaluated by ``cronsim``; ``@every`` is a fixed period
anchored at the chain's start, as in Temporal (``robfig/cron``).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from perdure._errors import InvalidArgumentError

__all__ = ["CronSchedule"]

_SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_HELP = (
    "use five fields (minute hour day-of-month month day-of-week, in UTC), such as "
    "'*/5 * * * *', or @hourly, @daily, @weekly, @monthly, @yearly or '@every 90m'"
)


_LONGEST = 100 * 365 * 86400.0
"""The longest ``@every`` period accepted (a hundred years)."""


def _period(text: str, expression: str) -> float:
    """Seconds of a Go-style duration (``1h30m``, ``90s``), whole, at least one."""
    position, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text) or not math.isfinite(total) or total > _LONGEST:
        raise InvalidArgumentError(
            f"cron schedule {expression!r}: {text!r} is not a duration of at most a hundred "
            "years; write it as Go durations are written, such as '@every 90m', "
            "'@every 1h30m' or '@every 45s'"
        )
    return max(1.0, float(math.floor(total)))


class CronSchedule:
    """A parsed cron schedule; :class:`InvalidArgumentError` names a bad expression."""

    def __init__(self, expression: str) -> None:
        if not isinstance(expression, str) or not expression.strip():
            raise InvalidArgumentError(f"cron schedule {expression!r} is empty; {_HELP}")
        self.expression = expression
        text = " ".join(expression.split())
        self._every: float | None = None
        if text.startswith("@every"):
            self._every = _period(text[len("@every"):].strip(), expression)
            return
        self._fields = _SHORTHANDS.get(text.lower(), text)
        if self._fields.startswith(("@", "CRON_TZ=", "TZ=")) or len(self._fields.split()) != 5:
            raise InvalidArgumentError(f"cron schedule {expression!r} is not understood; {_HELP}")
        try:
            next(CronSim(self._fields, datetime(2000, 1, 1, tzinfo=UTC)))
        except (CronSimError, StopIteration) as exc:
            raise InvalidArgumentError(
                f"cron schedule {expression!r} is not valid ({exc}); {_HELP}"
            ) from None

    def _after(self, when: float) -> float:
        """The first tick strictly after ``when`` (seconds since the epoch)."""
        moment = datetime.fromtimestamp(when, tz=UTC)
        return next(CronSim(self._fields, moment)).timestamp()

    def next_time(self, scheduled: float, now: float) -> float:
        """When the run after one scheduled at ``scheduled`` starts, if it closes at
        ``now``: the first tick after ``scheduled`` that is not before ``now`` (ticks
        missed while the run ran are skipped), as Temporal computes it."""
        if now < scheduled:
            return scheduled
        if self._every is not None:
            period = self._every
            anchor = math.floor(scheduled)
            ticks = max(1, math.ceil((now - anchor) / period))
            return anchor + ticks * period
        # a tick exactly at ``now`` still counts: look from just before it
        return self._after(max(scheduled, now - 1e-6))

    def first_time(self, now: float) -> float:
        """When a chain started at ``now`` runs first: the first tick after it."""
        if self._every is not None:
            return math.floor(now) + self._every
        return self._after(now)
