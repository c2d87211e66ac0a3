"""The time-skipping environment: ``env.sleep`` steps from due time to due time and
returns only once the state at the new time is reached (Temporal's ``env.sleep``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from perdure import activity, workflow
from perdure.testing import WorkflowEnvironment

TQ = "time-skipping"
WAKES: list[float] = []


@activity.defn
async def wake(now: float) -> None:
    WAKES.append(now)


@activity.defn
async def note(text: str) -> str:
    await asyncio.sleep(0.05)  # real time: the step must wait for the attempt to end
    return f"noted {text}"


@workflow.defn
class MonthlyWaker:
    """Runs an activity, sleeps 30 days, forever."""

    @workflow.run
    async def run(self) -> None:
        while True:
            await workflow.execute_activity(wake, workflow.now().timestamp(),
                                            start_to_close_timeout=10)
            await asyncio.sleep(timedelta(days=30).total_seconds())


@workflow.defn
class NapThenNote:
    """Sleeps two seconds, then runs an activity; its stage is queryable."""

    def __init__(self) -> None:
        self.stage = "sleeping"

    @workflow.run
    async def run(self) -> str:
        await asyncio.sleep(2)
        self.stage = "noting"
        self.stage = await workflow.execute_activity(note, "after the nap",
                                                     start_to_close_timeout=10)
        await asyncio.sleep(3600)
        return self.stage

    @workflow.query
    def current(self) -> str:
        return self.stage


async def test_a_long_sleep_fires_every_timer_it_passes(env: WorkflowEnvironment) -> None:
    WAKES.clear()
    async with env.worker(task_queue=TQ, workflows=[MonthlyWaker], activities=[wake]):
        handle = await env.client.start_workflow(MonthlyWaker.run, id="waker", task_queue=TQ)
        start = (await handle.describe()).start_time.timestamp()
        await env.sleep(timedelta(days=90))
        # days 0, 30, 60 and 90: each wake-up ran its activity before the next timer
        assert [round((t - start) / 86400) for t in WAKES] == [0, 30, 60, 90]
        await handle.terminate()


async def test_sleep_returns_once_the_new_time_is_processed(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[NapThenNote], activities=[note]):
        handle = await env.client.start_workflow(NapThenNote.run, id="nap", task_queue=TQ)
        await env.sleep(3)
        # no polling: the timer fired, the activity ran and its result was recorded
        assert await handle.query(NapThenNote.current) == "noted after the nap"
        assert (await handle.describe()).pending_timers == 1  # the hour-long one


async def test_current_time_moves_by_the_slept_amount(env: WorkflowEnvironment) -> None:
    assert env.supports_time_skipping
    before = await env.get_current_time()
    assert before.tzinfo is UTC
    await env.sleep(timedelta(days=3))
    after = await env.get_current_time()
    assert timedelta(days=3) <= after - before < timedelta(days=3, seconds=30)
    assert abs(after.timestamp() - env.client.store.clock.now()) < 30


async def test_a_local_environment_sleeps_in_real_time(real_env: WorkflowEnvironment) -> None:
    assert not real_env.supports_time_skipping
    before = await real_env.get_current_time()
    assert abs(before - datetime.now(UTC)) < timedelta(seconds=5)
    await real_env.sleep(0.05)
    assert await real_env.get_current_time() - before >= timedelta(seconds=0.05)


async def test_skipping_for_a_result_and_sleeping_take_turns(env: WorkflowEnvironment) -> None:
    """Auto skipping (someone awaits a result) and env.sleep never step at once."""
    WAKES.clear()
    async with env.worker(task_queue=TQ, workflows=[MonthlyWaker, NapThenNote],
                          activities=[wake, note]):
        nap = await env.client.start_workflow(NapThenNote.run, id="nap2", task_queue=TQ)
        waker = await env.client.start_workflow(MonthlyWaker.run, id="waker2", task_queue=TQ)
        start = (await waker.describe()).start_time.timestamp()
        result = asyncio.ensure_future(nap.result(timeout=30))
        await env.sleep(timedelta(days=61))
        assert await result == "noted after the nap"
        days = [round((t - start) / 86400) for t in WAKES]
        assert days[:3] == [0, 30, 60] and len(days) == len(set(days))
        await waker.terminate()


ATTEMPTS: list[int] = []


@activity.defn
async def slow_without_heartbeats() -> str:
    ATTEMPTS.append(activity.info().attempt)
    await asyncio.sleep(1.5)  # real time, no heartbeat: at work, not waiting on anything
    return "done"


@workflow.defn
class SlowStep:
    @workflow.run
    async def run(self) -> str:
        from perdure import RetryPolicy

        return await workflow.execute_activity(
            slow_without_heartbeats, start_to_close_timeout=30,
            retry_policy=RetryPolicy(maximum_attempts=3))


async def test_skipping_never_jumps_over_a_running_attempts_own_deadline(
    env: WorkflowEnvironment,
) -> None:
    """While someone awaits a result, time skips; an activity that takes real time
    (without heartbeating) must not be timed out by a jump to its own deadline."""
    ATTEMPTS.clear()
    async with env.worker(task_queue=TQ, workflows=[SlowStep],
                          activities=[slow_without_heartbeats]):
        handle = await env.client.start_workflow(SlowStep.run, id="slow", task_queue=TQ)
        assert await handle.result(timeout=30) == "done"
    assert ATTEMPTS == [1]


async def test_sleeping_for_no_finite_time_is_refused(env: WorkflowEnvironment) -> None:
    import math

    import pytest

    from perdure import InvalidArgumentError

    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(InvalidArgumentError):
            await env.sleep(bad)
