"""Continue-as-new: a run closes and a new run of the same id carries on, fresh history."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from perdure import (
    ApplicationError,
    WorkerOptions,
    WorkflowFailureError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.history import (
    SignalReceived,
    WorkflowContinuedAsNew,
    WorkflowStarted,
    encode_event,
    event_type_name,
)
from perdure.store._records import WorkflowTaskCompletion
from perdure.testing import WorkflowEnvironment

TQ = "continue-as-new"


@activity.defn
async def add_one(value: int) -> int:
    return value + 1


@workflow.defn
class Counter:
    """Each run adds one through an activity, then continues as new until ``runs``."""

    @workflow.run
    async def run(self, value: int, run_no: int, runs: int) -> dict[str, Any]:
        value = await workflow.execute_activity(add_one, value, start_to_close_timeout=10)
        if run_no < runs:
            workflow.continue_as_new(value, run_no + 1, runs)
        return {"value": value, "run_no": run_no, "history": workflow.info().history_length}


@workflow.defn
class Accumulator:
    """Collects ``add`` signals; continues as new after each batch, carrying them."""

    def __init__(self) -> None:
        self.new: list[str] = []
        self.finish = False

    @workflow.run
    async def run(self, items: list[str], run_no: int) -> dict[str, Any]:
        await workflow.wait_condition(lambda: bool(self.new) or self.finish)
        carried = items + self.new
        if self.finish:
            return {"items": carried, "runs": run_no}
        workflow.continue_as_new(carried, run_no + 1)

    @workflow.signal
    def add(self, item: str) -> None:
        self.new.append(item)

    @workflow.signal
    def done(self) -> None:
        self.finish = True

    @workflow.query
    def pending(self) -> list[str]:
        return self.new


@workflow.defn
class ParentOfCounter:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        result: dict[str, Any] = await workflow.execute_child_workflow(
            Counter.run, 0, 1, 4, id="counting-child")
        return result


@workflow.defn
class FailsAfterContinuing:
    @workflow.run
    async def run(self, run_no: int) -> None:
        if run_no < 3:
            workflow.continue_as_new(run_no + 1)
        raise ApplicationError(f"run {run_no} failed")


@workflow.defn
class LongSession:
    """Does steps until its history is long enough that continuing as new is suggested."""

    @workflow.run
    async def run(self, done: int, total: int) -> dict[str, Any]:
        while done < total:
            done = await workflow.execute_activity(add_one, done, start_to_close_timeout=10)
            info = workflow.info()
            if info.continue_as_new_suggested and done < total:
                workflow.continue_as_new(done, total)
        info = workflow.info()
        return {"done": done, "events": info.history_length, "bytes": info.history_size}


ALL = [Counter, Accumulator, ParentOfCounter, FailsAfterContinuing, LongSession]


async def test_five_runs_carry_state_and_result_follows_chain(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL, activities=[add_one]):
        handle = await env.client.start_workflow(Counter.run, 10, 1, 5, id="counter",
                                                 task_queue=TQ)
        result = await handle.result(timeout=20)
    assert result["value"] == 15 and result["run_no"] == 5
    # the last run's history is fresh: started, activity, completion only
    assert result["history"] < 10
    runs = await env.client.list_workflows(status="continued_as_new")
    assert len(runs) == 4 and {r.workflow_id for r in runs} == {"counter"}
    latest = await env.client.get_workflow_handle("counter").describe()
    assert latest.status == WorkflowStatus.COMPLETED and latest.run_id != handle.run_id
    first = (await handle.fetch_history()).events
    assert isinstance(first[-1], WorkflowContinuedAsNew)
    last = (await env.client.get_workflow_handle("counter").fetch_history()).events
    assert isinstance(last[0], WorkflowStarted)
    assert last[0].continued_from_run_id is not None
    assert bytes(last[0].input) == b"[14,5,5]"


async def test_signals_follow_the_chain_and_none_is_lost(env: WorkflowEnvironment) -> None:
    sent = [f"item-{i}" for i in range(12)]
    async with env.worker(task_queue=TQ, workflows=ALL):
        # a handle to the FIRST run: its signals must reach whichever run is current
        handle = await env.client.start_workflow(Accumulator.run, [], 1, id="acc",
                                                 task_queue=TQ)
        latest = env.client.get_workflow_handle("acc")
        for index, item in enumerate(sent):
            before = (await latest.describe()).run_id
            await handle.signal(Accumulator.add, item)
            if index % 3 == 2:  # now and then, let the chain move on before the next one
                for _ in range(500):
                    if (await latest.describe()).run_id != before:
                        break
                    await env.sleep(0.01)
        await handle.signal(Accumulator.done)
        result = await handle.result(timeout=20)
    assert result["items"] == sent
    assert result["runs"] >= 4


async def test_signal_arriving_during_the_switch_is_not_lost(env: WorkflowEnvironment) -> None:
    """A signal committed after the worker read the run's inbox but before its
    continue-as-new commit: the commit must be refused and the run see the signal."""
    store = env.client.store
    original = store.complete_workflow_task
    injected: list[str] = []

    async def complete_with_a_signal_first(completion: WorkflowTaskCompletion) -> bool:
        if completion.close_status == "continued_as_new" and not injected:
            injected.append(completion.run_id)
            event = SignalReceived(name="add", args=msgspec.Raw(b'["during-switch"]'))
            await store.deliver_event(completion.workflow_id, completion.run_id,
                                      encode_event(event))
        return await original(completion)

    store.complete_workflow_task = complete_with_a_signal_first  # type: ignore[method-assign]
    try:
        async with env.worker(task_queue=TQ, workflows=ALL):
            handle = await env.client.start_workflow(Accumulator.run, [], 1, id="switch",
                                                     task_queue=TQ)
            await handle.signal(Accumulator.add, "first")
            # wait for the chain to move on, then finish it
            for _ in range(500):
                if (await env.client.get_workflow_handle("switch").describe()).run_id \
                        != handle.run_id:
                    break
                await env.sleep(0.01)
            await handle.signal(Accumulator.done)
            result = await handle.result(timeout=20)
    finally:
        store.complete_workflow_task = original  # type: ignore[method-assign]
    assert injected == [handle.run_id]
    assert result["items"] == ["first", "during-switch"]
    # the first run handled the late signal itself before it continued as new
    events = (await handle.fetch_history()).events
    names = [event_type_name(e) for e in events]
    assert names.count("SignalReceived") == 2
    assert names[-1] == "WorkflowContinuedAsNew"


async def test_child_continuing_as_new_reports_only_its_final_run(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL, activities=[add_one]):
        result = await env.client.execute_workflow(ParentOfCounter.run, id="parent-of-counter",
                                                   task_queue=TQ)
    assert result["value"] == 4 and result["run_no"] == 4
    children = await env.client.list_workflows(parent_workflow_id="parent-of-counter")
    assert sorted(c.status for c in children) == sorted(
        [WorkflowStatus.COMPLETED] + [WorkflowStatus.CONTINUED_AS_NEW] * 3)
    parent_events = (await env.client.get_workflow_handle("parent-of-counter")
                     .fetch_history()).events
    assert [event_type_name(e) for e in parent_events].count("ChildWorkflowCompleted") == 1


async def test_failure_after_continuing_is_reported_through_first_handle(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=ALL):
        handle = await env.client.start_workflow(FailsAfterContinuing.run, 1, id="fails",
                                                 task_queue=TQ)
        with pytest.raises(WorkflowFailureError, match="run 3 failed"):
            await handle.result(timeout=20)


async def test_long_history_is_reported_and_warned(
    env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture,
) -> None:
    options = WorkerOptions(history_warning_events=30, history_warning_bytes=10**9)
    with caplog.at_level(logging.WARNING, logger="perdure.worker"):
        async with env.worker(task_queue=TQ, workflows=ALL, activities=[add_one],
                              options=options):
            handle = await env.client.start_workflow(LongSession.run, 0, 40, id="long",
                                                     task_queue=TQ)
            result = await handle.result(timeout=30)
    assert result["done"] == 40
    assert 0 < result["events"] <= 30 and result["bytes"] > 0
    # each activity adds 3 events: the first run suggested continuing after ~10 steps
    chain = await env.client.list_workflows(status="continued_as_new")
    assert len(chain) >= 3
    warnings = [r.getMessage() for r in caplog.records if "long history" in r.getMessage()]
    assert warnings and "continue it as new" in warnings[0]
    # by bytes as well
    options = WorkerOptions(history_warning_events=10**9, history_warning_bytes=2_000)
    async with env.worker(task_queue=TQ, workflows=ALL, activities=[add_one],
                          options=options):
        handle = await env.client.start_workflow(LongSession.run, 0, 40, id="long-bytes",
                                                 task_queue=TQ)
        result = await handle.result(timeout=30)
    assert result["done"] == 40 and result["bytes"] < 2_000 + 400
