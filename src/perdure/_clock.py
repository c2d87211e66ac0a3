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
    """Real time plus an offset that the test environment moves forward (time skipping).

    While the environment steps time, it *freezes* the clock: every activation and
    activity that a step sets off sees the step's time exactly, so that a timer set
    by a workflow woken at day 30 falls at day 60, not a few milliseconds later.
    Thawed, the clock catches up the real time that passed meanwhile, as if it had
    never stopped.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen: float | None = None
        self._frozen_at = 0.0
        """``time.time()`` when the clock was frozen."""
        self.result_waiters = 0
        """Callers awaiting a workflow result; time is skipped only while there are some."""

    def now(self) -> float:
        frozen = self._frozen
        return frozen if frozen is not None else time.time() + self._offset

    @property
    def frozen(self) -> bool:
        """Whether the clock stands still (the environment is stepping)."""
        return self._frozen is not None

    def freeze(self) -> None:
        """Stop the clock at the current time (until :meth:`thaw`)."""
        if self._frozen is None:
            self._frozen_at = time.time()
            self._frozen = self._frozen_at + self._offset

    def thaw(self) -> None:
        """Run with real time again, adding the real time that passed while frozen."""
        if self._frozen is not None:
            self._offset = self._frozen - self._frozen_at
            self._frozen = None

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (never backward)."""
        if self._frozen is not None:
            self._frozen = max(self._frozen, when)
            return
        delta = when - self.now()
        if delta > 0:
            self._offset += delta
