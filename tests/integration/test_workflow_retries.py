"""Workflow retry policies and run timeouts, for top-level and child workflows."""

from __future__ import annotations

from datetime import timedelta

import pytest

from perdure import (
    ApplicationError,
    ChildWorkflowError,
    RetryPolicy,
    TimeoutFailure,
    WorkflowFailureError,
    WorkflowStatus,
    workflow,
)
from perdure.history import WorkflowStarted, event_type_name
from perdure.testing import WorkflowEnvironment

TQ = "workflow-retries"
FAST = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)


@workflow.defn
class Flaky:
    """Fails until attempt ``succeed_on``."""

    @workflow.run
    async def run(self, succeed_on: int) -> str:
        attempt = workflow.info().attempt
        if attempt < succeed_on:
            raise ApplicationError(f"attempt {attempt} failed")
        return f"succeeded on attempt {attempt}"


@workflow.defn
class Fatal:
    @workflow.run
    async def run(self) -> None:
        raise ApplicationError("do not retry me", non_retryable=True)


@workflow.defn
class Stuck:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


@workflow.defn
class RetriesChild:
    @workflow.run
    async def run(self, succeed_on: int, attempts: int) -> str:
        try:
            result: str = await workflow.execute_child_workflow(
                Flaky.run, succeed_on, id="flaky-child",
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1),
                                         maximum_attempts=attempts))
            return result
        except ChildWorkflowError as exc:
            return f"{exc.status}: {exc.__cause__}"


@workflow.defn
class TimesOutChild:
    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.execute_child_workflow(
                Stuck.run, id="stuck-child", run_timeout=timedelta(minutes=1),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1),
                                         maximum_attempts=3))
        except ChildWorkflowError as exc:
            cause = exc.__cause__
            assert isinstance(cause, TimeoutFailure)
            return f"{exc.status} ({cause.timeout_type})"
        return "completed"


ALL = [Flaky, Fatal, Stuck, RetriesChild, TimesOutChild]


async def test_failed_run_is_retried_and_result_follows(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        handle = await env.client.start_workflow(Flaky.run, 3, id="flaky", task_queue=TQ,
                                                 retry_policy=FAST)
        assert await handle.result(timeout=20) == "succeeded on attempt 3"
    runs = await env.client.list_workflows(workflow_type="Flaky")
    assert sorted(r.status for r in runs) == sorted(
        [WorkflowStatus.FAILED, WorkflowStatus.FAILED, WorkflowStatus.COMPLETED])
    latest = (await env.client.get_workflow_handle("flaky").fetch_history()).events[0]
    assert isinstance(latest, WorkflowStarted) and latest.attempt == 3
    assert latest.continued_from_run_id is not None


async def test_attempts_run_out(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        handle = await env.client.start_workflow(
            Flaky.run, 10, id="flaky-out", task_queue=TQ,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2))
        with pytest.raises(WorkflowFailureError, match="attempt 2 failed"):
            await handle.result(timeout=20)
    assert len(await env.client.list_workflows(workflow_type="Flaky")) == 2


async def test_non_retryable_failure_is_not_retried(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        handle = await env.client.start_workflow(Fatal.run, id="fatal", task_queue=TQ,
                                                 retry_policy=FAST)
        with pytest.raises(WorkflowFailureError, match="do not retry me"):
            await handle.result(timeout=20)
    assert len(await env.client.list_workflows(workflow_type="Fatal")) == 1


async def test_execution_timeout_bounds_every_attempt(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        handle = await env.client.start_workflow(
            Stuck.run, id="bounded", task_queue=TQ, run_timeout=timedelta(minutes=1),
            execution_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1)))
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=20)
    assert isinstance(info.value.cause, TimeoutFailure)
    # the last run ended by the execution deadline, or by its own timeout when the next
    # attempt could not have started before that deadline
    assert info.value.cause.timeout_type in ("execution", "run")
    runs = await env.client.list_workflows(workflow_type="Stuck")
    # one-minute runs, retried after 1, 2, 4, ... s, until the ten minutes are up
    assert 5 <= len(runs) <= 10
    assert all(r.status == WorkflowStatus.TIMED_OUT for r in runs)
    first = min(r.start_time for r in runs)
    last = max(r.close_time for r in runs if r.close_time is not None)
    assert (last - first) <= timedelta(minutes=10, seconds=1)


async def test_child_retries_are_invisible_to_parent(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        result = await env.client.execute_workflow(RetriesChild.run, 3, 5, id="retrier",
                                                   task_queue=TQ)
    assert result == "succeeded on attempt 3"
    events = (await env.client.get_workflow_handle("retrier").fetch_history()).events
    names = [event_type_name(e) for e in events]
    assert names.count("ChildWorkflowStarted") == 1
    assert names.count("ChildWorkflowCompleted") == 1
    assert "ChildWorkflowFailed" not in names
    children = await env.client.list_workflows(parent_workflow_id="retrier")
    assert len(children) == 3


async def test_child_failure_after_last_attempt(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        result = await env.client.execute_workflow(RetriesChild.run, 9, 2, id="gives-up",
                                                   task_queue=TQ)
    assert result == "failed: attempt 2 failed"


async def test_child_run_timeout_with_retries(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        result = await env.client.execute_workflow(TimesOutChild.run, id="times-out",
                                                   task_queue=TQ)
    assert result == "timed_out (run)"
    runs = await env.client.list_workflows(parent_workflow_id="times-out")
    assert [r.status for r in runs] == [WorkflowStatus.TIMED_OUT] * 3
