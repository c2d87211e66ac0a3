"""Deploying patched code while runs are in flight: old runs keep the old path."""

from __future__ import annotations

from typing import Any

from perdure import activity, workflow
from perdure.history import MarkerRecorded
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "patching"


@activity.defn
async def draft(topic: str) -> str:
    return f"draft about {topic}"


@activity.defn
async def draft_with_outline(topic: str) -> str:
    return f"outlined draft about {topic}"


@activity.defn
async def publish(text: str) -> str:
    return f"published: {text}"


@workflow.defn(name="Writer")
class WriterV1:
    def __init__(self) -> None:
        self.approved = False

    @workflow.run
    async def run(self, topic: str) -> dict[str, Any]:
        await workflow.wait_condition(lambda: self.approved)
        text = await workflow.execute_activity(draft, topic, start_to_close_timeout=10)
        return {"result": await workflow.execute_activity(publish, text,
                                                          start_to_close_timeout=10)}

    @workflow.signal
    def approve(self) -> None:
        self.approved = True


@workflow.defn(name="Writer")
class WriterV2:
    def __init__(self) -> None:
        self.approved = False

    @workflow.run
    async def run(self, topic: str) -> dict[str, Any]:
        # asked before the wait: a run that already passed this point under v1 has no
        # marker here, and keeps the old path
        outline = workflow.patched("outline-first")
        await workflow.wait_condition(lambda: self.approved)
        if outline:
            text = await workflow.execute_activity(draft_with_outline, topic,
                                                   start_to_close_timeout=10)
        else:
            text = await workflow.execute_activity(draft, topic, start_to_close_timeout=10)
        return {"result": await workflow.execute_activity(publish, text,
                                                          start_to_close_timeout=10)}

    @workflow.signal
    def approve(self) -> None:
        self.approved = True


ACTIVITIES = [draft, draft_with_outline, publish]


async def test_running_workflow_keeps_old_path_after_deploy(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[WriterV1], activities=ACTIVITIES):
        old = await env.client.start_workflow(WriterV1.run, "tides", id="old-run",
                                              task_queue=TQ)
        await wait_until(lambda: _waiting(old), what="v1 run waiting for approval")
    # the deploy: a new worker (empty cache) with patched code replays the v1 history
    async with env.worker(task_queue=TQ, workflows=[WriterV2], activities=ACTIVITIES):
        new = await env.client.start_workflow(WriterV2.run, "moons", id="new-run",
                                              task_queue=TQ)
        await old.signal("approve")
        await new.signal("approve")
        assert await old.result(timeout=10) == {"result": "published: draft about tides"}
        assert await new.result(timeout=10) == {
            "result": "published: outlined draft about moons"}
    old_events = (await old.fetch_history()).events
    new_events = (await new.fetch_history()).events
    assert not [e for e in old_events if isinstance(e, MarkerRecorded)]
    assert [e.name for e in new_events if isinstance(e, MarkerRecorded)] == ["patch"]
    assert (await old.describe()).workflow_task_attempt is None  # no task ever failed


async def _waiting(handle) -> bool:  # type: ignore[no-untyped-def]
    return bool((await handle.describe()).history_length >= 2)
