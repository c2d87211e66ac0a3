"""Cancelling plain-``def`` activities, which run in the worker's thread pool: the thread
is told (``heartbeat()`` raises, ``is_cancelled()``, ``wait_for_cancelled_sync()``), and
the worker waits for it to return before it frees the slot, reports, or shuts down."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from perdure import (
    ActivityError,
    CancelledFailure,
    RetryPolicy,
    WorkerOptions,
    activity,
    workflow,
)
from perdure.history import ActivityCompleted
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

Q = "thread-cancellation"
WORKFLOWS_ONLY = "thread-cancellation-workflows"


class _Seen:
    """What the activities' threads did, reset before each test."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.raised: list[str] = []
        self.log: list[str] = []
        self.lock = threading.Lock()

    def note(self, entry: str) -> None:
        with self.lock:
            self.log.append(entry)


SEEN = _Seen()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    global SEEN
    SEEN = _Seen()
    yield


@activity.defn
def beats_until_cancelled(limit: float) -> str:
    """Heartbeats in a loop; returns by itself only after ``limit`` seconds."""
    attempt = activity.info().attempt
    SEEN.note(f"start {attempt}")
    SEEN.started.set()
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            activity.heartbeat("beat")
            time.sleep(0.01)
        return "ran out"
    except CancelledFailure as exc:
        SEEN.raised.append(str(exc))
        raise
    finally:
        SEEN.note(f"end {attempt}")
        SEEN.ended.set()


@activity.defn
def ignores_cancellation(seconds: float) -> str:
    """Never heartbeats nor looks: only returns after ``seconds``."""
    SEEN.started.set()
    time.sleep(seconds)
    SEEN.ended.set()
    return "done"


@activity.defn
def waits_for_cancellation() -> bool:
    SEEN.started.set()
    told = activity.wait_for_cancelled_sync(timeout=10)
    SEEN.note(f"told={told} is_cancelled={activity.is_cancelled()}")
    SEEN.ended.set()
    return told


@activity.defn
async def async_with_helper() -> str:
    async def helper() -> None:
        await activity.wait_for_cancelled()
        SEEN.note("helper saw the cancellation")
        SEEN.ended.set()

    task = asyncio.create_task(helper())
    SEEN.started.set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await asyncio.wait_for(task, 5)
        raise
    return "not cancelled"


@activity.defn
def raises_its_own_timeout() -> str:
    raise TimeoutError("the upstream API did not answer")


@workflow.defn
class CancelsIt:
    """Starts an activity, cancels it when signalled, reports what it saw."""

    def __init__(self) -> None:
        self.cancel_now = False

    @workflow.run
    async def run(self, name: str, args: list[Any]) -> str:
        handle = workflow.start_activity(
            name, *args, task_queue=Q, start_to_close_timeout=60,
            heartbeat_timeout=30, retry_policy=RetryPolicy(maximum_attempts=1),
        )
        await workflow.wait_condition(lambda: self.cancel_now)
        handle.cancel()
        try:
            return f"finished: {await handle}"
        except asyncio.CancelledError:
            return "cancelled"

    @workflow.signal
    def cancel_it(self) -> None:
        self.cancel_now = True


@workflow.defn
class RunsIt:
    @workflow.run
    async def run(self, name: str, args: list[Any], start_to_close: float,
                  attempts: int) -> str:
        try:
            return str(await workflow.execute_activity(
                name, *args, start_to_close_timeout=start_to_close,
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10),
                                         maximum_attempts=attempts),
            ))
        except ActivityError as err:
            cause = err.__cause__
            return f"{type(cause).__name__}:{getattr(cause, 'type', '')}:{cause}"


ACTIVITIES = [beats_until_cancelled, ignores_cancellation, waits_for_cancellation,
              async_with_helper, raises_its_own_timeout]


async def _started() -> bool:
    return SEEN.started.is_set()


@pytest.mark.parametrize("topology", ["one-worker", "activity-worker-apart"])
async def test_a_cancelled_thread_activity_stops_at_its_heartbeat_and_the_worker_waits(
    real_env: WorkflowEnvironment, topology: str,
) -> None:
    """Regression: heartbeat() never raised in a thread activity, so a cancelled one ran on
    after its workflow moved on, and the worker shut down leaving its thread behind."""
    options = WorkerOptions(graceful_shutdown_timeout=30)
    apart = topology == "activity-worker-apart"
    # apart: cancellation reaches the activity's worker through the store (its heartbeat
    # or liveness round), not from the activation that requested it
    activity_worker = real_env.worker(task_queue=Q, activities=ACTIVITIES, options=options,
                                      workflows=[] if apart else [CancelsIt])
    workflows_worker = real_env.worker(task_queue=WORKFLOWS_ONLY, workflows=[CancelsIt],
                                       options=options)
    async with workflows_worker, activity_worker:
        handle = await real_env.client.start_workflow(
            CancelsIt.run, "beats_until_cancelled", [10.0], id=f"beats-{topology}",
            task_queue=WORKFLOWS_ONLY if apart else Q)
        await wait_until(_started, what="the activity's thread started")
        await handle.signal(CancelsIt.cancel_it)
        assert await handle.result(timeout=10) == "cancelled"
        # far sooner than the grace period: the heartbeat stopped the thread
        await asyncio.wait_for(activity_worker.shutdown(), 5)
        # the slot was freed (and the worker could leave) only once the thread had ended
        assert SEEN.ended.is_set()
        history = await handle.fetch_history()
    assert len(SEEN.raised) == 1
    assert "beats_until_cancelled" in SEEN.raised[0] and "cancelled" in SEEN.raised[0]
    assert "ActivityCancelRequested" in [type(e).__name__ for e in history.events]
    assert not [e for e in history.events if isinstance(e, ActivityCompleted)]


