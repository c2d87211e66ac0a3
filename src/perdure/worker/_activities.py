"""A worker's activity side: claim attempts (or take eager ones), run them with their
timeouts, heartbeats and stream, and report each outcome once.

Mixed into :class:`perdure.worker.Worker`, which provides the attributes and the few
methods declared at the top of :class:`ActivityRunner`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from perdure._clock import Clock
from perdure._converter import PayloadConverter
from perdure._errors import ApplicationError, PayloadError
from perdure._failure import failure_from_exception
from perdure._task_token import encode_task_token
from perdure.activity._context import ActivityContext, ActivityInfo, CompleteAsyncError
from perdure.activity._context import set_current as set_activity_context
from perdure.activity._definition import ActivityDefinition
from perdure.engine import activity_completed_outcome, activity_failed_outcome
from perdure.store import WorkflowStore
from perdure.store._records import ActivityDecision, ActivityTaskClaim, WorkflowTaskClaim
from perdure.worker._options import WorkerOptions
from perdure.workflow._instance import WorkflowInstance

__all__ = ["ActivityRunner"]

_log = logging.getLogger("perdure.worker")
T = TypeVar("T")


@dataclasses.dataclass
class _RunningActivity:
    claim: ActivityTaskClaim
    context: ActivityContext
    task: asyncio.Task[Any] | None = None
    heartbeat_pending: bytes | None = None
    heartbeat_dirty: bool = False
    heartbeat_flush: asyncio.TimerHandle | None = None
    shutdown: bool = False
    invoking: bool = False
    """The activity's own code is running (not yet reporting its outcome)."""
    timed_out: bool = False
    """The local start-to-close guard stopped it: the store's timeout reports it."""
    stream: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)
    """Published events not yet written: (workflow id, run id, JSON)."""
    stream_flush: asyncio.TimerHandle | None = None


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ActivityRunner:
    """The activity side of a worker."""

    # provided by the Worker
    store: WorkflowStore
    identity: str
    options: WorkerOptions
    converter: PayloadConverter
    clock: Clock
    activities: dict[str, ActivityDefinition]
    task_queues: list[str]
    stats: dict[str, Any]
    _stopping: asyncio.Event
    _running_activities: dict[tuple[str, str, int], _RunningActivity]
    last_activity_progress: float = 0.0
    """When (event-loop time) an activity running here last heartbeated: time skipping
    tells an activity at work from one waiting on the outside world by it."""
    _activity_slots: int
    _inflight_workflow_tasks: int
    _executor: concurrent.futures.Executor | None
    _cache: OrderedDict[str, WorkflowInstance]

    def _spawn(self, coro: Any) -> None:
        raise NotImplementedError

    async def _idle_wait(self, kinds: Any, backoff: float) -> float:
        raise NotImplementedError

    async def _complete_and_advance(self, claim: ActivityTaskClaim, result: bytes) -> bool:
        raise NotImplementedError

    async def _process_workflow_task(self, claim: WorkflowTaskClaim) -> None:
        raise NotImplementedError

    async def _activity_task_loop(self) -> None:
        backoff = 0.005
        limit = self.options.max_concurrent_activities
        while not self._stopping.is_set():
            free = limit - self._activity_slots
            if free <= 0:
                await self.store.notifier.wait(["activity_slot"], timeout=0.05)
                continue
            claims = await self.store.claim_activity_tasks(self.identity, self.task_queues, free)
            if not claims:
                backoff = await self._idle_wait(["activity_task"], backoff)
                continue
            backoff = 0.005
            for claim in claims:
                self._activity_slots += 1
                self._spawn(self._activity_attempt(claim))

    async def _activity_attempt(self, claim: ActivityTaskClaim) -> None:
        key = (claim.workflow_id, claim.run_id, claim.seq)
        try:
            await self._run_activity(claim, key)
        finally:
            # a superseded attempt (timed out, still running) must not drop the entry
            # of the attempt that replaced it under the same key
            running = self._running_activities.get(key)
            if running is not None and running.claim is claim:
                del self._running_activities[key]
            self._activity_slots -= 1
            self.store.notifier.notify(["activity_slot"])

    async def _run_activity(self, claim: ActivityTaskClaim, key: tuple[str, str, int]) -> None:
        self.stats["activities"] += 1
        definition = self.activities.get(claim.activity_type)
        info = ActivityInfo(
            workflow_id=claim.workflow_id, run_id=claim.run_id,
            workflow_type=claim.workflow_type, activity_id=str(claim.seq),
            activity_type=claim.activity_type, task_queue=claim.task_queue,
            attempt=claim.attempt,
            idempotency_key=f"{claim.workflow_id}/{claim.run_id}/{claim.seq}",
            scheduled_time=datetime.fromtimestamp(claim.scheduled_at, tz=UTC),
            start_to_close_timeout=claim.start_to_close_timeout,
            heartbeat_timeout=claim.heartbeat_timeout,
            task_token=encode_task_token(claim.workflow_id, claim.run_id, claim.seq,
                                         claim.attempt),
        )
        running = _RunningActivity(claim=claim, context=None)  # type: ignore[arg-type]
        context = ActivityContext(
            info, converter=self.converter, heartbeat_details=claim.heartbeat_details,
            record_heartbeat=functools.partial(self._record_heartbeat, running,
                                               asyncio.get_running_loop()),
            payload_store=self.store,
            publish=functools.partial(self._record_stream, running, asyncio.get_running_loop()),
            runs_in_thread=definition is not None and not definition.is_async,
        )
        running.context = context
        self._running_activities[key] = running
        result: bytes | None = None
        error: BaseException | None = None
        left_open = False
        try:
            if definition is None:
                raise ApplicationError(
                    f"activity type {claim.activity_type!r} is not registered on worker "
                    f"{self.identity} (task queue {claim.task_queue!r}; registered: "
                    f"{', '.join(sorted(self.activities)) or 'none'}); pass it in "
                    "Worker(activities=[...])",
                    type="UnknownActivityTypeError",
                )
            args = self.converter.decode_args(
                claim.input, definition.parameter_hints, what=f"activity {definition.name!r}"
            )
            running.task = asyncio.current_task()
            running.invoking = True
            try:
                value = await self._invoke(definition, args, running)
            finally:
                running.invoking = False
            result = self._encode_result(definition.name, value)
        except CompleteAsyncError:
            left_open = True  # activity.raise_complete_async(): someone else completes it
        except asyncio.CancelledError as exc:
            if running.shutdown:
                await self.store.release_activity(*key, claim.attempt, self.identity)
                return
            if running.timed_out:
                return  # the local start-to-close guard fired; the store's timeout handles it
            error = exc
        except Exception as exc:
            error = exc
        finally:
            if running.heartbeat_flush is not None:
                running.heartbeat_flush.cancel()
        if running.heartbeat_dirty:
            await self._flush_heartbeat(running)
        if running.stream or running.stream_flush is not None:
            await self._flush_stream(running)  # followers see it before the outcome
        if left_open:
            await self._durably(claim, "leaving it open for async completion", lambda: (
                self.store.await_async_completion(*key, claim.attempt, self.identity)))
            return
        if error is None:
            assert result is not None
            decide = activity_completed_outcome(claim.seq, claim.attempt, result)
        else:
            if not isinstance(error, asyncio.CancelledError | PayloadError | ApplicationError):
                _log.warning("activity %s (workflow %s, attempt %d) failed: %r",
                             claim.activity_type, claim.workflow_id, claim.attempt, error)
            decide = activity_failed_outcome(claim.seq, failure_from_exception(error),
                                             self.clock.now())
        if error is None and result is not None:
            try:
                if await self._complete_and_advance(claim, result):
                    return
            except Exception as exc:  # the ordinary path below records the result instead
                _log.warning("activity %s (workflow %s): fused completion failed: %r",
                             claim.activity_type, claim.workflow_id, exc)
        wf_claim = await self._finish_attempt(claim, key, decide)
        if wf_claim is not None:
            self._inflight_workflow_tasks += 1
            try:
                await self._process_workflow_task(wf_claim)
            finally:
                self._inflight_workflow_tasks -= 1

    def _encode_result(self, activity_type: str, value: Any) -> bytes:
        """The attempt's result as a payload. One that cannot be encoded (not JSON, a NaN,
        too large) fails the attempt for good: another attempt would do the (paid) work
        again and most likely return the same."""
        try:
            return self.converter.encode(value, what=f"result of activity {activity_type!r}")
        except PayloadError as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__,
                                   non_retryable=True) from None

    async def _finish_attempt(
        self, claim: ActivityTaskClaim, key: tuple[str, str, int], decide: ActivityDecision,
    ) -> WorkflowTaskClaim | None:
        """Record an attempt's end (see :meth:`_durably`)."""
        recorded = await self._durably(claim, "recording its end", lambda: (
            self.store.finish_activity_attempt(
                *key, claim.attempt, self.identity, decide,
                claim_workflow_task=claim.run_id in self._cache and not self._stopping.is_set(),
                lease=self.options.workflow_task_lease,
            )))
        if recorded is None:
            return None
        accepted, wf_claim = recorded
        if not accepted:  # the attempt was superseded (timed out, reclaimed)
            self.stats["rejected_activity_results"] += 1
        return wf_claim

    async def _durably(self, claim: ActivityTaskClaim, what: str,
                       write: Callable[[], Awaitable[T]]) -> T | None:
        """Commit what became of an attempt. It is only in memory until this commits, so a
        failing store is retried with back-off (for up to a minute) rather than dropped;
        past that (None), the attempt's timeout retries the activity."""
        delay = 0.1
        deadline = time.monotonic() + 60.0
        while True:
            try:
                return await write()
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    _log.error("activity %s (workflow %s, attempt %d): %s failed, giving up "
                               "(its timeout will retry it): %r", claim.activity_type,
                               claim.workflow_id, claim.attempt, what, exc)
                    return None
                _log.warning("activity %s (workflow %s, attempt %d): %s failed, retrying in "
                             "%.1fs: %r", claim.activity_type, claim.workflow_id,
                             claim.attempt, what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _invoke(
        self, definition: ActivityDefinition, args: list[Any], running: _RunningActivity,
    ) -> Any:
        claim, context = running.claim, running.context
        timeout = claim.start_to_close_timeout
        if claim.schedule_to_close_timeout is not None:
            # the attempt must also stop when the activity's whole budget is spent
            remaining = max(
                claim.scheduled_at + claim.schedule_to_close_timeout - self.clock.now(), 0.0
            )
            timeout = remaining if timeout is None else min(timeout, remaining)
        if definition.is_async:
            set_activity_context(context)
            if timeout is None:
                return await definition.fn(*args)
            # the local start-to-close guard: cancel this task (cheaper than wait_for)
            task = asyncio.current_task()
            assert task is not None

            def time_up() -> None:
                running.timed_out = True
                context.cancelled.set()
                task.cancel()

            guard = asyncio.get_running_loop().call_later(timeout, time_up)
            try:
                return await definition.fn(*args)
            finally:
                guard.cancel()
        ctx = contextvars.copy_context()
        ctx.run(set_activity_context, context)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(ctx.run, definition.fn,
                                                                        *args))
        try:
            # asyncio.wait neither cancels the thread's future nor mistakes the activity's
            # own TimeoutError for the guard's
            await asyncio.wait((future,), timeout=timeout)
        except asyncio.CancelledError:
            context.cancelled.set()  # the thread is told; its next heartbeat raises
            await self._thread_ended(future, running)
            if running.shutdown and future.done() and not future.cancelled() \
                    and future.exception() is None:
                # the worker is leaving, but the work got done within its grace: record
                # it rather than hand the attempt back to be done (and paid for) again
                return future.result()
            raise
        if future.done():
            return future.result()
        running.timed_out = True
        context.cancelled.set()
        await self._thread_ended(future, running)
        raise asyncio.CancelledError()

    async def _thread_ended(self, future: asyncio.Future[Any], running: _RunningActivity,
                            ) -> None:
        """Wait until a stopped thread activity has returned, so that its slot (and its
        executor thread) is not handed to another attempt under it; bounded by the
        graceful shutdown timeout, whose passing is logged."""
        # its outcome is not reported (the cancellation is): retrieve it whenever it
        # comes, so that asyncio does not log it as lost
        future.add_done_callback(_retrieve)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.graceful_shutdown_timeout
        while not future.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                claim = running.claim
                _log.warning(
                    "activity %s (workflow %s, attempt %d) was told to stop but its thread "
                    "still runs after %.1fs (graceful_shutdown_timeout); a plain-def activity "
                    "stops only when it returns: call activity.heartbeat() (it raises once "
                    "cancelled) or check activity.is_cancelled() in its loops. The process "
                    "cannot exit before the thread returns",
                    claim.activity_type, claim.workflow_id, claim.attempt,
                    self.options.graceful_shutdown_timeout,
                )
                return
            try:
                await asyncio.wait((future,), timeout=remaining)
            except asyncio.CancelledError:
                continue  # cancelled again (the worker leaving): the thread still runs

    def _record_heartbeat(
        self, running: _RunningActivity, loop: asyncio.AbstractEventLoop, details: bytes | None
    ) -> None:
        def record() -> None:
            running.heartbeat_pending = details
            running.heartbeat_dirty = True
            self.last_activity_progress = loop.time()
            if running.heartbeat_flush is None:
                interval = self.options.max_heartbeat_interval
                if running.claim.heartbeat_timeout:
                    interval = min(interval, running.claim.heartbeat_timeout * 0.5)
                running.heartbeat_flush = loop.call_later(
                    interval, lambda: self._spawn(self._flush_heartbeat(running))
                )

        try:
            if asyncio._get_running_loop() is loop:
                record()
            else:
                loop.call_soon_threadsafe(record)
        except RuntimeError:
            pass

    def _record_stream(self, running: _RunningActivity, loop: asyncio.AbstractEventLoop,
                       workflow_id: str, data: bytes) -> None:
        def record() -> None:
            running.stream.append((workflow_id, running.claim.run_id, data))
            if running.stream_flush is None:
                running.stream_flush = loop.call_later(
                    0.05, lambda: self._spawn(self._flush_stream(running)))

        try:
            if asyncio._get_running_loop() is loop:
                record()
            else:
                loop.call_soon_threadsafe(record)
        except RuntimeError:
            pass

    async def _flush_stream(self, running: _RunningActivity) -> None:
        if running.stream_flush is not None:
            running.stream_flush.cancel()
            running.stream_flush = None
        events, running.stream = running.stream, []
        if events:
            try:
                await self.store.append_stream(events)
            except Exception:  # progress for followers: never worth failing the activity
                _log.warning("could not publish %d stream events of %s", len(events),
                             running.claim.workflow_id, exc_info=True)

    async def _flush_heartbeat(self, running: _RunningActivity) -> None:
        running.heartbeat_flush = None
        if not running.heartbeat_dirty:
            return
        running.heartbeat_dirty = False
        claim = running.claim
        stop = await self.store.heartbeat_activity(
            claim.workflow_id, claim.run_id, claim.seq, claim.attempt, self.identity,
            running.heartbeat_pending,
        )
        if stop:
            self._cancel_running(running)

    def _cancel_running(self, running: _RunningActivity) -> None:
        if running.context.cancelled.is_set():
            return
        running.context.cancelled.set()
        if running.task is not None and not running.task.done():
            running.task.cancel()
