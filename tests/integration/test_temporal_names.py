"""The names Temporal users reach for, with Temporal's meaning (issue 11's list)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from perdure import (
    ApplicationError,
    CancelledFailure,
    IdConflictPolicy,
    IdReusePolicy,
    UpdateRejectedError,
    WithStartWorkflowOperation,
    WorkflowAlreadyStartedError,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowStatus,
    WorkflowUpdateStage,
    activity,
    exceptions,
    workflow,
)
from perdure.testing import WorkflowEnvironment

with workflow.unsafe.imports_passed_through():
    import json  # Temporal code imports this way; Perdure has no sandbox to pass through

TQ = "temporal-names"


@activity.defn
async def compose(greeting: str, name: str) -> str:
    return f"{greeting}, {name}!"


@workflow.defn
class Greeting:
    @workflow.init
    def __init__(self, name: str) -> None:
        self.name = name  # set from the input before any handler can run
        self.greeting = "Hello"
        self.approved = False

    @workflow.run
    async def run(self, name: str) -> str:
        await workflow.wait_condition(lambda: self.approved)
        text = await workflow.execute_local_activity(
            compose, self.greeting, self.name, start_to_close_timeout=timedelta(seconds=10))
        # handlers still running finish before the run returns
        await workflow.wait_condition(workflow.all_handlers_finished)
        return text

    @workflow.update
    async def set_greeting(self, greeting: str) -> str:
        previous, self.greeting = self.greeting, greeting
        await asyncio.sleep(1)  # a durable timer, inside an update handler
        return previous

    @set_greeting.validator
    def check_greeting(self, greeting: str) -> None:
        if not greeting:
            raise ValueError("an empty greeting")

    @workflow.signal
    def approve(self) -> None:
        self.approved = True

    @workflow.query
    def current(self) -> str:
        return json.dumps({"name": self.name, "greeting": self.greeting})


@workflow.defn
class Racer:
    @workflow.run
    async def run(self) -> list[str]:
        async def after(seconds: float, label: str) -> str:
            await asyncio.sleep(seconds)
            return label

        tasks = [asyncio.ensure_future(after(s, f"t{s:g}")) for s in (3, 1, 2)]
        done, pending = await workflow.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        assert isinstance(done, list) and isinstance(pending, list)
        first = [t.result() for t in done]
        done, pending = await workflow.wait(pending)
        return first + [t.result() for t in done]


async def test_a_ported_greeting_workflow(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Greeting], activities=[compose]):
        handle = await env.client.start_workflow(Greeting.run, "Ada", id="greet-1",
                                                 task_queue=TQ)
        assert handle.result_run_id == handle.run_id == handle.first_execution_run_id
        assert json.loads(await handle.query(Greeting.current)) == {
            "name": "Ada", "greeting": "Hello"}
        # start_update: returns once accepted; the handler is still sleeping
        update = await handle.start_update(Greeting.set_greeting, "Bonjour",
                                           wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                                           id="greeting-1")
        assert update.id == "greeting-1"
        again = handle.get_update_handle("greeting-1", result_type=str)
        assert await update.result() == "Hello"
        assert await again.result() == "Hello"
        with pytest.raises(UpdateRejectedError, match="an empty greeting"):
            await handle.start_update(Greeting.set_greeting, "")
        await handle.signal(Greeting.approve)
        assert await handle.result(timeout=10) == "Bonjour, Ada!"
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert WorkflowExecutionStatus is WorkflowStatus


async def test_workflow_wait_is_deterministic_lists(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Racer]):
        handle = await env.client.start_workflow(Racer.run, id="race", task_queue=TQ)
        assert await handle.result(timeout=10) == ["t1", "t3", "t2"]


async def test_update_with_start(env: WorkflowEnvironment) -> None:
    operation = WithStartWorkflowOperation(
        Greeting.run, "Bo", id="greet-uws", task_queue=TQ,
        id_conflict_policy=IdConflictPolicy.USE_EXISTING)
    # no worker yet: the start and the update commit together, the update waits
    update = await env.client.start_update_with_start_workflow(
        Greeting.set_greeting, "Hi", start_workflow_operation=operation,
        wait_for_stage=WorkflowUpdateStage.ADMITTED, id="uws-1")
    handle = await operation.workflow_handle()
    assert (await handle.describe()).pending_events == 1
    # the same id again is the same update, on the same run
    again = WithStartWorkflowOperation(
        Greeting.run, "Bo", id="greet-uws", task_queue=TQ,
        id_conflict_policy=IdConflictPolicy.USE_EXISTING)
    same = await env.client.start_update_with_start_workflow(
        Greeting.set_greeting, "Hi", start_workflow_operation=again,
        wait_for_stage=WorkflowUpdateStage.ADMITTED, id="uws-1")
    assert (await again.workflow_handle()).run_id == handle.run_id
    assert (await handle.describe()).pending_events == 1
    async with env.worker(task_queue=TQ, workflows=[Greeting], activities=[compose]):
        assert await update.result(timeout=10) == "Hello"
        assert await same.result(timeout=10) == "Hello"
        # running now: USE_EXISTING updates it, FAIL refuses
        previous = await env.client.execute_update_with_start_workflow(
            Greeting.set_greeting, "Hey", start_workflow_operation=WithStartWorkflowOperation(
                Greeting.run, "Bo", id="greet-uws", task_queue=TQ,
                id_conflict_policy=IdConflictPolicy.USE_EXISTING))
        assert previous == "Hi"
        refusing = WithStartWorkflowOperation(
            Greeting.run, "Bo", id="greet-uws", task_queue=TQ,
            id_conflict_policy=IdConflictPolicy.FAIL)
        with pytest.raises(WorkflowAlreadyStartedError):
            await env.client.execute_update_with_start_workflow(
                Greeting.set_greeting, "Yo", start_workflow_operation=refusing)
        with pytest.raises(WorkflowAlreadyStartedError):
            await refusing.workflow_handle()
        await handle.signal(Greeting.approve)
        assert await handle.result(timeout=10) == "Hey, Bo!"


async def test_signal_with_start_honours_the_id_reuse_policy(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Greeting], activities=[compose]):
        handle = await env.client.signal_with_start(
            Greeting.run, Greeting.approve, (), "Cy", id="greet-sws", task_queue=TQ)
        assert await handle.result(timeout=10) == "Hello, Cy!"
        with pytest.raises(WorkflowAlreadyStartedError, match="reject_duplicate"):
            await env.client.signal_with_start(
                Greeting.run, Greeting.approve, (), "Cy", id="greet-sws", task_queue=TQ,
                id_reuse_policy=IdReusePolicy.REJECT_DUPLICATE)
        # Temporal's spelling: start_workflow(start_signal=...)
        again = await env.client.start_workflow(
            Greeting.run, "Di", id="greet-sws", task_queue=TQ, start_signal="approve")
        assert await again.result(timeout=10) == "Hello, Di!"


@workflow.defn
class Chain:
    @workflow.run
    async def run(self, n: int) -> int:
        if n < 2:
            workflow.continue_as_new(n + 1)
        return n


async def test_result_follows_runs_unless_asked_not_to(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Chain]):
        handle = await env.client.start_workflow(Chain.run, 0, id="chain", task_queue=TQ)
        assert await handle.result(timeout=10) == 2
        with pytest.raises(WorkflowFailureError, match="follow_runs=True") as info:
            await handle.result(follow_runs=False)
        assert info.value.status == "continued_as_new"


def test_the_exceptions_module_names_temporal_types() -> None:
    assert exceptions.CancelledError is CancelledFailure
    assert issubclass(exceptions.CancelledError, exceptions.FailureError)
    assert exceptions.ApplicationError is ApplicationError
    assert exceptions.is_cancelled_exception(asyncio.CancelledError())
    assert exceptions.is_cancelled_exception(exceptions.CancelledError("stop"))
    assert not exceptions.is_cancelled_exception(ApplicationError("no"))