async def test_a_timed_out_thread_activity_holds_its_slot_until_its_thread_returns(
    env: WorkflowEnvironment,
) -> None:
    """The local start-to-close guard tells the thread (its heartbeat raises) and keeps
    the slot until it returned: with one slot, the retry starts after the first ended."""
    async with env.worker(task_queue=Q, workflows=[RunsIt], activities=ACTIVITIES,
                          options=WorkerOptions(max_concurrent_activities=1)):
        handle = await env.client.start_workflow(
            RunsIt.run, "beats_until_cancelled", [0.6], 0.2, 2, id="slot", task_queue=Q)
        result = await handle.result(timeout=20)
    assert result.startswith("TimeoutFailure"), result
    assert SEEN.log[:3] == ["start 1", "end 1", "start 2"], SEEN.log
    assert len(SEEN.raised) == 2  # both attempts were told at a heartbeat


async def test_a_thread_activity_that_ignores_cancellation_is_named_and_not_waited_for_ever(
    real_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture,
) -> None:
    options = WorkerOptions(graceful_shutdown_timeout=0.2)
    caplog.set_level(logging.WARNING, logger="perdure.worker")
    worker = real_env.worker(task_queue=Q, workflows=[CancelsIt], activities=ACTIVITIES,
                             options=options)
    async with worker:
        handle = await real_env.client.start_workflow(
            CancelsIt.run, "ignores_cancellation", [1.5], id="stubborn", task_queue=Q)
        await wait_until(_started, what="the activity's thread started")
        await handle.signal(CancelsIt.cancel_it)
        assert await handle.result(timeout=10) == "cancelled"
        await wait_until(lambda: _logged(caplog, "still runs"), what="the warning")
    assert not SEEN.ended.is_set()  # the worker left before the thread did
    message = next(r.getMessage() for r in caplog.records if "still runs" in r.getMessage())
    assert "activity ignores_cancellation (workflow stubborn, attempt 1)" in message
    assert "graceful_shutdown_timeout" in message
    await asyncio.to_thread(SEEN.ended.wait, 5)


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def test_wait_for_cancelled_sync_returns_when_cancelled(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[CancelsIt], activities=ACTIVITIES):
        handle = await real_env.client.start_workflow(
            CancelsIt.run, "waits_for_cancellation", [], id="waits", task_queue=Q)
        await wait_until(_started, what="the activity's thread started")
        await handle.signal(CancelsIt.cancel_it)
        assert await handle.result(timeout=10) == "cancelled"
        await asyncio.to_thread(SEEN.ended.wait, 5)
    assert SEEN.log == ["told=True is_cancelled=True"]


async def test_wait_for_cancelled_wakes_an_async_activitys_helper(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[CancelsIt], activities=ACTIVITIES):
        handle = await real_env.client.start_workflow(
            CancelsIt.run, "async_with_helper", [], id="helper", task_queue=Q)
        await wait_until(_started, what="the activity started")
        await handle.signal(CancelsIt.cancel_it)
        assert await handle.result(timeout=10) == "cancelled"
        await asyncio.to_thread(SEEN.ended.wait, 5)
    assert SEEN.log == ["helper saw the cancellation"]


async def test_a_thread_activitys_own_timeout_error_is_its_failure(
    env: WorkflowEnvironment,
) -> None:
    """A TimeoutError raised by the activity is not the worker's start-to-close guard."""
    async with env.worker(task_queue=Q, workflows=[RunsIt], activities=ACTIVITIES):
        result = await env.client.execute_workflow(
            RunsIt.run, "raises_its_own_timeout", [], 30.0, 1, id="own-timeout",
            task_queue=Q)
    assert result == "ApplicationError:TimeoutError:the upstream API did not answer"



RUNS: list[str] = []


@activity.defn
def slow_sync_step() -> str:
    RUNS.append("start")
    time.sleep(1.6)  # longer than the grace; no heartbeat: it cannot be told to stop
    RUNS.append("returned")
    return "result"


@workflow.defn
class OneSlowStep:
    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(
            slow_sync_step, start_to_close_timeout=timedelta(seconds=60))


async def test_a_thread_that_returns_while_its_worker_leaves_is_recorded_not_rerun(
    real_env: WorkflowEnvironment,
) -> None:
    """The worker shuts down mid-activity; the thread returns within the second grace
    period: its result is recorded, not handed back to be run (and paid for) again."""
    RUNS.clear()
    options = WorkerOptions(graceful_shutdown_timeout=1.0)
    worker = real_env.worker(task_queue=Q, workflows=[OneSlowStep],
                             activities=[slow_sync_step], options=options)
    await worker.start()
    handle = await real_env.client.start_workflow(OneSlowStep.run, id="slow-sync",
                                                  task_queue=Q)
    await wait_until(lambda: _slow_step_started(), what="the thread to start")
    await worker.shutdown()
    async with real_env.worker(task_queue=Q, workflows=[OneSlowStep],
                               activities=[slow_sync_step]):
        assert await handle.result(timeout=30) == "result"
    assert RUNS == ["start", "returned"]


async def _slow_step_started() -> bool:
    return bool(RUNS)
