"""The public test environment (see ``perdure.testing``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from perdure._clock import Clock, SystemClock, VirtualClock
from perdure.client import Client
from perdure.worker import Worker, WorkerOptions

__all__ = ["WorkflowEnvironment"]


class WorkflowEnvironment:
    """A client, its store and the workers started through :meth:`worker`."""

    def __init__(self, client: Client, *, clock: Clock, tempdir: str | None) -> None:
        self.client = client
        self.clock = clock
        self._tempdir = tempdir
        self._workers: list[Worker] = []
        self._skipper: asyncio.Task[None] | None = None
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
        """Let ``duration`` pass: jumps the virtual clock, or really sleeps on a real one."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        if isinstance(self.clock, VirtualClock):
            self.clock.advance_to(self.clock.now() + seconds)
            self.client.store.notifier.notify(self.client.store.notifier.KINDS)
            await asyncio.sleep(0.01)
        else:
            await asyncio.sleep(seconds)

    def _all_workers(self) -> list[Worker]:
        """Workers made here, and any other started on this environment's client (an
        ``AgentWorker``, say): time may only skip while every one of them is idle."""
        return [*self._workers,
                *(w for w in self.client._local_workers if w not in self._workers)]

    def _served_queues(self) -> list[str]:
        # tasks on queues that no worker here serves must not stop time skipping
        running = [w for w in self._all_workers()
                   if w._started and not w._stopping.is_set()]
        return sorted({q for w in running for q in w.task_queues})

    async def _idle(self) -> bool:
        store = self.client.store
        for _ in range(3):
            version = store.notifier.version
            if not all(w.is_idle() for w in self._all_workers()):
                return False
            if await store.count_ready_tasks(self._served_queues()) > 0:
                return False
            await asyncio.sleep(0.002)
            if store.notifier.version != version:
                return False
        return all(w.is_idle() for w in self._all_workers())

    async def _skip_time(self, clock: VirtualClock) -> None:
        store = self.client.store
        while True:
            await asyncio.sleep(0.005)
            if clock.result_waiters <= 0:
                continue
            try:
                if not await self._idle():
                    continue
                due = await store.next_due_time(self._served_queues())
            except Exception:
                continue
            if due is not None and due > clock.now():
                clock.advance_to(due + 0.001)
                store.notifier.notify(store.notifier.KINDS)

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
