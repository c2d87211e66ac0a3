"""The one clock every "now" in the engine comes from (DESIGN.md, "One clock")."""

from __future__ import annotations

import time

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock:
    """A source of wall-clock time in seconds since the epoch."""

    def now(self) -> float:
        """Current time, seconds since the epoch."""
        raise NotImplementedError


class SystemClock(Clock):
    """The real wall clock."""

    def now(self) -> float:
        return time.time()


class VirtualClock(Clock):
    """Real time plus an offset that tests advance to skip idle waits.

    The test environment jumps it forward to the next due timer whenever every
    worker is idle: that is time skipping.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self.result_waiters = 0
        """Callers awaiting a workflow result; time is skipped only while there are some."""

    def now(self) -> float:
        return time.time() + self._offset

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (never backward)."""
        delta = when - self.now()
        if delta > 0:
            self._offset += delta
