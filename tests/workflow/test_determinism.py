"""Non-determinism detection: replaying an old history with changed workflow code."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from perdure import activity, workflow
from perdure._errors import NondeterminismError
from perdure.history import WorkflowCompleted

from ._harness import Run, completed, describe, fired, new_instance, signal

_SOURCE = Path(__file__).read_text().splitlines()


def line_of(marker: str) -> int:
    """The line number of the (unique) source line ending in ``# <marker>``."""
    lines = [n for n, text in enumerate(_SOURCE, 1) if text.rstrip().endswith(f"# {marker}")]
    assert len(lines) == 1, marker
    return lines[0]


def where(marker: str, function: str = "run") -> str:
    return f"{Path(__file__).name}:{line_of(marker)} in {function}"


@activity.defn
async def reserve(item: str) -> str:
    return item


@activity.defn
async def charge(item: str) -> str:
    return item


@activity.defn
async def ship(item: str) -> str:
    return item


@activity.defn
async def audit(item: str) -> str:
    return item


@activity.defn(name="reserve-v2")
async def reserve_renamed(item: str) -> str:
    return item


# --------------------------------------------------------------------------- the recorded version


@workflow.defn(name="Order")
class OrderV1:
    def __init__(self) -> None:
        self.status = "new"

    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        c = await workflow.execute_activity(ship, "c")
        self.status = "shipped"
        return [a, b, c]


def order_history() -> Run:
    run = Run(OrderV1)
    run.start()
    run.activate(completed(1, "A"))
    run.activate(completed(2, "B"))
    run.activate(fired(3), advance=10)
    run.activate(completed(4, "C"))
    assert run.result == ["A", "B", "C"]
    return run


def test_recorded_history_layout() -> None:
    """The event numbers the tests below refer to."""
    run = order_history()
    assert [(n, type(e).__name__, getattr(e, "seq", None)) for n, e in
            enumerate(run.history, 1)] == [
        (1, "WorkflowStarted", None),
        (2, "WorkflowTaskCompleted", None),
        (3, "ActivityScheduled", 1),
        (4, "ActivityCompleted", 1),
        (5, "WorkflowTaskCompleted", None),
        (6, "ActivityScheduled", 2),
        (7, "ActivityCompleted", 2),
        (8, "WorkflowTaskCompleted", None),
        (9, "TimerStarted", 3),
        (10, "TimerFired", 3),
        (11, "WorkflowTaskCompleted", None),
        (12, "ActivityScheduled", 4),
        (13, "ActivityCompleted", 4),
        (14, "WorkflowTaskCompleted", None),
        (15, "WorkflowCompleted", None),
    ]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- incompatible changes


@workflow.defn(name="Order")
class ActivityAdded:
    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        x = await workflow.execute_activity(audit, "x")  # ADDED-ACTIVITY
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        c = await workflow.execute_activity(ship, "c")
        return [a, x, b, c]


@workflow.defn(name="Order")
class ActivityRemoved:
    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        await workflow.sleep(10)  # SLEEP-AFTER-REMOVED
        c = await workflow.execute_activity(ship, "c")
        return [a, c]


@workflow.defn(name="Order")
class ActivitiesReordered:
    @workflow.run
    async def run(self) -> list[str]:
        b = await workflow.execute_activity(charge, "b")  # REORDERED
        a = await workflow.execute_activity(reserve, "a")
        await workflow.sleep(10)
        c = await workflow.execute_activity(ship, "c")
        return [a, b, c]


@workflow.defn(name="Order")
class ActivityRenamed:
    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve_renamed, "a")  # RENAMED
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        c = await workflow.execute_activity(ship, "c")
        return [a, b, c]


@workflow.defn(name="Order")
class TimerAdded:
    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        await asyncio.sleep(5)  # ADDED-TIMER
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        c = await workflow.execute_activity(ship, "c")
        return [a, b, c]


@workflow.defn(name="Order")
class ActivitySwappedForTimer:
    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        await workflow.sleep(3)  # TIMER-INSTEAD-OF-ACTIVITY
        return [a, b]


@workflow.defn(name="Order")
class TimerSwappedForActivity:
    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        b = await workflow.execute_activity(charge, "b")
        await workflow.execute_activity(audit, "instead of sleeping")  # ACTIVITY-INSTEAD-OF-TIMER
        c = await workflow.execute_activity(ship, "c")
        return [a, b, c]


