"""The client against the real SQLite store: start, id reuse, result, cancel,
terminate, describe, history, list, execution timeout, signal-with-start."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from perdure import (
    ActivityError,
    ApplicationError,
    CancelledFailure,
    IdReusePolicy,
    TerminatedFailure,
    TimeoutFailure,
    WorkflowAlreadyStartedError,
    WorkflowFailureError,
    WorkflowNotFoundError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.history import event_type_name
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "client"


@activity.defn
async def shout(text: str) -> str:
    return text.upper() + "!"


SIDE_EFFECTS: list[str] = []


@activity.defn
async def record_side_effect(tag: str) -> str:
    SIDE_EFFECTS.append(tag)
    return tag


@workflow.defn
class Echo:
    @workflow.run
    async def run(self, text: str) -> str:
        return text


@workflow.defn
class Gate:
    """Waits for ``open``; optionally fails instead of completing."""

    def __init__(self) -> None:
        self.value: str | None = None

    @workflow.run
    async def run(self, fail: bool) -> str:
        await workflow.wait_condition(lambda: self.value is not None)
        if fail:
            raise ApplicationError(f"refused {self.value}", type="Refused")
        assert self.value is not None
        return self.value

    @workflow.signal
    def open(self, value: str) -> None:
        self.value = value


@workflow.defn
class Boom:
    @workflow.run
    async def run(self, kind: str) -> str:
        if kind == "application":
            raise ApplicationError("boom", "detail-1", type="X")
        raise ValueError("plain bug")


@workflow.defn(name="Boom", failure_exception_types=[ValueError])
class BoomFailsOnValueError:
    """Boom, declaring ValueError a failure of the run rather than a bug."""

    @workflow.run
    async def run(self, kind: str) -> str:
        raise ValueError("plain bug")


@workflow.defn
class Sleeper:
    """Sleeps a day; on cancellation either propagates or cleans up and returns."""

    def __init__(self) -> None:
        self.stage = "starting"

    @workflow.run
    async def run(self, catch_cancel: bool) -> str:
        self.stage = "sleeping"
        try:
            await workflow.sleep(timedelta(days=1))
        except asyncio.CancelledError:
            self.stage = "cancelled"
            if catch_cancel:
                return "cleaned up after cancel"
            raise
        self.stage = "woke"
        return "slept a day"

    @workflow.query
    def current(self) -> str:
        return self.stage


@workflow.defn
class AfterTimer:
    """Runs an activity with a side effect after an hour (termination must prevent it)."""

    @workflow.run
    async def run(self, tag: str) -> str:
        await workflow.sleep(timedelta(hours=1))
        return await workflow.execute_activity(
            record_side_effect, tag, start_to_close_timeout=timedelta(seconds=10)
        )


@workflow.defn
class Busy:
    """Leaves one activity (on a queue nobody serves) and one timer pending."""

    @workflow.run
    async def run(self) -> str:
        pending = workflow.start_activity(
            shout, "never", task_queue="nobody-serves-this",
            start_to_close_timeout=timedelta(minutes=5),
        )
        await asyncio.sleep(timedelta(hours=2).total_seconds())
        pending.cancel()
        return "done"


@workflow.defn
class ActivityThenTimer:
    @workflow.run
    async def run(self, text: str) -> str:
        loud = await workflow.execute_activity(
            shout, text, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.sleep(timedelta(minutes=30))
        return loud


# ---------------------------------------------------------------- start / id reuse


async def test_start_and_result(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Echo]):
        handle = await env.client.start_workflow(Echo.run, "hi", id="echo-1", task_queue=TQ)
        assert handle.workflow_id == "echo-1"
        assert handle.run_id
        assert await handle.result(timeout=10) == "hi"
        # execute_workflow is start + result
        assert await env.client.execute_workflow(
            Echo.run, "again", id="echo-2", task_queue=TQ
        ) == "again"
        # the class itself is accepted as well as its run method, and a type name
        by_class = await env.client.start_workflow(Echo, "cls", id="echo-3", task_queue=TQ)
        by_name = await env.client.start_workflow("Echo", "name", id="echo-4", task_queue=TQ)
        assert await by_class.result(timeout=10) == "cls"
        assert await by_name.result(timeout=10) == "name"


async def test_duplicate_running_id_is_rejected(env: WorkflowEnvironment) -> None:
    first = await env.client.start_workflow(Gate.run, False, id="dup", task_queue=TQ)
    for policy in IdReusePolicy:
        with pytest.raises(WorkflowAlreadyStartedError) as info:
            await env.client.start_workflow(
                Gate.run, False, id="dup", task_queue=TQ, id_reuse_policy=policy
            )
        assert info.value.workflow_id == "dup"
        assert info.value.run_id == first.run_id
        assert "already running" in str(info.value)
        assert "get_workflow_handle" in str(info.value)
    # only one run exists and it still completes
    runs = [d for d in await env.client.list_workflows() if d.workflow_id == "dup"]
    assert [d.run_id for d in runs] == [first.run_id]
    await first.signal(Gate.open, "ok")
    async with env.worker(task_queue=TQ, workflows=[Gate]):
        assert await first.result(timeout=10) == "ok"


async def test_id_reuse_policies(env: WorkflowEnvironment) -> None:
    client = env.client
    async with env.worker(task_queue=TQ, workflows=[Gate]):
        # a completed run
        done = await client.start_workflow(Gate.run, False, id="reuse-ok", task_queue=TQ)
        await done.signal(Gate.open, "first")
        assert await done.result(timeout=10) == "first"
        # a failed run
        failed = await client.start_workflow(Gate.run, True, id="reuse-failed", task_queue=TQ)
        await failed.signal(Gate.open, "x")
        with pytest.raises(WorkflowFailureError):
            await failed.result(timeout=10)

        for workflow_id in ("reuse-ok", "reuse-failed"):
            with pytest.raises(WorkflowAlreadyStartedError, match="reject_duplicate") as info:
                await client.start_workflow(
                    Gate.run, False, id=workflow_id, task_queue=TQ,
                    id_reuse_policy=IdReusePolicy.REJECT_DUPLICATE,
                )
            assert info.value.workflow_id == workflow_id

        with pytest.raises(WorkflowAlreadyStartedError, match="completed") as info:
            await client.start_workflow(
                Gate.run, False, id="reuse-ok", task_queue=TQ,
                id_reuse_policy=IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            )
        assert info.value.run_id == done.run_id

        retry = await client.start_workflow(
            Gate.run, False, id="reuse-failed", task_queue=TQ,
            id_reuse_policy=IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )
        assert retry.run_id != failed.run_id
        await retry.signal(Gate.open, "second try")
        assert await retry.result(timeout=10) == "second try"

        again = await client.start_workflow(Gate.run, False, id="reuse-ok", task_queue=TQ)
        assert again.run_id != done.run_id
        await again.signal(Gate.open, "reused")
        assert await again.result(timeout=10) == "reused"

    # handles: latest run by default, a specific run on request
    latest = client.get_workflow_handle("reuse-ok", workflow=Gate)
    assert await latest.result() == "reused"
    assert (await latest.describe()).run_id == again.run_id
    old = client.get_workflow_handle("reuse-ok", run_id=done.run_id)
    assert await old.result() == "first"
    old_failed = client.get_workflow_handle("reuse-failed", run_id=failed.run_id)
    assert (await old_failed.describe()).status == WorkflowStatus.FAILED
    assert (await client.get_workflow_handle("reuse-failed").describe()).status == (
        WorkflowStatus.COMPLETED
    )


async def test_get_workflow_handle(env: WorkflowEnvironment) -> None:
    started = await env.client.start_workflow(Gate.run, False, id="handle-1", task_queue=TQ)
    handle = env.client.get_workflow_handle("handle-1")
    assert handle.run_id is None
    await handle.signal("open", "via a fresh handle")
    async with env.worker(task_queue=TQ, workflows=[Gate]):
        assert await handle.result(timeout=10) == "via a fresh handle"
    assert await started.result() == "via a fresh handle"
    # a closed run accepts no more signals or cancellation, and says why
    with pytest.raises(WorkflowNotFoundError, match="completed, not running"):
        await handle.signal(Gate.open, "too late")
    with pytest.raises(WorkflowNotFoundError, match="not running"):
        await handle.cancel()
    missing = env.client.get_workflow_handle("no-such-workflow")
    with pytest.raises(WorkflowNotFoundError, match="no-such-workflow"):
        await missing.describe()
    with pytest.raises(WorkflowNotFoundError):
        await missing.result(timeout=1)
    with pytest.raises(WorkflowNotFoundError):
        await missing.signal("open", "x")


async def test_result_timeout_leaves_workflow_running(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Gate.run, False, id="slow", task_queue=TQ)
    with pytest.raises(TimeoutError, match="slow"):
        await handle.result(timeout=0.1)
    assert (await handle.describe()).status == WorkflowStatus.RUNNING


# ---------------------------------------------------------------- failure


async def test_application_error_fails_workflow(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Boom]):
        handle = await env.client.start_workflow(Boom.run, "application", id="boom-1",
                                                 task_queue=TQ)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    error = info.value
    assert error.status == "failed"
    assert isinstance(error.cause, ApplicationError)
    assert error.cause.type == "X"
    assert error.cause.message == "boom"
    assert error.cause.details == ("detail-1",)
    assert "Boom" in error.cause.stack or "boom" in error.cause.stack
    assert "boom" in str(error)
    description = await handle.describe()
    assert description.status == WorkflowStatus.FAILED
    assert description.close_time is not None
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert types[-1] == "WorkflowFailed"


async def test_plain_exception_fails_the_task_not_the_run(env: WorkflowEnvironment) -> None:
    """A bug (any exception but a failure type) stalls the run with its workflow task
    failing, visibly, instead of closing it: a deploy that fixes the code resumes it."""
    async with env.worker(task_queue=TQ, workflows=[Boom]):
        handle = await env.client.start_workflow(Boom.run, "bug", id="boom-2", task_queue=TQ)
        description = await wait_until(lambda: _task_failed(handle, attempts=2),
                                       what="the workflow task to fail twice")
    assert description.status == WorkflowStatus.RUNNING
    failure = description.last_workflow_task_failure or ""
    assert failure.startswith("ValueError: plain bug")
    assert "test_client.py" in failure and 'raise ValueError("plain bug")' in failure
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert types == ["WorkflowStarted"]  # nothing of the failed tasks was recorded


async def test_failure_exception_types_fail_the_run(env: WorkflowEnvironment) -> None:
    """Declared per workflow (``failure_exception_types``) or per worker, a type fails
    the run with its type, as an ApplicationError does."""
    async with env.worker(task_queue=TQ, workflows=[BoomFailsOnValueError]):
        handle = await env.client.start_workflow("Boom", "bug", id="boom-3", task_queue=TQ)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    assert getattr(info.value.cause, "type", None) == "ValueError"
    assert "plain bug" in str(info.value.cause)
    async with env.worker(task_queue=TQ, workflows=[Boom],
                          workflow_failure_exception_types=[ValueError]):
        handle = await env.client.start_workflow(Boom.run, "bug", id="boom-4", task_queue=TQ)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    assert getattr(info.value.cause, "type", None) == "ValueError"


async def _task_failed(handle: Any, *, attempts: int) -> Any:
    description = await handle.describe()
    if (description.workflow_task_attempt or 0) > attempts - 1 and \
            description.last_workflow_task_failure:
        return description
    return None


# ---------------------------------------------------------------- cancel / terminate


async def test_cancel(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Sleeper]):
        handle = await env.client.start_workflow(Sleeper.run, False, id="cancel-1",
                                                 task_queue=TQ)
        await wait_until(lambda: _stage_is(handle, "sleeping"), what="workflow asleep")
        await handle.cancel("user asked")
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    assert info.value.status == "canceled"
    assert isinstance(info.value.cause, CancelledFailure)
    description = await handle.describe()
    assert description.status == WorkflowStatus.CANCELED
    assert description.pending_timers == 0
    assert await handle.query(Sleeper.current) == "cancelled"
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert "CancelRequested" in types
    assert types[-1] == "WorkflowCanceled"
    assert "TimerFired" not in types


async def test_cancel_caught_by_workflow_completes(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Sleeper]):
        handle = await env.client.start_workflow(Sleeper.run, True, id="cancel-2",
                                                 task_queue=TQ)
        await wait_until(lambda: _stage_is(handle, "sleeping"), what="workflow asleep")
        await handle.cancel()
        assert await handle.result(timeout=10) == "cleaned up after cancel"
    assert (await handle.describe()).status == WorkflowStatus.COMPLETED


async def test_cancel_before_worker_starts(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Sleeper.run, True, id="cancel-3", task_queue=TQ)
    await handle.cancel()
    async with env.worker(task_queue=TQ, workflows=[Sleeper]):
        # cancellation arrives in the same activation as the start: run() still reaches its
        # first await, so its own except-handler sees the cancellation and cleans up
        assert await handle.result(timeout=10) == "cleaned up after cancel"
    assert (await handle.describe()).status == WorkflowStatus.COMPLETED
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    # the day-long timer was started and cancelled within one activation: no trace of it
    assert types == ["WorkflowStarted", "CancelRequested", "WorkflowTaskCompleted",
                     "WorkflowCompleted"]


async def _stage_is(handle: object, stage: str) -> bool:
    return await handle.query(Sleeper.current) == stage  # type: ignore[attr-defined]


async def test_terminate(env: WorkflowEnvironment) -> None:
    SIDE_EFFECTS.clear()
    async with env.worker(task_queue=TQ, workflows=[AfterTimer], activities=[record_side_effect]):
        handle = await env.client.start_workflow(AfterTimer.run, "t1", id="term-1",
                                                 task_queue=TQ)
        await wait_until(lambda: _has_pending_timer(handle), what="timer started")
        await handle.terminate("operator said stop")
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
        assert info.value.status == "terminated"
        assert isinstance(info.value.cause, TerminatedFailure)
        assert "operator said stop" in str(info.value.cause)
        # let the timer's due time pass: nothing more may run
        await env.sleep(timedelta(hours=2))
        await asyncio.sleep(0.2)
        # a control workflow on the same queue proves the worker is alive and time moved
        control = await env.client.start_workflow(AfterTimer.run, "control", id="term-2",
                                                  task_queue=TQ)
        assert await control.result(timeout=10) == "control"
    assert SIDE_EFFECTS == ["control"]
    description = await handle.describe()
    assert description.status == WorkflowStatus.TERMINATED
    assert description.pending_timers == 0
    assert description.pending_activities == []
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert types[-1] == "WorkflowTerminated"
    assert "TimerFired" not in types and "ActivityScheduled" not in types
    # a closed run accepts no more signals or terminations
    with pytest.raises(WorkflowNotFoundError):
        await handle.terminate("again")


async def _has_pending_timer(handle: object) -> bool:
    return (await handle.describe()).pending_timers == 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------- describe / history / list


async def test_describe_pending_work(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Busy], activities=[shout]):
        handle = await env.client.start_workflow(Busy.run, id="busy", task_queue=TQ,
                                                 execution_timeout=timedelta(days=1))
        await wait_until(lambda: _has_pending_timer(handle), what="timer started")
        description = await handle.describe()
        assert description.workflow_id == "busy"
        assert description.run_id == handle.run_id
        assert description.workflow_type == "Busy"
        assert description.task_queue == TQ
        assert description.status == WorkflowStatus.RUNNING
        assert len(description.pending_activities) == 1
        assert description.pending_timers == 1
        assert description.execution_timeout == timedelta(days=1)
        assert description.close_time is None
        history = await handle.fetch_history()
        assert description.history_length == len(history.events)
        assert [event_type_name(e) for e in history.events] == [
            "WorkflowStarted", "WorkflowTaskCompleted", "ActivityScheduled", "TimerStarted",
        ]
        assert await handle.result(timeout=10) == "done"
    description = await handle.describe()
    assert description.status == WorkflowStatus.COMPLETED
    assert description.pending_activities == []
    assert description.pending_timers == 0
    assert description.close_time is not None
    assert description.close_time >= description.start_time + timedelta(hours=2)


async def test_fetch_history_event_order(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[ActivityThenTimer], activities=[shout]):
        handle = await env.client.start_workflow(ActivityThenTimer.run, "hey", id="hist",
                                                 task_queue=TQ)
        assert await handle.result(timeout=10) == "HEY!"
    history = await handle.fetch_history()
    assert history.workflow_id == "hist"
    assert history.run_id == handle.run_id
    assert [event_type_name(e) for e in history.events] == [
        "WorkflowStarted",
        "WorkflowTaskCompleted",
        "ActivityScheduled",
        "ActivityCompleted",
        "WorkflowTaskCompleted",
        "TimerStarted",
        "TimerFired",
        "WorkflowTaskCompleted",
        "WorkflowCompleted",
    ]
    started = history.events[0]
    assert started.workflow_type == "ActivityThenTimer"  # type: ignore[union-attr]
    assert bytes(started.input) == b'["hey"]'  # type: ignore[union-attr]
    assert bytes(history.events[-1].result) == b'"HEY!"'  # type: ignore[union-attr]
    assert (await handle.describe()).history_length == len(history.events)
    exported = history.to_json()
    assert b'"perdure-history"' in exported and b'"TimerFired"' in exported


async def test_list_workflows_filters(env: WorkflowEnvironment) -> None:
    client = env.client
    async with env.worker(task_queue=TQ, workflows=[Echo, Gate]):
        for i in range(3):
            assert await client.execute_workflow(Echo.run, str(i), id=f"list-echo-{i}",
                                                 task_queue=TQ) == str(i)
        gates = [
            await client.start_workflow(Gate.run, False, id=f"list-gate-{i}", task_queue=TQ)
            for i in range(2)
        ]
        failed = await client.start_workflow(Gate.run, True, id="list-gate-failed",
                                             task_queue=TQ)
        await failed.signal(Gate.open, "x")
        with pytest.raises(WorkflowFailureError):
            await failed.result(timeout=10)

        def ids(descriptions: list) -> set[str]:  # type: ignore[type-arg]
            return {d.workflow_id for d in descriptions}

        assert ids(await client.list_workflows()) == {
            "list-echo-0", "list-echo-1", "list-echo-2", "list-gate-0", "list-gate-1",
            "list-gate-failed",
        }
        assert ids(await client.list_workflows(status=WorkflowStatus.RUNNING)) == {
            "list-gate-0", "list-gate-1",
        }
        assert ids(await client.list_workflows(status="completed")) == {
            "list-echo-0", "list-echo-1", "list-echo-2",
        }
        assert ids(await client.list_workflows(status=WorkflowStatus.FAILED)) == {
            "list-gate-failed",
        }
        assert ids(await client.list_workflows(workflow_type="Gate")) == {
            "list-gate-0", "list-gate-1", "list-gate-failed",
        }
        assert ids(await client.list_workflows(workflow_type="Gate", status="running")) == {
            "list-gate-0", "list-gate-1",
        }
        assert await client.list_workflows(workflow_type="NoSuchType") == []
        assert len(await client.list_workflows(limit=2)) == 2
        with pytest.raises(ValueError):
            await client.list_workflows(status="sleeping")
        for gate in gates:
            await gate.signal(Gate.open, "bye")
            assert await gate.result(timeout=10) == "bye"
    assert await client.list_workflows(status=WorkflowStatus.RUNNING) == []


# ---------------------------------------------------------------- timeouts, signal-with-start


async def test_execution_timeout(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Sleeper]):
        handle = await env.client.start_workflow(
            Sleeper.run, False, id="exec-timeout", task_queue=TQ,
            execution_timeout=timedelta(hours=1),
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    assert info.value.status == "timed_out"
    assert isinstance(info.value.cause, TimeoutFailure)
    assert info.value.cause.timeout_type == "execution"
    description = await handle.describe()
    assert description.status == WorkflowStatus.TIMED_OUT
    assert description.pending_timers == 0
    assert description.close_time is not None
    elapsed = description.close_time - description.start_time
    assert timedelta(hours=1) <= elapsed < timedelta(days=1)
    types = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert types[-1] == "WorkflowTimedOut"


async def test_execution_timeout_not_hit_when_workflow_finishes(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Sleeper]):
        handle = await env.client.start_workflow(
            Sleeper.run, False, id="exec-ok", task_queue=TQ, execution_timeout=timedelta(days=2),
        )
        assert await handle.result(timeout=10) == "slept a day"
    assert (await handle.describe()).status == WorkflowStatus.COMPLETED


async def test_signal_with_start(env: WorkflowEnvironment) -> None:
    client = env.client
    # not running yet: starts it, and the signal is there from the first activation
    first = await client.signal_with_start(Gate.run, Gate.open, ("from start",), False,
                                           id="sws", task_queue=TQ)
    description = await first.describe()
    assert description.status == WorkflowStatus.RUNNING
    assert description.pending_events == 1
    async with env.worker(task_queue=TQ, workflows=[Gate]):
        assert await first.result(timeout=10) == "from start"
        # closed: signal_with_start begins a new run
        second = await client.signal_with_start(Gate.run, "open", ("second run",), False,
                                                id="sws", task_queue=TQ)
        assert second.run_id != first.run_id
        assert await second.result(timeout=10) == "second run"

        # running: the signal goes to the existing run
        running = await client.start_workflow(Gate.run, False, id="sws-2", task_queue=TQ)
        again = await client.signal_with_start(Gate.run, Gate.open, ("to the running one",),
                                               True, id="sws-2", task_queue=TQ)
        assert again.run_id == running.run_id
        # the running run's own input (fail=False) is kept: it completes
        assert await running.result(timeout=10) == "to the running one"
        types = [event_type_name(e) for e in (await running.fetch_history()).events]
        assert types.count("WorkflowStarted") == 1
        assert types.count("SignalReceived") == 1


async def test_activity_failure_reaches_client(env: WorkflowEnvironment) -> None:
    """An activity error after retries fails the workflow with an ActivityError cause."""

    @activity.defn(name="always_fails")
    async def always_fails() -> None:
        raise ApplicationError("nope", type="Fatal", non_retryable=True)

    @workflow.defn(name="CallsFailing")
    class CallsFailing:
        @workflow.run
        async def run(self) -> None:
            await workflow.execute_activity(always_fails,
                                            start_to_close_timeout=timedelta(seconds=5))

    async with env.worker(task_queue=TQ, workflows=[CallsFailing], activities=[always_fails]):
        handle = await env.client.start_workflow(CallsFailing.run, id="act-fail", task_queue=TQ)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    cause = info.value.cause
    assert isinstance(cause, ActivityError)
    assert cause.activity_type == "always_fails"
    assert isinstance(cause.__cause__, ApplicationError)
    assert cause.__cause__.type == "Fatal"
