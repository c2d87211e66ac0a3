"""The public test environment (see ``perdure.testing``)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from perdure._clock import Clock, SystemClock, VirtualClock
from perdure._errors import InvalidArgumentError
from perdure.client import Client
from perdure.worker import Worker, WorkerOptions

__all__ = ["WorkflowEnvironment"]

_SAME_INSTANT = 1e-3
"""Due times this close past a sleep's end count as reached: sums of epoch seconds in
floating point may differ in their last digits (a timer set at day 60 for 30 days)."""
_SLOW = 0.25
"""Real seconds of busy workers after which a step lets the clock run again (catching
up): activities that take real time still meet their timeouts as on a real clock."""
_STUCK = 0.5
"""Real seconds that ready work may sit, untouched, before a step stops waiting for it."""


class WorkflowEnvironment:
    """A client, its store and the workers started through :meth:`worker`."""

    def __init__(self, client: Client, *, clock: Clock, tempdir: str | None) -> None:
        self.client = client
        self.clock = clock
        self._tempdir = tempdir
        self._workers: list[Worker] = []
        self._skipper: asyncio.Task[None] | None = None
        self._stepping = asyncio.Lock()
        """Held by whoever moves the clock (``sleep``, or skipping for a result): one
        stepping at a time."""
        if isinstance(clock, VirtualClock):
            self._skipper = asyncio.create_task(self._skip_time(clock), name="perdure-time-skip")

    @classmethod
    async def start_time_skipping(cls, url: str | None = None) -> WorkflowEnvironment:
        """An environment whose clock skips idle waits (on a temporary SQLite file by default)."""
        return await cls._start(url, VirtualClock())

    @classmethod
    async def start_local(cls, url: str | None = None) -> WorkflowEnvironment:
        """An environment on the real clock (on a temporary SQLite file by default)."""
        return await cls._start(url, SystemClock())

    @classmethod
    async def _start(cls, url: str | None, clock: Clock) -> WorkflowEnvironment:
        tempdir = None
        if url is None:
            tempdir = tempfile.mkdtemp(prefix="perdure-test-")
            url = f"sqlite:///{os.path.join(tempdir, 'perdure.db')}"
        client = await Client.connect(url, clock=clock, synchronous="NORMAL"
                                      if url.startswith("sqlite") else "FULL")
        return cls(client, clock=clock, tempdir=tempdir)

    def worker(
        self,
        *,
        task_queue: str | Sequence[str],
        workflows: Sequence[type] = (),
        activities: Sequence[Callable[..., Any]] = (),
        options: WorkerOptions | None = None,
        **kwargs: Any,
    ) -> Worker:
        """A worker on this environment's client; time skipping waits for it to be idle."""
        worker = Worker(self.client, task_queue=task_queue, workflows=workflows,
                        activities=activities, options=options, **kwargs)
        self._workers.append(worker)
        return worker

    async def sleep(self, duration: timedelta | float) -> None:
        """Let ``duration`` pass, as Temporal's ``env.sleep`` does.

        On a time-skipping clock, time moves from due time to due time (timers, retry
        back-offs, delayed workflow tasks, activity timeouts) up to ``now + duration``;
        after each step, and before returning, this waits until every worker is idle and
        nothing is ready: what the new time set off has run, and a query sees it. On a
        real clock, it really sleeps.
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidArgumentError(f"env.sleep needs a duration of 0 or more, not {seconds}")
        clock = self.clock
        if not isinstance(clock, VirtualClock):
            await asyncio.sleep(seconds)
            return
        async with self._stepping:
            clock.freeze()
            try:
                target = clock.now() + seconds
                await self._settle(clock)
                while True:
                    due = await self.client.store.next_due_time(
                        self._served_queues(), after=clock.now(), running_on=self._identities())
                    if due is None or due > target + _SAME_INSTANT:
                        break
                    self._advance(clock, due)
                    await self._settle(clock)
                self._advance(clock, target)
                await self._settle(clock)
            finally:
                clock.thaw()

    async def get_current_time(self) -> datetime:
        """The environment's current time (aware, UTC): as skipped to, on a virtual clock."""
        return datetime.fromtimestamp(self.clock.now(), tz=UTC)

    @property
    def supports_time_skipping(self) -> bool:
        """Whether this environment skips time (``start_time_skipping``)."""
        return isinstance(self.clock, VirtualClock)

    def _all_workers(self) -> list[Worker]:
        """Workers made here, and any other started on this environment's client (an
        ``AgentWorker``, say): time may only skip while every one of them is idle."""
        return [*self._workers,
                *(w for w in self.client._local_workers if w not in self._workers)]

    def _running_workers(self) -> list[Worker]:
        return [w for w in self._all_workers() if w._started and not w._stopping.is_set()]

    def _identities(self) -> list[str]:
        """The workers whose running attempts' deadlines time passes only really."""
        return [w.identity for w in self._running_workers()]

    def _served_queues(self) -> list[str]:
        # tasks on queues that no worker here serves must not stop time skipping
        return sorted({q for w in self._running_workers() for q in w.task_queues})

    def _advance(self, clock: VirtualClock, when: float) -> None:
        clock.freeze()  # thawed by a slow settle: stand still again for this step
        clock.advance_to(when)
        self.client.store.notifier.notify(self.client.store.notifier.KINDS)

    async def _settle(self, clock: VirtualClock,
                      keep_going: Callable[[], bool] | None = None) -> bool:
        """Wait until every worker is idle and nothing is ready or due at the current time:
        the state at this time is reached. False if ``keep_going`` turned false first.

        The clock stays frozen while this waits, unless the workers stay busy for more
        than ``_SLOW`` seconds (an activity that waits in real time): then it thaws and
        catches up, so that such an activity's timeouts come as on a real clock. Work that is ready but that no worker here
        takes (an activity type nobody registered) counts as settled after ``_STUCK``
        seconds without any change, and so do activities that keep running that long
        without committing or heartbeating (one waiting on an event the test sets later).
        """
        store = self.client.store
        loop = asyncio.get_running_loop()
        unsettled_since = loop.time()
        unchanged_since: float | None = None
        quiet = 0
        busy_version, busy_since = store.notifier.version, loop.time()
        while keep_going is None or keep_going():
            version = store.notifier.version
            if all(w.is_idle() for w in self._all_workers()):
                pending = False
                if self._running_workers():
                    queues = self._served_queues()
                    due = await store.next_due_time(queues)
                    pending = (due is not None and due <= clock.now()) \
                        or await store.count_ready_tasks(queues) > 0
                changed = store.notifier.version != version \
                    or not all(w.is_idle() for w in self._all_workers())
                if changed:
                    quiet, unchanged_since = 0, None
                elif not pending:
                    quiet += 1
                    if quiet >= 3:  # three calm looks in a row: no commit is on its way
                        return True
                elif unchanged_since is None:
                    unchanged_since = loop.time()
                elif loop.time() - unchanged_since > _STUCK:
                    return True
            else:
                quiet, unchanged_since = 0, None
                if clock.frozen and loop.time() - unsettled_since > _SLOW:
                    clock.thaw()
                    store.notifier.notify(store.notifier.KINDS)  # deadlines may be due
                progress = max((w.last_activity_progress for w in self._all_workers()),
                               default=0.0)
                if store.notifier.version != busy_version or progress > busy_since:
                    # a commit, or an activity heartbeating: at work, not waiting
                    busy_version, busy_since = store.notifier.version, loop.time()
                elif (loop.time() - busy_since > _STUCK
                      and not any(w._inflight_workflow_tasks for w in self._all_workers())):
                    # only activities run, and nothing has been committed for a while: one
                    # waiting on something outside (a test's event, a human) is work in
                    # progress at this time, not something to wait for
                    return True
            await asyncio.sleep(0.002)
        return False

    async def _skip_time(self, clock: VirtualClock) -> None:
        """While someone awaits a workflow result, step to the next due time whenever the
        state at the current one is reached: one step per turn of ``_stepping``, so that
        an ``env.sleep`` waiting for its turn is not starved."""
        store = self.client.store

        def waiting() -> bool:
            return clock.result_waiters > 0

        while True:
            await asyncio.sleep(0.005)
            if clock.result_waiters <= 0 or self._stepping.locked():
                continue
            async with self._stepping:
                clock.freeze()
                try:
                    if not await self._settle(clock, waiting):
                        continue
                    due = await store.next_due_time(self._served_queues(), after=clock.now(),
                                                    running_on=self._identities())
                    if due is None:
                        continue
                    self._advance(clock, due)
                    await self._settle(clock, waiting)
                except Exception:
                    # the store closing under a test's feet: try again on the next turn
                    continue
                finally:
                    clock.thaw()

    async def shutdown(self) -> None:
        """Stop the workers started here, the time skipper and the store; remove temp files."""
        for worker in self._workers:
            await worker.shutdown()
        if self._skipper is not None:
            self._skipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._skipper
        await self.client.close()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)

    async def __aenter__(self) -> WorkflowEnvironment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
