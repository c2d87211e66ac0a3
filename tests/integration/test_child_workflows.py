"""Child workflows: start, result, failure, signal, cancel, parent-close policies, listing."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from perdure import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    TerminatedFailure,
    TimeoutFailure,
    WorkerOptions,
    WorkflowAlreadyStartedError,
    WorkflowFailureError,
    WorkflowNotFoundError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.history import (
    ChildWorkflowCompleted,
    ChildWorkflowScheduled,
    ChildWorkflowStarted,
    WorkflowStarted,
    event_type_name,
)
from perdure.testing import WorkflowEnvironment
from perdure.workflow import ParentClosePolicy

from ._helpers import wait_until

TQ = "children"


@activity.defn
async def double(value: int) -> int:
    return value * 2


@activity.defn
async def explode(message: str) -> None:
    raise ApplicationError(message, non_retryable=True)


@workflow.defn
class Doubler:
    @workflow.run
    async def run(self, value: int) -> int:
        result: int = await workflow.execute_activity(double, value,
                                                      start_to_close_timeout=10)
        return result


@workflow.defn
class Failing:
    @workflow.run
    async def run(self, message: str) -> None:
        await workflow.execute_activity(explode, message, start_to_close_timeout=10)


@workflow.defn
class Waiter:
    """Waits for a ``go`` signal (or forever); reports its parent."""

    def __init__(self) -> None:
        self.go = False

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.go)
        info = workflow.info()
        return f"released; parent {info.parent_workflow_id}"

    @workflow.signal
    def release(self) -> None:
        self.go = True


@workflow.defn
class Sleeper:
    @workflow.run
    async def run(self, hours: float) -> str:
        await workflow.sleep(timedelta(hours=hours))
        return "woke"


@workflow.defn
class FanOut:
    @workflow.run
    async def run(self, values: list[int]) -> list[int]:
        return list(await asyncio.gather(*(
            workflow.execute_child_workflow(Doubler.run, v) for v in values
        )))


@workflow.defn
class CatchesChildFailure:
    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.execute_child_workflow(Failing.run, "boom", id="failing-child")
        except ChildWorkflowError as exc:
            cause = exc.__cause__
            assert isinstance(cause, ActivityError)
            assert isinstance(cause.__cause__, ApplicationError)
            return f"{exc.status}: {cause.__cause__.message} ({exc.workflow_id})"
        return "no failure"


@workflow.defn
class SignalsChild:
    @workflow.run
    async def run(self) -> str:
        handle = await workflow.start_child_workflow(Waiter.run, id="signalled-child")
        await handle.signal(Waiter.release)
        result: str = await handle
        return result


@workflow.defn
class CancelsChild:
    @workflow.run
    async def run(self) -> str:
        handle = await workflow.start_child_workflow(Waiter.run, id="cancelled-child")
        handle.cancel()
        try:
            await handle
        except ChildWorkflowError as exc:
            return exc.status
        return "completed"


@workflow.defn
class ChildTimesOut:
    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.execute_child_workflow(Waiter.run, id="slow-child",
                                                  execution_timeout=timedelta(minutes=5))
        except ChildWorkflowError as exc:
            assert isinstance(exc.__cause__, TimeoutFailure)
            return exc.status
        return "completed"


@workflow.defn
class StartsTwice:
    @workflow.run
    async def run(self) -> str:
        await workflow.start_child_workflow(Waiter.run, id="twin",
                                            parent_close_policy=ParentClosePolicy.ABANDON)
        try:
            await workflow.start_child_workflow(Waiter.run, id="twin")
        except WorkflowAlreadyStartedError as exc:
            return f"refused: {exc.workflow_id}"
        return "started twice"


@workflow.defn
class LeavesChildren:
    """Starts one child per policy, then waits for ever (until terminated)."""

    @workflow.run
    async def run(self, prefix: str) -> None:
        for policy in ParentClosePolicy:
            await workflow.start_child_workflow(Waiter.run, id=f"{prefix}-{policy.value}",
                                                parent_close_policy=policy)
        await workflow.wait_condition(lambda: False)


@workflow.defn
class SignalsMissing:
    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.get_external_workflow_handle("nobody-here").signal("release")
        except WorkflowNotFoundError:
            return "not found"
        return "delivered"


ALL = [Doubler, Failing, Waiter, Sleeper, FanOut, CatchesChildFailure, SignalsChild,
       CancelsChild, ChildTimesOut, StartsTwice, LeavesChildren, SignalsMissing]
ACTIVITIES = [double, explode]


def _worker(env: WorkflowEnvironment):  # type: ignore[no-untyped-def]
    return env.worker(task_queue=TQ, workflows=ALL, activities=ACTIVITIES)


async def test_children_run_and_return_results(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        handle = await env.client.start_workflow(FanOut.run, [1, 2, 3, 4, 5], id="fan",
                                                 task_queue=TQ)
        assert await handle.result(timeout=20) == [2, 4, 6, 8, 10]
    history = (await handle.fetch_history()).events
    scheduled = [e for e in history if isinstance(e, ChildWorkflowScheduled)]
    started = [e for e in history if isinstance(e, ChildWorkflowStarted)]
    completed = [e for e in history if isinstance(e, ChildWorkflowCompleted)]
    assert len(scheduled) == len(started) == len(completed) == 5
    # each child has a history of its own that names its parent
    children = await env.client.list_workflows(parent_workflow_id="fan")
    assert len(children) == 5
    for child in children:
        assert child.status == WorkflowStatus.COMPLETED
        assert child.parent_run_id == handle.run_id
        child_history = (await env.client.get_workflow_handle(child.workflow_id)
                         .fetch_history()).events
        first = child_history[0]
        assert isinstance(first, WorkflowStarted)
        assert first.parent_workflow_id == "fan"
        assert "ActivityCompleted" in [event_type_name(e) for e in child_history]


async def test_child_failure_reaches_parent_as_typed_error(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        result = await env.client.execute_workflow(CatchesChildFailure.run, id="catcher",
                                                   task_queue=TQ)
    assert result == "failed: boom (failing-child)"


async def test_uncaught_child_failure_fails_parent_with_chain(env: WorkflowEnvironment) -> None:
    @workflow.defn(name="Uncaught")
    class Uncaught:
        @workflow.run
        async def run(self) -> None:
            await workflow.execute_child_workflow(Failing.run, "deep", id="uncaught-child")

    async with env.worker(task_queue=TQ, workflows=[*ALL, Uncaught], activities=ACTIVITIES):
        handle = await env.client.start_workflow(Uncaught.run, id="uncaught", task_queue=TQ)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=20)
    child_error = info.value.cause
    assert isinstance(child_error, ChildWorkflowError)
    assert child_error.workflow_id == "uncaught-child"
    assert child_error.status == "failed"
    assert isinstance(child_error.__cause__, ActivityError)


async def test_parent_signals_its_child(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        result = await env.client.execute_workflow(SignalsChild.run, id="signaller",
                                                   task_queue=TQ)
    assert result == "released; parent signaller"


async def test_signal_to_missing_workflow_raises_in_workflow(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        assert await env.client.execute_workflow(SignalsMissing.run, id="lonely",
                                                 task_queue=TQ) == "not found"


async def test_parent_cancels_its_child(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        assert await env.client.execute_workflow(CancelsChild.run, id="canceller",
                                                 task_queue=TQ) == "canceled"
    child = await env.client.get_workflow_handle("cancelled-child").describe()
    assert child.status == WorkflowStatus.CANCELED


async def test_child_execution_timeout(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        assert await env.client.execute_workflow(ChildTimesOut.run, id="impatient",
                                                 task_queue=TQ) == "timed_out"


async def test_child_id_already_running_is_refused(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        assert await env.client.execute_workflow(StartsTwice.run, id="twice",
                                                 task_queue=TQ) == "refused: twin"
        twin = env.client.get_workflow_handle("twin")
        assert (await twin.describe()).status == WorkflowStatus.RUNNING
        await twin.signal("release")
        assert await twin.result(timeout=10) == "released; parent twice"


async def test_parent_close_policies_when_parent_is_terminated(
    env: WorkflowEnvironment,
) -> None:
    async with _worker(env):
        parent = await env.client.start_workflow(LeavesChildren.run, "kid", id="leaver",
                                                 task_queue=TQ)
        await wait_until(
            lambda: _count_children(env, "leaver", 3), what="three children started"
        )
        await parent.terminate("enough")
        terminated = env.client.get_workflow_handle("kid-terminate")
        cancelled = env.client.get_workflow_handle("kid-request_cancel")
        abandoned = env.client.get_workflow_handle("kid-abandon")
        # terminate: in the parent's own transaction
        assert (await terminated.describe()).status == WorkflowStatus.TERMINATED
        with pytest.raises(WorkflowFailureError) as info:
            await terminated.result(timeout=5)
        assert isinstance(info.value.cause, TerminatedFailure)
        # request_cancel: the child runs its cancellation
        await wait_until(lambda: _status_is(cancelled, WorkflowStatus.CANCELED),
                         what="request_cancel child cancelled")
        # abandon: still running, and finishes on its own
        assert (await abandoned.describe()).status == WorkflowStatus.RUNNING
        await abandoned.signal("release")
        assert await abandoned.result(timeout=10) == "released; parent leaver"
    assert (await parent.describe()).status == WorkflowStatus.TERMINATED


async def _count_children(env: WorkflowEnvironment, parent: str, n: int) -> bool:
    page = await env.client.list_workflows(parent_workflow_id=parent)
    return len(page) >= n


async def _status_is(handle, status: WorkflowStatus) -> bool:  # type: ignore[no-untyped-def]
    return bool((await handle.describe()).status == status)


CANCELLED_ACTIVITIES: list[str] = []


@activity.defn
async def runs_until_cancelled(name: str) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        CANCELLED_ACTIVITIES.append(name)
        raise


@workflow.defn
class BusyChild:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(runs_until_cancelled, workflow.info().workflow_id,
                                        start_to_close_timeout=3600)


@workflow.defn
class BusyParent:
    @workflow.run
    async def run(self) -> None:
        await workflow.start_child_workflow(BusyChild.run, id="busy-child")
        await workflow.wait_condition(lambda: False)


async def test_terminated_child_stops_its_running_activity_at_once(
    real_env: WorkflowEnvironment,
) -> None:
    """The child is closed by its parent's transaction, not by its own: the worker running
    its activity learns of it from the close notification, not a liveness round."""
    CANCELLED_ACTIVITIES.clear()
    options = WorkerOptions(liveness_interval=30, dead_worker_timeout=120)
    async with real_env.worker(task_queue=TQ, workflows=[BusyParent, BusyChild],
                               activities=[runs_until_cancelled], options=options):
        parent = await real_env.client.start_workflow(BusyParent.run, id="busy-parent",
                                                      task_queue=TQ)
        child = real_env.client.get_workflow_handle("busy-child")
        await wait_until(lambda: _pending_activities(child), what="the child's activity runs")
        await parent.terminate("stop everything")
        assert (await child.describe()).status == WorkflowStatus.TERMINATED
        await wait_until(lambda: _cancelled(), what="the activity saw its cancellation",
                         timeout=2.0)
    assert CANCELLED_ACTIVITIES == ["busy-child"]


async def _pending_activities(handle) -> bool:  # type: ignore[no-untyped-def]
    return bool((await handle.describe()).pending_activities)


async def _cancelled() -> bool:
    return bool(CANCELLED_ACTIVITIES)


@workflow.defn
class Canceller:
    @workflow.run
    async def run(self, target: str) -> str:
        try:
            await workflow.get_external_workflow_handle(target).cancel("not needed any more")
        except WorkflowNotFoundError:
            return "nothing to cancel"
        return "cancelled"


async def test_a_workflow_cancels_another_by_id(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[*ALL, Canceller], activities=ACTIVITIES):
        waiter = await env.client.start_workflow(Waiter.run, id="external-target",
                                                 task_queue=TQ)
        assert await env.client.execute_workflow(Canceller.run, "external-target",
                                                 id="external-canceller",
                                                 task_queue=TQ) == "cancelled"
        with pytest.raises(WorkflowFailureError, match="canceled"):
            await waiter.result(timeout=10)
        assert await env.client.execute_workflow(Canceller.run, "no-such-workflow",
                                                 id="external-canceller-2",
                                                 task_queue=TQ) == "nothing to cancel"
    events = (await waiter.fetch_history()).events
    assert any(event_type_name(e) == "CancelRequested" and
               getattr(e, "reason", "") == "not needed any more" for e in events)
