"""A deploy that breaks determinism stalls the run with a precise error; a fix resumes it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from perdure import WorkflowStatus, activity, workflow
from perdure.testing import WorkflowEnvironment


@activity.defn
async def fetch(n: int) -> int:
    return n


@activity.defn
async def other(n: int) -> int:
    return -n


@workflow.defn(name="Pipeline")
class PipelineV1:
    def __init__(self) -> None:
        self.go = False

    @workflow.run
    async def run(self) -> int:
        first = await workflow.execute_activity(fetch, 1, start_to_close_timeout=10)
        await workflow.wait_condition(lambda: self.go)
        second = await workflow.execute_activity(fetch, 2, start_to_close_timeout=10)
        return first + second

    @workflow.signal
    def proceed(self) -> None:
        self.go = True


@workflow.defn(name="Pipeline")
class PipelineBroken:
    """Swapped the first activity for another one: old histories cannot replay."""

    def __init__(self) -> None:
        self.go = False

    @workflow.run
    async def run(self) -> int:
        first = await workflow.execute_activity(other, 1, start_to_close_timeout=10)
        await workflow.wait_condition(lambda: self.go)
        second = await workflow.execute_activity(fetch, 2, start_to_close_timeout=10)
        return first + second

    @workflow.signal
    def proceed(self) -> None:
        self.go = True


async def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_incompatible_deploy_fails_the_task_not_the_workflow(
    env: WorkflowEnvironment,
) -> None:
    client = env.client
    async with env.worker(task_queue="nd", workflows=[PipelineV1], activities=[fetch]):
        handle = await client.start_workflow(PipelineV1.run, id="pipe", task_queue="nd")

        async def waiting() -> bool:
            return (await handle.describe()).pending_activities == [] and (
                await handle.describe()
            ).history_length >= 5

        await _wait_for(waiting)
    # "deploy" the broken code: a fresh worker has no cache, so it must replay
    async with env.worker(task_queue="nd", workflows=[PipelineBroken], activities=[fetch, other]):
        await handle.signal(PipelineBroken.proceed)

        async def failing() -> bool:
            return (await handle.describe()).last_workflow_task_failure is not None

        await _wait_for(failing)
        description = await handle.describe()
        message = description.last_workflow_task_failure or ""
        assert description.status == WorkflowStatus.RUNNING
        assert "NondeterminismError" in message
        assert "recorded: ActivityScheduled(seq=1, activity_type='fetch')" in message
        assert "produced: ActivityScheduled(seq=1, activity_type='other')" in message
        assert "test_nondeterminism.py" in message
    # roll back: the run resumes from its history and completes correctly
    async with env.worker(task_queue="nd", workflows=[PipelineV1], activities=[fetch]):
        assert await handle.result(timeout=timedelta(seconds=30)) == 3
    history = await handle.fetch_history()
    assert sum(type(e).__name__ == "ActivityCompleted" for e in history.events) == 2