@workflow.defn(name="Order")
class ParallelActivityAdded:
    @workflow.run
    async def run(self) -> list[str]:
        a, x = await asyncio.gather(
            workflow.execute_activity(reserve, "a"),
            workflow.execute_activity(audit, "x"),  # PARALLEL-ADDED
        )
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        c = await workflow.execute_activity(ship, "c")
        return [a, x, b, c]


@workflow.defn(name="Order")
class EndsEarly:
    @workflow.run  # ENDS-EARLY
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        return [a, b]


@workflow.defn(name="Order")
class WaitsInstead:
    @workflow.run
    async def run(self) -> list[str]:
        a = await workflow.execute_activity(reserve, "a")
        b = await workflow.execute_activity(charge, "b")
        await workflow.wait_condition(lambda: False)
        return [a, b]


INCOMPATIBLE: list[tuple[type, int, str, str]] = [
    # (new code, history event, recorded, produced)
    (ActivityAdded, 6, "ActivityScheduled(seq=2, activity_type='charge')",
     f"ActivityScheduled(seq=2, activity_type='audit') at .*{where('ADDED-ACTIVITY')}"),
    (ActivityRemoved, 6, "ActivityScheduled(seq=2, activity_type='charge')",
     f"TimerStarted(seq=2, duration=10s) at .*{where('SLEEP-AFTER-REMOVED')}"),
    (ActivitiesReordered, 3, "ActivityScheduled(seq=1, activity_type='reserve')",
     f"ActivityScheduled(seq=1, activity_type='charge') at .*{where('REORDERED')}"),
    (ActivityRenamed, 3, "ActivityScheduled(seq=1, activity_type='reserve')",
     f"ActivityScheduled(seq=1, activity_type='reserve-v2') at .*{where('RENAMED')}"),
    (TimerAdded, 6, "ActivityScheduled(seq=2, activity_type='charge')",
     f"TimerStarted(seq=2, duration=5s) at .*{where('ADDED-TIMER')}"),
    (ActivitySwappedForTimer, 12, "ActivityScheduled(seq=4, activity_type='ship')",
     f"TimerStarted(seq=4, duration=3s) at .*{where('TIMER-INSTEAD-OF-ACTIVITY')}"),
    (TimerSwappedForActivity, 9, "TimerStarted(seq=3, duration=10s)",
     f"ActivityScheduled(seq=3, activity_type='audit') at .*{where('ACTIVITY-INSTEAD-OF-TIMER')}"),
    (EndsEarly, 12, "ActivityScheduled(seq=4, activity_type='ship')",
     f"WorkflowCompleted() at .*{where('ENDS-EARLY')}"),
    (WaitsInstead, 9, "TimerStarted(seq=3, duration=10s)",
     "nothing (the code no longer issues this command)"),
]


@pytest.mark.parametrize(
    ("new_code", "event", "recorded", "produced"),
    INCOMPATIBLE,
    ids=[case[0].__name__ for case in INCOMPATIBLE],
)
def test_incompatible_change_is_detected(
    new_code: type, event: int, recorded: str, produced: str
) -> None:
    run = order_history()
    with pytest.raises(NondeterminismError) as caught:
        run.replay(new_code)
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0] == (
        f"workflow 'Order' (id 'wf-1', run run-1) is not deterministic at history event {event}:"
    )
    assert lines[1] == f"  recorded: {recorded}"
    assert re.fullmatch(r"  produced: " + _pattern(produced), lines[2]), lines[2]


def _pattern(expected: str) -> str:
    """Escape everything but the ``.*`` that stands for the directory."""
    return ".*".join(re.escape(part) for part in expected.split(".*"))


def test_command_added_where_history_has_none_is_detected() -> None:
    run = order_history()
    with pytest.raises(NondeterminismError) as caught:
        run.replay(ParallelActivityAdded)
    lines = str(caught.value).splitlines()
    # the new command would come after event 3, the last command of that activation
    assert "after history event 3" in lines[0]
    assert lines[1] == "  recorded: nothing (history has no further command here)"
    assert re.fullmatch(
        _pattern(f"  produced: ActivityScheduled(seq=2, activity_type='audit') at .*"
                 f"{where('PARALLEL-ADDED')}"),
        lines[2],
    ), lines[2]


def test_first_difference_is_reported_even_in_a_partial_history() -> None:
    run = Run(OrderV1)
    run.start()
    run.activate(completed(1, "A"))
    with pytest.raises(NondeterminismError, match="at history event 6:"):
        run.replay(ActivityRemoved)
    # before the difference, the new code replays fine
    short = Run(OrderV1)
    short.start()
    short.replay(ActivityRemoved)


