"""What a start does when its workflow id is taken: the id conflict policy (a running
run) and the id reuse policy (closed runs), on both backends."""

from __future__ import annotations

import pytest

from perdure import (
    IdConflictPolicy,
    IdReusePolicy,
    WorkflowAlreadyStartedError,
    WorkflowFailureError,
    WorkflowStatus,
    workflow,
)
from perdure.history import WorkflowTerminated
from perdure.testing import WorkflowEnvironment

TQ = "ids"


@workflow.defn
class Session:
    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self, name: str) -> str:
        await workflow.wait_condition(lambda: self.done)
        return f"{name} done"

    @workflow.signal
    def finish(self) -> None:
        self.done = True


async def test_the_default_refuses_a_running_id(env: WorkflowEnvironment) -> None:
    first = await env.client.start_workflow(Session.run, "a", id="s", task_queue=TQ)
    with pytest.raises(WorkflowAlreadyStartedError, match="id_conflict_policy"):
        await env.client.start_workflow(Session.run, "b", id="s", task_queue=TQ)
    assert len(await env.client.list_workflows()) == 1
    await first.terminate("done")


async def test_use_existing_returns_the_running_run(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Session]) as worker:
        first = await env.client.start_workflow(Session.run, "a", id="s", task_queue=TQ)
        again = await env.client.start_workflow(
            Session.run, "b", id="s", task_queue=TQ,
            id_conflict_policy=IdConflictPolicy.USE_EXISTING,
        )
        assert again.run_id == first.run_id
        assert len(await env.client.list_workflows()) == 1
        assert worker.stats["eager_starts"] == 1  # the second start ran nothing
        await again.signal(Session.finish)
        assert await again.result(timeout=10) == "a done"


async def test_terminate_existing_replaces_the_running_run_in_one_step(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Session]):
        first = await env.client.start_workflow(Session.run, "a", id="s", task_queue=TQ)
        # the reuse policy would refuse a *closed* run's id; the conflict policy decides
        # about the running one it terminates itself
        second = await env.client.start_workflow(
            Session.run, "b", id="s", task_queue=TQ,
            id_conflict_policy=IdConflictPolicy.TERMINATE_EXISTING,
            id_reuse_policy=IdReusePolicy.REJECT_DUPLICATE,
        )
        assert second.run_id != first.run_id
        with pytest.raises(WorkflowFailureError, match="terminate_existing"):
            await first.result(timeout=10)
        old = await first.describe()
        assert old.status == WorkflowStatus.TERMINATED
        terminated = [e for e in (await first.fetch_history()).events
                      if isinstance(e, WorkflowTerminated)]
        assert len(terminated) == 1 and "terminate_existing" in terminated[0].reason
        assert (await second.describe()).status == WorkflowStatus.RUNNING
        await second.signal(Session.finish)
        assert await second.result(timeout=10) == "b done"
    # and once closed, the reuse policy is back in charge
    with pytest.raises(WorkflowAlreadyStartedError, match="reject_duplicate"):
        await env.client.start_workflow(Session.run, "c", id="s", task_queue=TQ,
                                        id_reuse_policy=IdReusePolicy.REJECT_DUPLICATE)
    assert len(await env.client.list_workflows()) == 2
