"""The deterministic asyncio event loop that workflow code runs on.

It never blocks and never looks at a real clock: ``time()`` is the workflow's
activation time, ``call_later`` becomes a durable timer command, and ``step``
runs ready callbacks until nothing is runnable. Everything asyncio builds on a
loop (tasks, futures, gather, wait, wait_for, shield, Event, Lock, Queue) then
works unchanged and replays identically.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import math
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from perdure._errors import InvalidArgumentError

if TYPE_CHECKING:
    from perdure.workflow._instance import WorkflowInstance

__all__ = ["DurableTimerHandle", "WorkflowEventLoop"]


class DurableTimerHandle(asyncio.TimerHandle):
    """A ``call_later`` handle backed by a durable timer; cancelling it cancels the timer."""

    def __init__(
        self,
        seq: int,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: WorkflowEventLoop,
        context: contextvars.Context | None,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self.seq = seq
        self._workflow_loop = loop

    def cancel(self) -> None:
        if not self.cancelled():
            self._workflow_loop.instance.cancel_timer(self)
        super().cancel()


class _WorkflowFuture(asyncio.Future):  # type: ignore[type-arg]
    """A future whose hash is its creation order: sets of futures (``asyncio.wait``
    returns sets) then iterate in the same order on every replay, not by address."""

    _perdure_hash = 0

    def __hash__(self) -> int:
        return self._perdure_hash


class _WorkflowTask(asyncio.Task):  # type: ignore[type-arg]
    """A task whose hash is its creation order (see :class:`_WorkflowFuture`)."""

    def __init__(self, coro: Any, *, loop: WorkflowEventLoop, name: str | None,
                 context: contextvars.Context | None, perdure_hash: int) -> None:
        self._perdure_hash = perdure_hash  # before asyncio hashes it into its task set
        super().__init__(coro, loop=loop, name=name, context=context)

    def __hash__(self) -> int:
        return self._perdure_hash


class WorkflowEventLoop(asyncio.AbstractEventLoop):  # type: ignore[misc]
    """A deterministic, single-activation-at-a-time event loop."""

    def __init__(self, instance: WorkflowInstance) -> None:
        self.instance = instance
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._running = False
        self.unhandled: list[dict[str, Any]] = []
        self._created = 0
        # distinct between runs (few collisions in asyncio's global task set),
        # equal on every replay of one run
        self._hash_salt = zlib.crc32(instance.run_id.encode())

    # -- scheduling ---------------------------------------------------------
    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        raise RuntimeError("workflow code cannot use threads; use activities for blocking work")

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if not math.isfinite(delay):
            # a durable timer is recorded as JSON, which has no NaN or infinity
            raise InvalidArgumentError(
                f"a workflow timer needs a finite delay, not {delay!r}; to wait without a "
                "limit, wait without a timeout (workflow.wait_condition(fn))")
        if delay <= 0:
            handle = asyncio.TimerHandle(self.time(), callback, args, self, context)
            self._ready.append(handle)
            return handle
        return self.instance.start_timer(delay, callback, args, context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_later(when - self.time(), callback, *args, context=context)

    def time(self) -> float:
        return self.instance.now_timestamp

    def make_ready(self, handle: asyncio.Handle) -> None:
        """Queue a handle (a fired timer) to run in this activation."""
        self._ready.append(handle)

    # -- futures and tasks ----------------------------------------------------
    def _next_hash(self) -> int:
        self._created += 1
        return hash((self._hash_salt, self._created))

    def create_future(self) -> asyncio.Future[Any]:
        future = _WorkflowFuture(loop=self)
        future._perdure_hash = self._next_hash()
        return future

    def create_task(  # type: ignore[override]
        self,
        coro: Any,
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task = _WorkflowTask(coro, loop=self, name=name, context=context,
                             perdure_hash=self._next_hash())
        # a workflow evicted from the cache (or replayed for a query) is dropped with
        # its tasks pending: that is normal, not worth an error log
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        return task

    # -- running --------------------------------------------------------------
    def step(self) -> bool:
        """Run every ready callback, and those they schedule; True if any ran."""
        ran = False
        ready = self._ready
        while ready:
            handle = ready.popleft()
            if not handle._cancelled:
                ran = True
                handle._run()
        return ran

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return False

    def close(self) -> None:
        self._ready.clear()

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.unhandled.append(context)
        self.instance.report_loop_exception(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass

    def run_forever(self) -> None:
        raise RuntimeError("the workflow event loop is driven by the worker")

    def run_until_complete(self, future: Any) -> Any:
        raise RuntimeError("the workflow event loop is driven by the worker")
