"""Signals and queries against the real SQLite store."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from perdure import (
    QueryRejectedError,
    QueryTimeoutError,
    UnknownHandlerError,
    WorkflowStatus,
    workflow,
)
from perdure.history import SignalReceived, event_type_name
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "signals-queries"


@workflow.defn
class Inbox:
    """Collects ``add`` signals until ``close`` arrives; answers queries about them."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.closed = False

    @workflow.run
    async def run(self, greeting: str) -> list[str]:
        await workflow.wait_condition(lambda: self.closed)
        return [greeting, *self.items]

    @workflow.signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @workflow.signal
    def close(self) -> None:
        self.closed = True

    @workflow.query
    def status(self) -> str:
        return f"{len(self.items)} items: {','.join(self.items)}"

    @workflow.query
    def item(self, index: int) -> str:
        return self.items[index]

    @workflow.query
    def broken(self) -> str:
        raise ValueError("this query handler is broken")


@workflow.defn(dynamic_signals=True)
class LateHandler:
    """Registers its signal handler only after a durable timer fires."""

    def __init__(self) -> None:
        self.received: list[int] = []

    @workflow.run
    async def run(self, expected: int) -> list[int]:
        await workflow.sleep(timedelta(hours=1))
        workflow.set_signal_handler("late", self.received.append)
        await workflow.wait_condition(lambda: len(self.received) >= expected)
        return self.received

    @workflow.query
    def seen(self) -> list[int]:
        return self.received


# ---------------------------------------------------------------- signals


async def test_signal_is_durable_before_any_worker_runs(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Inbox.run, "hello", id="inbox-1", task_queue=TQ)
    await handle.signal(Inbox.add, "apple")
    await handle.signal(Inbox.close)

    # nothing ran yet: the signals sit in the store, not in any process
    description = await handle.describe()
    assert description.status == WorkflowStatus.RUNNING
    assert description.pending_events == 2
    assert description.history_length == 1

    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        assert await handle.result(timeout=10) == ["hello", "apple"]

    history = await handle.fetch_history()
    signals = [e for e in history.events if isinstance(e, SignalReceived)]
    assert [s.name for s in signals] == ["add", "close"]
    assert (await handle.describe()).pending_events == 0


