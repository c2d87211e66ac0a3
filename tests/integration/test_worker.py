"""Worker behaviour: sticky cache, LRU bound, concurrency limits, graceful shutdown."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from perdure import RetryPolicy, WorkerOptions, WorkflowAlreadyStartedError, activity, workflow
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

RUNNING: list[int] = []
PEAK: list[int] = [0]
ATTEMPTS: list[int] = []


@activity.defn
async def tracked(n: int) -> int:
    RUNNING.append(n)
    PEAK[0] = max(PEAK[0], len(RUNNING))
    try:
        await asyncio.sleep(0.05)
    finally:
        RUNNING.remove(n)
    return n


@activity.defn
async def slow(seconds: float) -> int:
    ATTEMPTS.append(activity.info().attempt)
    await asyncio.sleep(seconds)
    return activity.info().attempt


@workflow.defn
class Steps:
    @workflow.run
    async def run(self, count: int) -> int:
        total = 0
        for i in range(count):
            total += await workflow.execute_activity(tracked, i, start_to_close_timeout=10)
        return total


@workflow.defn
class Parallel:
    @workflow.run
    async def run(self, count: int) -> list[int]:
        return list(await asyncio.gather(*(
            workflow.execute_activity(tracked, i, start_to_close_timeout=10) for i in range(count)
        )))


@workflow.defn
class Waits:
    def __init__(self) -> None:
        self.go = False

    @workflow.run
    async def run(self, n: int) -> int:
        await workflow.wait_condition(lambda: self.go)
        return n

    @workflow.signal
    def release(self) -> None:
        self.go = True


@workflow.defn
class SlowOne:
    @workflow.run
    async def run(self, seconds: float) -> int:
        return await workflow.execute_activity(
            slow, seconds, start_to_close_timeout=30,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
        )


async def test_sticky_cache_means_no_replay_per_step(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue="w", workflows=[Steps], activities=[tracked]) as worker:
        handle = await env.client.start_workflow(Steps.run, 10, id="steps", task_queue="w")
        assert await handle.result(timeout=30) == sum(range(10))
        # the instance built for the first task stays cached: never replayed
        assert worker.stats["replays"] == 0
        assert worker.stats["workflow_tasks"] >= 11


async def test_concurrent_activity_limit_holds(env: WorkflowEnvironment) -> None:
    PEAK[0] = 0
    options = WorkerOptions(max_concurrent_activities=2)
    async with env.worker(task_queue="w", workflows=[Parallel], activities=[tracked],
                          options=options):
        handle = await env.client.start_workflow(Parallel.run, 8, id="par", task_queue="w")
        assert await handle.result(timeout=30) == list(range(8))
    assert PEAK[0] == 2


async def test_cache_is_bounded_and_evicted_runs_still_finish(env: WorkflowEnvironment) -> None:
    options = WorkerOptions(max_cached_workflows=2)
    async with env.worker(task_queue="w", workflows=[Waits], options=options) as worker:
        handles = [
            await env.client.start_workflow(Waits.run, i, id=f"wait-{i}", task_queue="w")
            for i in range(6)
        ]

        async def all_waiting() -> bool:
            return all([(await h.describe()).history_length >= 2 for h in handles])

        await wait_until(all_waiting, what="every workflow waiting")
        assert len(worker._cache) <= 2
        for h in handles:
            await h.signal(Waits.release)
        assert [await h.result(timeout=30) for h in handles] == list(range(6))
        assert worker.stats["replays"] >= 4  # evicted runs were rebuilt from history


async def test_graceful_shutdown_lets_running_activities_finish(
    real_env: WorkflowEnvironment,
) -> None:
    ATTEMPTS.clear()
    worker = real_env.worker(task_queue="g", workflows=[SlowOne], activities=[slow],
                             options=WorkerOptions(graceful_shutdown_timeout=5))
    await worker.start()
    handle = await real_env.client.start_workflow(SlowOne.run, 0.3, id="grace-1",
                                                  task_queue="g")
    await wait_until(lambda: _has(ATTEMPTS), what="activity started")
    await worker.shutdown()  # waits for the attempt, which commits its result
    description = await handle.describe()
    assert description.pending_activities == []
    async with real_env.worker(task_queue="g", workflows=[SlowOne], activities=[slow]):
        assert await handle.result(timeout=10) == 1
    assert ATTEMPTS == [1]


async def test_shutdown_hands_back_unfinished_attempts(real_env: WorkflowEnvironment) -> None:
    ATTEMPTS.clear()
    worker = real_env.worker(task_queue="h", workflows=[SlowOne], activities=[slow],
                             options=WorkerOptions(graceful_shutdown_timeout=0.1))
    await worker.start()
    handle = await real_env.client.start_workflow(SlowOne.run, 0.5, id="grace-2",
                                                  task_queue="h")
    await wait_until(lambda: _has(ATTEMPTS), what="activity started")
    await worker.shutdown()  # the attempt is cancelled and handed back
    async with real_env.worker(task_queue="h", workflows=[SlowOne], activities=[slow]):
        # the handed-back attempt did not use up an attempt: the rerun is attempt 1 again
        assert await handle.result(timeout=10) == 1
    assert ATTEMPTS == [1, 1]


async def _has(items: list[int]) -> bool:
    return bool(items)


async def test_in_process_start_hands_the_first_task_to_the_worker(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue="e", workflows=[Steps], activities=[tracked]) as worker:
        handle = await env.client.start_workflow(Steps.run, 2, id="eager", task_queue="e")
        assert await handle.result(timeout=10) == 1
        assert worker.stats["eager_starts"] == 1
        # a type this worker does not run is left for the pollers (and whoever serves it)
        other = await env.client.start_workflow(Waits.run, 1, id="not-eager", task_queue="e")
        assert worker.stats["eager_starts"] == 1
        await other.terminate("not served here")


async def test_eager_start_commits_the_first_activation_with_the_start(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue="e2", workflows=[Steps], activities=[tracked]) as worker:
        handle = await env.client.start_workflow(Steps.run, 1, id="fused-start",
                                                 task_queue="e2")
        # one transaction wrote the start and the first activation: right after
        # start_workflow returns, the history already holds the first activity's schedule
        description = await handle.describe()
        assert description.history_length >= 3
        types = [type(e).__name__ for e in (await handle.fetch_history()).events[:3]]
        assert types == ["WorkflowStarted", "WorkflowTaskCompleted", "ActivityScheduled"]
        assert await handle.result(timeout=10) == 0
        assert worker.stats["eager_starts"] == 1
        assert worker.stats["replays"] == 0
        # a refused start (the id runs) leaves nothing behind: no activity, no slot
        blocker = await env.client.start_workflow(Waits.run, 1, id="busy", task_queue="other")
        slots = worker._activity_slots
        with pytest.raises(WorkflowAlreadyStartedError):
            await env.client.start_workflow(Steps.run, 1, id="busy", task_queue="e2")
        assert worker._activity_slots == slots
        assert worker.stats["eager_starts"] == 1
        await blocker.terminate("done")


async def test_a_caller_cancelled_during_an_eager_start_strands_nothing(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue="e3", workflows=[Steps], activities=[tracked]):
        starts = [
            asyncio.ensure_future(real_env.client.start_workflow(Steps.run, 2, id=f"cancelled-{i}",
                                                            task_queue="e3"))
            for i in range(20)
        ]
        await asyncio.sleep(0)
        for start in starts:
            start.cancel()
        began = time.monotonic()
        await asyncio.gather(*starts, return_exceptions=True)
        # the starts had reached the store: they commit, and their runs go on at once on
        # the eager worker (not after the 5 s lease that a stranded first task waits out)
        async def all_started() -> list[Any]:
            listed = await real_env.client.list_workflows()
            return listed if len(listed) == 20 else []

        listed = await wait_until(all_started, what="the 20 starts to commit")
        for description in listed:
            handle = real_env.client.get_workflow_handle(description.workflow_id)
            assert await handle.result(timeout=10) == 1
        assert time.monotonic() - began < 3.0


SIGNALLER: list[object] = []


@activity.defn
async def poke(workflow_id: str) -> int:
    client = SIGNALLER[0]
    await client.get_workflow_handle(workflow_id).signal("add", "x")  # type: ignore[attr-defined]
    return 1


@workflow.defn
class Collects:
    def __init__(self) -> None:
        self.items: list[str] = []

    @workflow.run
    async def run(self) -> list[Any]:
        got = await workflow.execute_activity(poke, workflow.info().workflow_id,
                                              start_to_close_timeout=10)
        return [got, self.items]

    @workflow.signal
    def add(self, item: str) -> None:
        self.items.append(item)


async def test_a_signal_acknowledged_before_the_run_closes_is_never_dropped(
    env: WorkflowEnvironment,
) -> None:
    """Regression: the activity's result would close the run in the same (fused) commit that
    deleted the inbox holding an acknowledged signal."""
    SIGNALLER[:] = [env.client]
    async with env.worker(task_queue="s", workflows=[Collects], activities=[poke]):
        handle = await env.client.start_workflow(Collects.run, id="collect", task_queue="s")
        assert await handle.result(timeout=10) == [1, ["x"]]
    types = [type(e).__name__ for e in (await handle.fetch_history()).events]
    assert "SignalReceived" in types


async def test_shutdown_drain_keeps_the_worker_alive(real_env: WorkflowEnvironment) -> None:
    """Regression: the liveness heartbeat stopped first, so another worker declared the
    draining one dead and ran its activity a second time."""
    ATTEMPTS.clear()
    a = real_env.worker(task_queue="d", workflows=[SlowOne], activities=[slow],
                        options=WorkerOptions(dead_worker_timeout=0.5, liveness_interval=0.1,
                                              graceful_shutdown_timeout=5))
    await a.start()
    handle = await real_env.client.start_workflow(SlowOne.run, 1.5, id="drain", task_queue="d")
    await wait_until(lambda: _has(ATTEMPTS), what="activity started")
    async with real_env.worker(task_queue="d", workflows=[SlowOne], activities=[slow],
                               options=WorkerOptions(dead_worker_timeout=0.5,
                                                     liveness_interval=0.1)):
        await a.shutdown()  # drains for ~1.5 s, three times the dead-worker timeout
        assert await handle.result(timeout=10) == 1
    assert ATTEMPTS == [1]


async def test_a_failing_store_does_not_lose_an_activity_result(
    real_env: WorkflowEnvironment,
) -> None:
    """The result of a finished activity lives only in the worker's memory until it is
    recorded: a store call that fails is retried, not dropped, and the activity is not
    run again."""
    store = real_env.client.store
    failures = {"fused": 0, "finish": 0}
    fused, finish = store.complete_activity_and_workflow_task, store.finish_activity_attempt

    async def failing_fused(*args: Any, **kwargs: Any) -> Any:
        failures["fused"] += 1
        raise OSError("the database went away")

    async def flaky_finish(*args: Any, **kwargs: Any) -> Any:
        if failures["finish"] < 2:
            failures["finish"] += 1
            raise OSError("the database went away")
        return await finish(*args, **kwargs)

    store.complete_activity_and_workflow_task = failing_fused  # type: ignore[method-assign]
    store.finish_activity_attempt = flaky_finish  # type: ignore[method-assign]
    ATTEMPTS.clear()
    try:
        async with real_env.worker(task_queue="flaky", workflows=[SlowOne], activities=[slow]):
            handle = await real_env.client.start_workflow(SlowOne.run, 0.01, id="flaky-store",
                                                          task_queue="flaky")
            assert await handle.result(timeout=20) == 1
    finally:
        store.complete_activity_and_workflow_task = fused  # type: ignore[method-assign]
        store.finish_activity_attempt = finish  # type: ignore[method-assign]
    assert failures == {"fused": 1, "finish": 2}
    assert ATTEMPTS == [1]  # recorded on the third try; never run again


async def test_an_idle_worker_does_not_spin_on_work_it_cannot_take(
    real_env: WorkflowEnvironment,
) -> None:
    # a ready task on a queue nobody serves is "due" for ever; the due-work sweep must
    # not busy-loop on it (it did: thousands of transactions a second)
    await real_env.client.start_workflow(Steps.run, 1, id="unserved", task_queue="nobody")
    store = real_env.client.store
    async with real_env.worker(task_queue="idle", workflows=[Steps], activities=[tracked]):
        await asyncio.sleep(0.3)
        before = store.operations  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)
        done = store.operations - before  # type: ignore[attr-defined]
    # polls back off to 4 a second per loop, liveness beats twice, the sweep twice
    assert done < 60, f"{done} store operations in one idle second"
