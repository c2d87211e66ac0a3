"""``describe().pending_activities``: each activity not yet ended, with its attempt, last
failure and last heartbeat, as Temporal's describe shows them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from perdure import ApplicationError, RetryPolicy, activity, workflow
from perdure.client import PendingActivityState
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "pending-activities"
RELEASE: dict[str, asyncio.Event] = {}


@activity.defn
async def flaky_step(name: str) -> str:
    activity.heartbeat("halfway", 50)
    if activity.info().attempt == 1:
        raise ApplicationError(f"{name}: the provider said 503", type="Unavailable")
    await RELEASE["event"].wait()
    return name


@workflow.defn
class OneStep:
    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(
            flaky_step, "plan", start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(initial_interval=timedelta(hours=1)),
        )


async def test_describe_shows_each_pending_activity_in_detail(env: WorkflowEnvironment) -> None:
    RELEASE["event"] = asyncio.Event()
    async with env.worker(task_queue=TQ, workflows=[OneStep], activities=[flaky_step]) as worker:
        handle = await env.client.start_workflow(OneStep.run, id="pending-1", task_queue=TQ)
        waiting = await wait_until(lambda: _attempt(handle, 2), what="the retry to wait")
        assert waiting.activity_type == "flaky_step"
        assert waiting.activity_id == "1"
        assert waiting.state == PendingActivityState.SCHEDULED
        assert waiting.last_started_time is None
        assert waiting.next_attempt_time is not None
        assert waiting.next_attempt_time - waiting.scheduled_time >= timedelta(minutes=59)
        assert isinstance(waiting.last_failure, ApplicationError)
        assert "the provider said 503" in str(waiting.last_failure)
        assert waiting.heartbeat_details == ["halfway", 50]
        assert waiting.last_heartbeat_time is not None

        # let the hour pass: the second attempt starts and waits on RELEASE
        await env.sleep(timedelta(hours=1, minutes=1))
        running = await wait_until(lambda: _state(handle, PendingActivityState.STARTED),
                                   what="the second attempt to run")
        assert running.attempt == 2
        assert running.last_worker_identity == worker.identity
        assert running.last_started_time is not None
        RELEASE["event"].set()
        assert await handle.result(timeout=10) == "plan"
    assert (await handle.describe()).pending_activities == []


async def _attempt(handle: Any, attempt: int) -> Any:
    pending = (await handle.describe()).pending_activities
    return pending[0] if pending and pending[0].attempt == attempt else None


async def _state(handle: Any, state: PendingActivityState) -> Any:
    pending = (await handle.describe()).pending_activities
    return pending[0] if pending and pending[0].state == state else None
