"""Whether a worker's event loop still runs, as seen from its liveness thread.

The liveness heartbeat is beaten from a thread (``store.keep_alive``), so a loop that
workflow code or an activity blocks for a while, or that a loaded machine starves, does
not make the worker look dead (DESIGN's invariant 5). A loop stuck for good must not
keep the worker's work hostage, though: past ``WorkerOptions.loop_stall_timeout``
without a tick, the watch says the worker is not alive, its heartbeat stops, and other
workers take its work over.
"""

from __future__ import annotations

import asyncio
import logging
import time

__all__ = ["LoopWatch"]

_log = logging.getLogger("perdure.worker")


class LoopWatch:
    """Ticks on the event loop every ``interval``; :meth:`alive` (any thread) is true
    while the last tick is less than ``stall_timeout`` old."""

    def __init__(self, identity: str, interval: float, stall_timeout: float) -> None:
        self.identity = identity
        self.interval = interval
        self.stall_timeout = stall_timeout
        self.last_tick = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        self._stalled = False

    def start(self) -> None:
        """Start ticking on the running loop."""
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def alive(self) -> bool:
        """Whether the loop ran recently enough for the worker to count as alive (called
        in the liveness thread, before each beat; logs when that changes)."""
        stalled_for = time.monotonic() - self.last_tick
        if stalled_for <= self.stall_timeout:
            if self._stalled:
                self._stalled = False
                _log.warning("worker %s: its event loop runs again; liveness heartbeat "
                             "resumed", self.identity)
            return True
        if not self._stalled:
            self._stalled = True
            _log.error(
                "worker %s: its event loop has not run for %.0fs (loop_stall_timeout "
                "%.0fs): workflow code or an activity blocks it (use a plain def activity, "
                "which runs in a thread, for blocking work); its liveness heartbeat stops, "
                "so that other workers take over its work", self.identity, stalled_for,
                self.stall_timeout)
        return False
