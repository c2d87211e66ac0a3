"""A bug in workflow code fails the workflow task, not the run: the runs stall with the
error visible, and a deploy that fixes the code resumes every one of them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from perdure import ApplicationError, WorkflowStatus, activity, workflow
from perdure.history import event_type_name
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "deploys"
CALLS: list[str] = []


@activity.defn
async def plan(goal: str) -> dict[str, str]:
    CALLS.append(goal)
    return {"title": goal.upper(), "steps": "3"}


@workflow.defn(name="Pipeline")
class PipelineV1:
    """The broken build: a typo in a key, after a (paid) activity completed."""

    @workflow.run
    async def run(self, goal: str) -> str:
        result = await workflow.execute_activity(
            plan, goal, start_to_close_timeout=timedelta(seconds=10))
        return f"{result['tittle']} in {result['steps']} steps"  # KeyError: the typo


@workflow.defn(name="Pipeline")
class PipelineV2:
    """The fixed build."""

    @workflow.run
    async def run(self, goal: str) -> str:
        result = await workflow.execute_activity(
            plan, goal, start_to_close_timeout=timedelta(seconds=10))
        return f"{result['title']} in {result['steps']} steps"


@workflow.defn(name="Guarded")
class Guarded:
    """An ApplicationError still fails the run at once, as it always did."""

    @workflow.run
    async def run(self) -> None:
        raise ApplicationError("refused", type="Refused", non_retryable=True)


async def test_a_fixed_deploy_resumes_runs_that_a_bug_stalled(env: WorkflowEnvironment) -> None:
    CALLS.clear()
    goals = ["kanban", "chat", "todo"]
    async with env.worker(task_queue=TQ, workflows=[PipelineV1], activities=[plan]):
        handles = [await env.client.start_workflow(PipelineV1.run, goal, id=f"build-{goal}",
                                                   task_queue=TQ) for goal in goals]
        for handle in handles:
            await wait_until(lambda h=handle: _stalled(h), what="the run to stall", timeout=10)
    # stalled, not failed: running, the bug visible with its line of code
    for handle in handles:
        description = await handle.describe()
        assert description.status == WorkflowStatus.RUNNING
        failure = description.last_workflow_task_failure or ""
        assert failure.startswith("KeyError: 'tittle'"), failure
        assert "test_bug_is_not_a_verdict.py" in failure
        types = [event_type_name(e) for e in (await handle.fetch_history()).events]
        assert "WorkflowFailed" not in types
        # the activity's result waits, durable, in the inbox for a task that can take it
        assert (description.pending_events, len(description.pending_activities)) == (1, 0)
    assert sorted(CALLS) == sorted(goals)

    # the fix ships: every stalled run finishes, and no activity runs again
    async with env.worker(task_queue=TQ, workflows=[PipelineV2], activities=[plan]):
        results = [await handle.result(timeout=30) for handle in handles]
    assert results == [f"{goal.upper()} in 3 steps" for goal in goals]
    assert sorted(CALLS) == sorted(goals)
    for handle in handles:
        description = await handle.describe()
        assert description.status == WorkflowStatus.COMPLETED
        assert description.last_workflow_task_failure is None


async def test_an_application_error_still_fails_the_run(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Guarded]):
        handle = await env.client.start_workflow(Guarded.run, id="guarded", task_queue=TQ)
        description = await wait_until(lambda: _closed(handle), what="the run to fail")
    assert description.status == WorkflowStatus.FAILED


async def _stalled(handle: Any) -> bool:
    description = await handle.describe()
    return bool(description.last_workflow_task_failure)


async def _closed(handle: Any) -> Any:
    description = await handle.describe()
    return description if description.status != WorkflowStatus.RUNNING else None