_calls = {"n": 0}


@workflow.defn(name="Flaky")
class UsesProcessState:
    """Branches on state outside the history: the classic non-deterministic bug."""

    @workflow.run
    async def run(self) -> str:
        _calls["n"] += 1
        if _calls["n"] % 2:
            return await workflow.execute_activity(reserve, "odd")
        return await workflow.execute_activity(charge, "even")  # PROCESS-STATE


def test_code_depending_on_process_state_is_caught_on_replay() -> None:
    _calls["n"] = 0
    run = Run(UsesProcessState)
    run.start()
    with pytest.raises(NondeterminismError) as caught:
        run.replay()
    message = str(caught.value)
    assert "at history event 3:" in message
    assert "recorded: ActivityScheduled(seq=1, activity_type='reserve')" in message
    assert "produced: ActivityScheduled(seq=1, activity_type='charge')" in message
    assert where("PROCESS-STATE") in message


def test_corrupt_history_with_command_before_any_task_is_rejected() -> None:
    run = order_history()
    history = run.stored_history()
    del history[1]  # drop the first WorkflowTaskCompleted
    with pytest.raises(NondeterminismError, match=r"history event 2 .*ActivityScheduled.* corrupt"):
        new_instance(OrderV1).replay(history)


# --------------------------------------------------------------------------- compatible changes


@workflow.defn(name="Order")
class WithLoggingAndHelpers:
    def __init__(self) -> None:
        self.status = "new"
        self.notes: list[str] = []

    @workflow.run
    async def run(self) -> list[str]:
        workflow.logger.info("starting order")
        a = await workflow.execute_activity(reserve, "a")
        self.status = f"reserved {a}"
        workflow.logger.info("reserved %s", a)
        b = await workflow.execute_activity(charge, "b")
        await workflow.sleep(10)
        c = await workflow.execute_activity(ship, "c")
        self.status = "shipped"
        return [a, b, c]

    @workflow.query
    def status_now(self) -> str:
        return self.status

    @workflow.signal
    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_compatible_changes_replay(cut: int) -> None:
    full = order_history()
    run = Run(OrderV1)
    run.start()
    steps = [completed(1, "A"), completed(2, "B"), fired(3), completed(4, "C")]
    for event in steps[: cut - 1]:
        run.activate(event)
    instance = run.replay(WithLoggingAndHelpers)
    expected = {1: "new", 2: "reserved A", 3: "reserved A", 4: "reserved A", 5: "shipped"}[cut]
    assert instance.query("status_now", b"[]") == f'"{expected}"'.encode()
    if cut < 5:
        # the new code carries on from the old history, live
        commands = instance.activate([steps[cut - 1], signal("note", "hi")], run.now + 1)
        assert describe(commands) == describe(full.commands[cut])
    else:
        assert instance.completed


def test_new_code_same_commands_different_payloads_replays() -> None:
    """Argument values may change (a reworded prompt): only their shape is compared."""

    @workflow.defn(name="Order")
    class OtherArgs:
        @workflow.run
        async def run(self) -> Any:
            a = await workflow.execute_activity(reserve, "A-new", start_to_close_timeout=5)
            b = await workflow.execute_activity(charge, "B-new")
            await workflow.sleep(10)
            await workflow.execute_activity(ship, "C-new")
            return {"a": a, "b": b}

    run = order_history()
    instance = run.replay(OtherArgs)
    assert instance.completed
    assert isinstance(run.history[-1], WorkflowCompleted)


@activity.defn(name="reserve")
async def reserve_two(item: str, quantity: int) -> str:
    return item


@pytest.mark.parametrize("change, args", [
    ("an argument added", ("a", 2)),
    ("an argument's type changed", (7,)),
])
def test_arguments_changed_in_shape_fail_replay(change: str, args: tuple[Any, ...]) -> None:
    @workflow.defn(name="Order")
    class ArgsChanged:
        @workflow.run
        async def run(self) -> Any:
            a = await workflow.execute_activity("reserve", *args)
            b = await workflow.execute_activity(charge, "b")
            await workflow.sleep(10)
            await workflow.execute_activity(ship, "c")
            return {"a": a, "b": b}

    with pytest.raises(NondeterminismError) as caught:
        order_history().replay(ArgsChanged)
    error = caught.value
    assert error.event_seq == 3, change
    assert "arguments differ in shape: recorded [\"a\"], produced " in str(error)
    assert error.recorded == error.produced == "ActivityScheduled(seq=1, activity_type='reserve')"
    assert "test_determinism.py" in error.location
