"""Durable timers on the real SQLite store, mostly under time skipping."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from perdure import WorkflowFailureError, WorkflowStatus, activity, workflow
from perdure.history import TimerFired, TimerStarted, event_type_name
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "timers"


@workflow.defn
class Nap:
    """Sleeps with ``asyncio.sleep`` or ``workflow.sleep``; returns virtual seconds elapsed."""

    @workflow.run
    async def run(self, seconds: float, use_asyncio: bool) -> float:
        before = workflow.now()
        if use_asyncio:
            await asyncio.sleep(seconds)
        else:
            await workflow.sleep(timedelta(seconds=seconds))
        return (workflow.now() - before).total_seconds()


@workflow.defn
class WaitForApproval:
    def __init__(self) -> None:
        self.approved_by: str | None = None

    @workflow.run
    async def run(self, days: int) -> str:
        try:
            await workflow.wait_condition(
                lambda: self.approved_by is not None, timeout=timedelta(days=days)
            )
        except TimeoutError:
            waited = workflow.now() - workflow.info().start_time
            return f"timed out after {waited.days} days"
        return f"approved by {self.approved_by}"

    @workflow.signal
    def approve(self, who: str) -> None:
        self.approved_by = who


@workflow.defn
class Race:
    """Three concurrent timers; records the order in which they wake."""

    @workflow.run
    async def run(self) -> list[str]:
        woke: list[str] = []

        async def nap(name: str, hours: int) -> None:
            await workflow.sleep(timedelta(hours=hours))
            woke.append(name)

        await asyncio.gather(nap("three", 3), nap("one", 1), nap("two", 2))
        return woke


@workflow.defn
class Timeboxed:
    """``asyncio.wait_for`` around a long sleep: the shorter timer wins and cancels the other."""

    @workflow.run
    async def run(self) -> str:
        try:
            await asyncio.wait_for(workflow.sleep(timedelta(days=30)), timeout=3600)
        except TimeoutError:
            return "gave up after an hour"
        return "slept 30 days"


@workflow.defn
class Steps:
    """Several sequential sleeps; ``workflow.now()`` is sampled after each."""

    @workflow.run
    async def run(self) -> list[float]:
        start = workflow.now()
        marks = []
        for hours in (1, 24, 24 * 7):
            await workflow.sleep(timedelta(hours=hours))
            marks.append((workflow.now() - start).total_seconds() / 3600)
        return marks


@activity.defn
async def stamp() -> str:
    return "stamped"


@workflow.defn
class SleepThenActivity:
    @workflow.run
    async def run(self) -> str:
        await workflow.sleep(timedelta(days=2))
        return await workflow.execute_activity(stamp, start_to_close_timeout=timedelta(seconds=10))


@pytest.mark.parametrize("use_asyncio", [True, False], ids=["asyncio.sleep", "workflow.sleep"])
@pytest.mark.parametrize("seconds", [3 * 3600, 5 * 86400])
async def test_long_sleep_is_skipped(
    env: WorkflowEnvironment, seconds: int, use_asyncio: bool
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Nap]):
        handle = await env.client.start_workflow(
            Nap.run, seconds, use_asyncio, id=f"nap-{seconds}-{use_asyncio}", task_queue=TQ
        )
        # the real-time bound only guards against hanging; the clock is virtual
        elapsed = await handle.result(timeout=10)
    assert seconds <= elapsed < seconds + 60
    events = (await handle.fetch_history()).events
    started = [e for e in events if isinstance(e, TimerStarted)]
    assert len(started) == 1
    assert started[0].duration == seconds
    assert [e.seq for e in events if isinstance(e, TimerFired)] == [started[0].seq]
    description = await handle.describe()
    assert description.close_time is not None
    assert description.close_time - description.start_time >= timedelta(seconds=seconds)


async def test_wait_condition_times_out_after_seven_days(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[WaitForApproval]):
        handle = await env.client.start_workflow(WaitForApproval.run, 7, id="approval-timeout",
                                                 task_queue=TQ)
        assert await handle.result(timeout=10) == "timed out after 7 days"
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert types.count("TimerStarted") == 1
    assert types.count("TimerFired") == 1


async def test_wait_condition_signal_beats_timeout(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[WaitForApproval]):
        handle = await env.client.start_workflow(WaitForApproval.run, 7, id="approval-ok",
                                                 task_queue=TQ)
        await wait_until(lambda: _pending_timers(handle, 1), what="timeout timer started")
        await handle.signal(WaitForApproval.approve, "alice")
        assert await handle.result(timeout=10) == "approved by alice"
    description = await handle.describe()
    assert description.pending_timers == 0
    assert description.close_time is not None
    assert description.close_time - description.start_time < timedelta(days=1)
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert "TimerFired" not in types
    assert "TimerCanceled" in types


async def test_concurrent_timers_fire_in_due_order(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Race]):
        handle = await env.client.start_workflow(Race.run, id="race", task_queue=TQ)
        assert await handle.result(timeout=10) == ["one", "two", "three"]


async def test_wait_for_cancels_the_longer_timer(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Timeboxed]):
        handle = await env.client.start_workflow(Timeboxed.run, id="timebox", task_queue=TQ)
        assert await handle.result(timeout=10) == "gave up after an hour"
    description = await handle.describe()
    assert description.pending_timers == 0
    assert description.close_time is not None
    assert description.close_time - description.start_time < timedelta(days=1)


async def test_now_advances_by_slept_duration(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Steps]):
        handle = await env.client.start_workflow(Steps.run, id="steps", task_queue=TQ)
        marks = await handle.result(timeout=10)
    expected = [1, 25, 25 + 24 * 7]
    assert len(marks) == 3
    for got, want in zip(marks, expected, strict=True):
        assert want <= got < want + 0.1, marks


async def test_timer_survives_worker_restart(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[SleepThenActivity], activities=[stamp]):
        handle = await env.client.start_workflow(SleepThenActivity.run, id="restart",
                                                 task_queue=TQ)
        await wait_until(lambda: _pending_timers(handle, 1), what="timer started")
    # no process holds the waiting workflow: it is a row with a due time
    description = await handle.describe()
    assert description.status == WorkflowStatus.RUNNING
    assert description.pending_timers == 1
    async with env.worker(task_queue=TQ, workflows=[SleepThenActivity], activities=[stamp]):
        assert await handle.result(timeout=10) == "stamped"


async def test_many_sleeping_workflows(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Nap]):
        handles = [
            await env.client.start_workflow(Nap.run, 3600 * (i + 1), False, id=f"many-{i}",
                                            task_queue=TQ)
            for i in range(10)
        ]
        results = await asyncio.gather(*(h.result(timeout=20) for h in handles))
    for i, elapsed in enumerate(results):
        assert 3600 * (i + 1) <= elapsed < 3600 * (i + 1) + 60


async def test_cancel_during_long_sleep(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Nap]):
        handle = await env.client.start_workflow(Nap.run, 30 * 86400, False, id="nap-cancel",
                                                 task_queue=TQ)
        await wait_until(lambda: _pending_timers(handle, 1), what="timer started")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result(timeout=10)
    description = await handle.describe()
    assert description.status == WorkflowStatus.CANCELED
    assert description.pending_timers == 0


async def test_short_timer_on_real_clock(real_env: WorkflowEnvironment) -> None:
    async with real_env.worker(task_queue=TQ, workflows=[Nap]):
        handle = await real_env.client.start_workflow(Nap.run, 0.3, True, id="real-nap",
                                                      task_queue=TQ)
        elapsed = await handle.result(timeout=10)
    assert 0.3 <= elapsed < 5


async def _pending_timers(handle: object, count: int) -> bool:
    return (await handle.describe()).pending_timers == count  # type: ignore[attr-defined]
