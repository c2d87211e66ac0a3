"""One activation that schedules more than a thousand activities: its events span
several INSERT statements, and the history stays whole and in order."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from perdure import activity, workflow
from perdure.history import ActivityCompleted, ActivityScheduled
from perdure.testing import WorkflowEnvironment

TQ = "large"


@activity.defn
async def square(value: int) -> int:
    return value * value


@workflow.defn
class WideFanOut:
    @workflow.run
    async def run(self, width: int) -> int:
        results = await asyncio.gather(*[
            workflow.execute_activity(square, i, start_to_close_timeout=timedelta(seconds=60))
            for i in range(width)
        ])
        return sum(results)


async def test_an_activation_of_more_than_a_thousand_events(env: WorkflowEnvironment) -> None:
    width = 1200
    async with env.worker(task_queue=TQ, workflows=[WideFanOut], activities=[square]):
        result = await env.client.execute_workflow(WideFanOut.run, width, id="wide",
                                                   task_queue=TQ)
    assert result == sum(i * i for i in range(width))
    history = await env.client.get_workflow_handle("wide").fetch_history()
    scheduled = [e.seq for e in history.events if isinstance(e, ActivityScheduled)]
    completed = [e.seq for e in history.events if isinstance(e, ActivityCompleted)]
    assert scheduled == list(range(1, width + 1))
    assert sorted(completed) == scheduled
