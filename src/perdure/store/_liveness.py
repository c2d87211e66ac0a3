"""Workers' liveness heartbeats, beaten from a thread on a connection of its own.

A worker is alive while its process is: a worker whose event loop is merely slow or
blocked for a while (workflow code, an activity that does not yield, a loaded machine)
must not be declared dead (DESIGN's invariant 5), or its work is run twice. So the
heartbeat does not wait for the event loop, nor for the store's writer queue: a thread
writes it on its own connection. Each worker says, through ``alive``, whether its loop
has run recently enough to count as alive at all; a loop stuck for good stops the beat,
so that other workers take over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LIVENESS_UPSERT", "LivenessThread"]

_log = logging.getLogger("perdure.store")

LIVENESS_UPSERT = (
    # an upsert: a worker declared dead (its process was frozen, or cut off) comes back
    # to life, so that its later leases stay reclaimable if it then really dies
    "INSERT INTO workers (worker_id, task_queues, heartbeat_at, started_at) "
    "VALUES (?, '[]', ?, ?) ON CONFLICT (worker_id) DO UPDATE SET "
    "heartbeat_at = excluded.heartbeat_at"
)


class _Beating:
    __slots__ = ("alive", "interval", "next_at")

    def __init__(self, interval: float, alive: Callable[[], bool]) -> None:
        self.interval = interval
        self.alive = alive
        self.next_at = 0.0


class LivenessThread:
    """Beats the heartbeats of one store's workers every ``interval`` (each its own), on
    a connection that ``connect`` opens (and opens again after an error), while their
    ``alive()`` says so. The statement takes ``?`` placeholders and commits by itself."""

    def __init__(self, connect: Callable[[], Any], name: str) -> None:
        self._connect = connect
        self._workers: dict[str, _Beating] = {}
        self._lock = threading.Lock()
        """Held while beating: ``remove`` returns only once no beat of its worker is
        under way, so that none lands after the worker deregistered."""
        self._wake = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def add(self, worker_id: str, interval: float, alive: Callable[[], bool]) -> None:
        """Beat ``worker_id`` from now on (the first beat at once)."""
        with self._wake:
            self._workers[worker_id] = _Beating(interval, alive)
            self._wake.notify()

    def remove(self, worker_id: str) -> None:
        """Stop beating ``worker_id``; blocks until no beat of it is under way."""
        with self._lock, self._wake:
            self._workers.pop(worker_id, None)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _due(self) -> list[str] | None:
        """The workers due for a beat, waiting until one is; None once stopped."""
        with self._wake:
            while not self._stopping:
                now = time.monotonic()
                due = [w for w, b in self._workers.items() if b.next_at <= now]
                if due:
                    for worker_id in due:
                        beating = self._workers[worker_id]
                        beating.next_at = now + beating.interval
                    return due
                soonest = min((b.next_at for b in self._workers.values()), default=now + 1)
                self._wake.wait(max(0.001, soonest - now))
            return None

    def _main(self) -> None:
        conn: Any = None
        failures = 0
        while True:
            due = self._due()
            if due is None:
                break
            with self._lock:
                try:
                    if conn is None:
                        conn = self._connect()
                    for worker_id in due:
                        beating = self._workers.get(worker_id)
                        if beating is None or not beating.alive():
                            continue
                        now = time.time()
                        conn.execute(LIVENESS_UPSERT, (worker_id, now, now))
                    failures = 0
                except Exception as exc:  # the database is away: beat again once it is back
                    failures += 1
                    if failures == 1 or failures % 100 == 0:
                        _log.warning("liveness heartbeat failed (%d in a row), retrying: %r",
                                     failures, exc)
                    _close(conn)
                    conn = None
        _close(conn)


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