async def test_signal_survives_worker_restart(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        handle = await env.client.start_workflow(Inbox.run, "hi", id="inbox-2", task_queue=TQ)
        await handle.signal(Inbox.add, "one")
        await wait_until(lambda: _history_has(handle, "SignalReceived", 1),
                         what="first signal processed")
        assert await handle.query("status") == "1 items: one"
    # worker gone: signal anyway; a brand-new worker (empty cache) replays and continues
    await handle.signal(Inbox.add, "two")
    await handle.signal("close")
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        assert await handle.result(timeout=10) == ["hi", "one", "two"]


async def test_signal_order_is_preserved(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Inbox.run, "x", id="inbox-order", task_queue=TQ)
    before = [f"pre-{i}" for i in range(5)]
    for item in before:
        await handle.signal(Inbox.add, item)
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        during = [f"live-{i}" for i in range(10)]
        for item in during:
            await handle.signal("add", item)
        await handle.signal(Inbox.close)
        assert await handle.result(timeout=10) == ["x", *before, *during]


async def test_signals_before_handler_exists_are_buffered(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(LateHandler.run, 3, id="late-1", task_queue=TQ)
    # no worker has registered LateHandler yet, so the dynamic name is accepted
    for value in (10, 20, 30):
        await handle.signal("late", value)
    async with env.worker(task_queue=TQ, workflows=[LateHandler]):
        assert await handle.result(timeout=10) == [10, 20, 30]
    history = await handle.fetch_history()
    types = [event_type_name(e) for e in history.events]
    # the signals were recorded before the timer fired, i.e. before any handler existed
    assert types.index("SignalReceived") < types.index("TimerFired")


async def test_signals_while_handler_missing_with_worker_running(
    env: WorkflowEnvironment,
) -> None:
    """Signals that arrive while the workflow sleeps (no handler yet) wait for the handler."""
    async with env.worker(task_queue=TQ, workflows=[LateHandler]):
        handle = await env.client.start_workflow(LateHandler.run, 2, id="late-2", task_queue=TQ)
        await wait_until(
            lambda: _pending_timers(handle), what="the workflow to start its one-hour timer"
        )
        # signal_with_start on a running id delivers to that run (and skips the name check)
        same = await env.client.signal_with_start(
            LateHandler.run, "late", (1,), 2, id="late-2", task_queue=TQ
        )
        assert same.run_id == handle.run_id
        await env.client.signal_with_start(
            LateHandler.run, "late", (2,), 2, id="late-2", task_queue=TQ
        )
        await wait_until(lambda: _history_has(handle, "SignalReceived", 2),
                         what="both signals recorded")
        assert await handle.query(LateHandler.seen) == []
        assert await handle.result(timeout=10) == [1, 2]


async def test_signal_by_name_to_dynamic_handler_after_registration(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[LateHandler]):
        handle = await env.client.start_workflow(LateHandler.run, 1, id="late-3", task_queue=TQ)
        await handle.signal("late", 5)
        assert await handle.result(timeout=10) == [5]


async def _pending_timers(handle: object) -> bool:
    description = await handle.describe()  # type: ignore[attr-defined]
    return description.pending_timers == 1


async def _history_has(handle: object, event_type: str, count: int) -> bool:
    history = await handle.fetch_history()  # type: ignore[attr-defined]
    return sum(event_type_name(e) == event_type for e in history.events) >= count


# ---------------------------------------------------------------- queries


async def test_query_by_method_needs_no_worker(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        handle = await env.client.start_workflow(Inbox.run, "q", id="query-1", task_queue=TQ)
        await handle.signal(Inbox.add, "a")
        await handle.signal(Inbox.add, "b")
        await wait_until(lambda: _history_has(handle, "SignalReceived", 2),
                         what="signals recorded")
    # no worker is running now: the client replays the history itself
    assert await handle.query(Inbox.status) == "2 items: a,b"
    assert await handle.query(Inbox.item, 1) == "b"
    # the same answer from a fresh handle
    other = env.client.get_workflow_handle("query-1")
    assert await other.query(Inbox.status) == "2 items: a,b"


async def test_query_by_method_on_never_run_workflow(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Inbox.run, "q", id="query-0", task_queue=TQ)
    # the run method has not executed on any worker, yet its initial state is queryable
    assert await handle.query(Inbox.status) == "0 items: "


async def test_query_by_name_through_worker(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        handle = await env.client.start_workflow(Inbox.run, "q", id="query-2", task_queue=TQ)
        await handle.signal(Inbox.add, "first")
        await wait_until(lambda: _history_has(handle, "SignalReceived", 1),
                         what="signal recorded")
        assert await handle.query("status") == "1 items: first"
        assert await handle.query("item", 0) == "first"
        # both paths give the same answer
        assert await handle.query("status") == await handle.query(Inbox.status)
        await handle.signal(Inbox.close)
        assert await handle.result(timeout=10) == ["q", "first"]
    # a closed workflow can still be queried (by method, without a worker)
    assert await handle.query(Inbox.status) == "1 items: first"


async def test_query_by_name_without_worker_times_out(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Inbox.run, "q", id="query-3", task_queue="no-one")
    with pytest.raises(QueryTimeoutError) as info:
        await handle.query("status", timeout=0.3)
    message = str(info.value)
    assert "'no-one'" in message
    assert "query-3" in message
    assert "Inbox.status" in message or "MyWorkflow.my_query" in message
    # nothing was corrupted: a worker on that queue still runs it
    await handle.signal(Inbox.close)
    async with env.worker(task_queue="no-one", workflows=[Inbox]):
        assert await handle.result(timeout=10) == ["q"]


async def test_query_handler_that_raises_is_rejected(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        handle = await env.client.start_workflow(Inbox.run, "q", id="query-4", task_queue=TQ)
        await wait_until(lambda: _history_has(handle, "WorkflowTaskCompleted", 1),
                         what="first workflow task")
        with pytest.raises(QueryRejectedError) as by_name:
            await handle.query("broken")
        assert "this query handler is broken" in str(by_name.value)
        with pytest.raises(QueryRejectedError) as by_method:
            await handle.query(Inbox.broken)
        assert "this query handler is broken" in str(by_method.value)
        # an index that does not exist: the handler's IndexError is a rejection too
        with pytest.raises(QueryRejectedError):
            await handle.query("item", 5)
        # the workflow is unharmed
        await handle.signal(Inbox.add, "z")
        await handle.signal(Inbox.close)
        assert await handle.result(timeout=10) == ["q", "z"]
    assert (await handle.describe()).status == WorkflowStatus.COMPLETED


async def test_query_does_not_change_state(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        handle = await env.client.start_workflow(Inbox.run, "q", id="query-5", task_queue=TQ)
        await handle.signal(Inbox.add, "a")
        await wait_until(lambda: _history_has(handle, "SignalReceived", 1),
                         what="signal recorded")
        length = (await handle.describe()).history_length
        for _ in range(3):
            assert await handle.query("status") == "1 items: a"
            assert await handle.query(Inbox.status) == "1 items: a"
        assert (await handle.describe()).history_length == length


# ---------------------------------------------------------------- unknown names


async def test_unknown_signal_and_query_names(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        handle = await env.client.start_workflow(Inbox.run, "q", id="unknown-1", task_queue=TQ)
        with pytest.raises(UnknownHandlerError) as sig:
            await handle.signal("nope", 1)
        message = str(sig.value)
        assert "'nope'" in message and "'Inbox'" in message
        assert "add" in message and "close" in message
        with pytest.raises(UnknownHandlerError) as query:
            await handle.query("nope")
        message = str(query.value)
        assert "'nope'" in message
        for name in ("status", "item", "broken"):
            assert name in message
        # the rejected signal never reached the store
        history = await handle.fetch_history()
        assert not [e for e in history.events if isinstance(e, SignalReceived)]
        assert (await handle.describe()).pending_events == 0
        await handle.signal(Inbox.close)
        assert await handle.result(timeout=10) == ["q"]


async def test_unknown_names_known_after_worker_stopped(env: WorkflowEnvironment) -> None:
    """The workflow type's interface outlives the worker that registered it."""
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        pass
    handle = await env.client.start_workflow(Inbox.run, "q", id="unknown-2", task_queue=TQ)
    with pytest.raises(UnknownHandlerError):
        await handle.signal("nope")
    with pytest.raises(UnknownHandlerError):
        await handle.query("nope", timeout=0.2)


async def test_passing_a_non_handler_method(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Inbox.run, "q", id="unknown-3", task_queue=TQ)
    with pytest.raises(UnknownHandlerError, match=r"@workflow\.signal"):
        await handle.signal(Inbox.status)
    with pytest.raises(UnknownHandlerError, match=r"@workflow\.query"):
        await handle.query(Inbox.add)
    with pytest.raises(UnknownHandlerError, match="LateHandler"):
        await handle.query(LateHandler.seen)


async def test_concurrent_signals_from_many_tasks(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Inbox]):
        handle = await env.client.start_workflow(Inbox.run, "c", id="inbox-many", task_queue=TQ)
        await asyncio.gather(*(handle.signal(Inbox.add, str(i)) for i in range(20)))
        await handle.signal(Inbox.close)
        result = await handle.result(timeout=10)
    assert result[0] == "c"
    assert sorted(result[1:], key=int) == [str(i) for i in range(20)]
    history = await handle.fetch_history()
    recorded = [e for e in history.events if isinstance(e, SignalReceived) and e.name == "add"]
    assert len(recorded) == 20
