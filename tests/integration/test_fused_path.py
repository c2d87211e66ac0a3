"""A cached run advances in the same commit that records its activity's result."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from perdure import activity, workflow
from perdure.history import event_type_name
from perdure.testing import WorkflowEnvironment


@activity.defn
async def bump(n: int) -> int:
    await asyncio.sleep(0.001)
    return n + 1


@workflow.defn
class Chain:
    def __init__(self) -> None:
        self.notes: list[str] = []

    @workflow.run
    async def run(self, steps: int) -> tuple[int, list[str]]:
        value = 0
        for _ in range(steps):
            value = await workflow.execute_activity(bump, value, start_to_close_timeout=10)
        await workflow.wait_condition(lambda: len(self.notes) >= 3,
                                      timeout=timedelta(hours=1))
        return value, self.notes

    @workflow.signal
    def note(self, text: str) -> None:
        self.notes.append(text)


async def test_sequential_activities_use_the_fused_commit(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue="fused", workflows=[Chain], activities=[bump]) as worker:
        handle = await env.client.start_workflow(Chain.run, 8, id="chain", task_queue="fused")
        for text in ("a", "b", "c"):
            await handle.signal(Chain.note, text)  # races with the activity completions
        value, notes = await handle.result(timeout=30)
        assert value == 8
        assert notes == ["a", "b", "c"]
        assert worker.stats["fused_completions"] >= 1
    history = await handle.fetch_history()
    types = [event_type_name(e) for e in history.events]
    assert types.count("ActivityCompleted") == 8
    assert types.count("SignalReceived") == 3
    # every activation is inbound events, one WorkflowTaskCompleted, then commands
    for index, name in enumerate(types):
        if name == "ActivityCompleted":
            following = types[index + 1]
            assert following in ("ActivityCompleted", "SignalReceived", "WorkflowTaskCompleted")


async def test_fused_history_replays_for_a_fresh_worker(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue="fused", workflows=[Chain], activities=[bump]):
        handle = await env.client.start_workflow(Chain.run, 4, id="chain-2", task_queue="fused")
        await handle.signal(Chain.note, "x")
        await handle.signal(Chain.note, "y")
    # a new worker has an empty cache: it must replay the fused history exactly
    async with env.worker(task_queue="fused", workflows=[Chain], activities=[bump]) as fresh:
        await handle.signal(Chain.note, "z")
        assert await handle.result(timeout=30) == (4, ["x", "y", "z"])
        assert fresh.stats["replays"] >= 1


@workflow.defn
class FanOut:
    def __init__(self) -> None:
        self.done = 0

    @workflow.run
    async def run(self, branches: int, steps: int) -> int:
        async def branch(index: int) -> int:
            value = index
            for _ in range(steps):
                value = await workflow.execute_activity(bump, value, start_to_close_timeout=10)
            self.done += 1
            return value

        results = await asyncio.gather(*(branch(i) for i in range(branches)))
        return sum(results)

    @workflow.query
    def finished(self) -> int:
        return self.done


async def test_concurrent_completions_keep_the_history_replayable(
    env: WorkflowEnvironment,
) -> None:
    """Many results of one run arrive at once: the fused path and the ordinary path must
    never both advance the cached copy (a past bug: replay then failed as non-deterministic)."""
    async with env.worker(task_queue="fused", workflows=[FanOut], activities=[bump]):
        handle = await env.client.start_workflow(FanOut.run, 30, 4, id="fan", task_queue="fused")
        assert await handle.result(timeout=60) == sum(range(30)) + 30 * 4
    # answered by replaying the whole history locally: raises if it does not replay
    assert await handle.query(FanOut.finished) == 30
    description = await handle.describe()
    assert description.last_workflow_task_failure is None
