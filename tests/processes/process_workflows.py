"""Workflows and activities shared by the test process and worker subprocesses."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from perdure import RetryPolicy, activity, workflow


def _record(line: str) -> None:
    path = os.environ.get("PERDURE_TEST_EXECUTIONS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


@activity.defn
async def step(index: int) -> int:
    info = activity.info()
    _record(f"{index} {info.attempt} {os.getpid()}")
    await asyncio.sleep(float(os.environ.get("PERDURE_TEST_STEP_SECONDS", "0.1")))
    return index * index


@workflow.defn
class TwentySteps:
    @workflow.run
    async def run(self, count: int) -> int:
        total = 0
        for index in range(count):
            total += await workflow.execute_activity(
                step, index, start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
            )
        return total


@workflow.defn
class AwaitApproval:
    def __init__(self) -> None:
        self.approved_by: str | None = None

    @workflow.run
    async def run(self, request: str) -> str:
        await workflow.wait_condition(lambda: self.approved_by is not None)
        return f"{request} approved by {self.approved_by}"

    @workflow.signal
    def approve(self, who: str) -> None:
        self.approved_by = who


CHILD_TASK_QUEUE = "crash-child"


@workflow.defn
class StepsParent:
    """Runs ``TwentySteps`` as a child on its own task queue, and reports its result."""

    @workflow.run
    async def run(self, count: int) -> str:
        child_id = f"{workflow.info().workflow_id}/steps"
        total: int = await workflow.execute_child_workflow(
            TwentySteps.run, count, id=child_id, task_queue=CHILD_TASK_QUEUE
        )
        return f"{child_id}: {total}"
