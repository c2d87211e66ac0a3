"""A malformed inbound message never fails or wedges a run: refused at the client when it
knows the handler, dropped (logged, recorded as a ``signal_dropped`` marker) or rejected
by the worker when it does not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from perdure import InvalidArgumentError, UpdateRejectedError, WorkflowStatus, workflow
from perdure.history import MarkerRecorded, SignalReceived
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "malformed"


@workflow.defn
class Tally:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.done = False

    @workflow.run
    async def run(self, label: str) -> list[str]:
        await workflow.wait_condition(lambda: self.done)
        return [label, *self.items]

    @workflow.signal
    def add(self, item: str, count: int = 1) -> None:
        self.items.extend([item] * count)

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.update
    def rename(self, index: int, item: str) -> str:
        previous, self.items[index] = self.items[index], item
        return previous


async def test_a_signal_that_does_not_fit_is_dropped_not_fatal(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Tally]):
        handle = await env.client.start_workflow(Tally.run, "t", id="drops", task_queue=TQ)
        await handle.signal("add")                      # a missing argument
        await handle.signal("add", "x", 2, "extra")     # an argument too many
        await handle.signal("add", {"not": "a str"})    # a wrong type
        await handle.signal("add", "ok")
        await wait_until(lambda: _signals_processed(handle), what="the four signals processed")
        description = await handle.describe()
        assert description.status == WorkflowStatus.RUNNING
        assert description.last_workflow_task_failure is None
        await handle.signal(Tally.finish)
        assert await handle.result(timeout=10) == ["t", "ok"]
    history = (await handle.fetch_history()).events
    assert sum(isinstance(e, SignalReceived) for e in history) == 5
    dropped = [json.loads(bytes(e.value)) for e in history
               if isinstance(e, MarkerRecorded) and e.name == "signal_dropped"]
    assert [d["signal"] for d in dropped] == ["add", "add", "add"]
    assert "at least 1 argument" in dropped[0]["reason"]
    assert "at most 2 argument" in dropped[1]["reason"]
    assert "Expected `str`" in dropped[2]["reason"]


async def test_the_client_refuses_what_the_handler_cannot_take(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Tally.run, "t", id="refused", task_queue=TQ)
    for args in [(), ("x", 2, "extra"), ({"not": "a str"},), ("x", "two")]:
        with pytest.raises(InvalidArgumentError, match="signal 'add'"):
            await handle.signal(Tally.add, *args)
    with pytest.raises(InvalidArgumentError, match="update 'rename'"):
        await handle.execute_update(Tally.rename, "zero", "y")
    with pytest.raises(InvalidArgumentError, match="workflow 'Tally'"):
        await env.client.start_workflow(Tally.run, 7, id="refused-2", task_queue=TQ)
    with pytest.raises(InvalidArgumentError, match="signal 'add'"):
        await env.client.signal_with_start(Tally.run, Tally.add, (), "t", id="refused-3",
                                           task_queue=TQ)
    # nothing of the refused calls was stored
    assert (await handle.describe()).pending_events == 0
    assert [d.workflow_id for d in await env.client.list_workflows()] == ["refused"]


async def test_an_update_that_does_not_fit_is_rejected(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Tally]):
        handle = await env.client.start_workflow(Tally.run, "t", id="upd", task_queue=TQ)
        await handle.signal(Tally.add, "a")
        with pytest.raises(UpdateRejectedError, match="at least 2 argument"):
            await handle.execute_update("rename", 0)
        with pytest.raises(UpdateRejectedError):
            await handle.execute_update("rename", "zero", "b")
        assert await handle.execute_update("rename", 0, "b") == "a"
        await handle.signal(Tally.finish)
        assert await handle.result(timeout=10) == ["t", "b"]


async def _signals_processed(handle: Any) -> bool:
    from perdure.history import event_type_name

    history = (await handle.fetch_history()).events
    return sum(event_type_name(e) == "SignalReceived" for e in history) >= 4 and \
        (await handle.describe()).pending_events == 0


async def test_a_start_by_name_with_the_wrong_count_fails_the_run(
    env: WorkflowEnvironment,
) -> None:
    """Started by type name (another process, the CLI), the client cannot check the
    count: the run fails at once, as an input that does not decode does, rather than
    stalling its first task for ever."""
    from perdure import WorkflowFailureError

    async with env.worker(task_queue=TQ, workflows=[Tally]):
        handle = await env.client.start_workflow("Tally", "a", "b", id="by-name",
                                                 task_queue=TQ)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    assert "takes at most 1 argument" in str(info.value.cause)
