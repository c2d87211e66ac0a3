"""Replay of the pure workflow core: history in, commands out, no database."""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from perdure import activity, workflow
from perdure._errors import (
    ActivityError,
    ApplicationError,
    PayloadDecodingError,
    QueryRejectedError,
    TimeoutFailure,
    UnknownHandlerError,
)
from perdure.history import (
    ActivityCancelRequested,
    ActivityScheduled,
    MarkerRecorded,
    TimerCanceled,
    TimerStarted,
    WorkflowCanceled,
    WorkflowCompleted,
    WorkflowFailed,
)

from ._harness import (
    START_TIME,
    TASK_QUEUE,
    Run,
    cancel,
    completed,
    decode,
    describe,
    failed,
    fired,
    new_instance,
    signal,
    started,
    timed_out,
)

# --------------------------------------------------------------------------- activities


@activity.defn
async def greet(name: str) -> str:
    return f"hello {name}"


@activity.defn
async def add(a: int, b: int) -> int:
    return a + b


@activity.defn(name="cleanup-v1")
async def cleanup(reason: str) -> str:
    return reason


# --------------------------------------------------------------------------- sequential


@workflow.defn
class Sequential:
    def __init__(self) -> None:
        self.stage = "init"

    @workflow.run
    async def run(self, name: str) -> list[str]:
        self.stage = "first"
        first = await workflow.execute_activity(greet, name, start_to_close_timeout=30)
        self.stage = "second"
        second = await workflow.execute_activity(greet, first, task_queue="other")
        self.stage = "done"
        return [first, second]

    @workflow.query
    def get_stage(self) -> str:
        return self.stage


def test_sequential_activities_commands_and_replay() -> None:
    run = Run(Sequential)
    commands = run.start("ada")
    assert len(commands) == 1
    first = commands[0]
    assert isinstance(first, ActivityScheduled)
    assert (first.seq, first.activity_type, first.activity_id) == (1, "greet", "1")
    assert first.task_queue == TASK_QUEUE
    assert decode(first.input) == ["ada"]
    assert first.start_to_close_timeout == 30
    assert run.instance.query("get_stage", b"[]") == b'"first"'

    commands = run.activate(completed(1, "hello ada"))
    assert describe(commands) == [("ActivityScheduled", 2, "greet", ["hello ada"])]
    assert isinstance(commands[0], ActivityScheduled)
    assert commands[0].task_queue == "other"

    commands = run.activate(completed(2, "hello hello ada"))
    assert describe(commands) == [("WorkflowCompleted", ["hello ada", "hello hello ada"])]
    assert run.done

    # the recorded history has the engine's shape: inbound, WTC, commands
    assert [type(e).__name__ for e in run.history] == [
        "WorkflowStarted", "WorkflowTaskCompleted", "ActivityScheduled",
        "ActivityCompleted", "WorkflowTaskCompleted", "ActivityScheduled",
        "ActivityCompleted", "WorkflowTaskCompleted", "WorkflowCompleted",
    ]
    replayed = run.assert_replays_identically()
    assert replayed.completed
    assert replayed.query("get_stage", b"[]") == b'"done"'
    assert replayed.history_length == len(run.history)


def test_replay_of_partial_history_then_continue_live() -> None:
    """A worker that lost its cache replays, then carries on exactly as the original."""
    run = Run(Sequential)
    run.start("bob")
    run.activate(completed(1, "hello bob"))
    replayed = run.replay()
    assert not replayed.completed
    assert replayed.query("get_stage", b"[]") == b'"second"'
    assert replayed.history_length == len(run.history)

    live = run.activate(completed(2, "hello hello bob"))
    resumed = replayed.activate([completed(2, "hello hello bob")], run.now)
    assert describe(resumed) == describe(live) == [
        ("WorkflowCompleted", ["hello bob", "hello hello bob"])
    ]


def test_replay_leaves_inbound_tail_unprocessed() -> None:
    run = Run(Sequential)
    run.start("eve")
    history = [*run.stored_history(), completed(1, "hello eve")]
    instance = new_instance(Sequential)
    tail = instance.replay(history)
    assert [(seq, type(e).__name__) for seq, e in tail] == [(4, "ActivityCompleted")]
    assert instance.query("get_stage", b"[]") == b'"first"'


# --------------------------------------------------------------------------- parallel


@workflow.defn
class Parallel:
    @workflow.run
    async def run(self, n: int) -> list[int]:
        return list(
            await asyncio.gather(*(workflow.execute_activity(add, i, 100) for i in range(n)))
        )


@pytest.mark.parametrize("one_activation", [False, True])
def test_parallel_activities_with_gather(one_activation: bool) -> None:
    run = Run(Parallel)
    commands = run.start(3)
    assert describe(commands) == [
        ("ActivityScheduled", 1, "add", [0, 100]),
        ("ActivityScheduled", 2, "add", [1, 100]),
        ("ActivityScheduled", 3, "add", [2, 100]),
    ]
    if one_activation:
        commands = run.activate(completed(2, 101), completed(3, 102), completed(1, 100))
    else:
        assert run.activate(completed(3, 102)) == []
        assert run.activate(completed(1, 100)) == []
        commands = run.activate(completed(2, 101))
    assert describe(commands) == [("WorkflowCompleted", [100, 101, 102])]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- timers


@workflow.defn
class Timers:
    def __init__(self) -> None:
        self.times: list[float] = []

    @workflow.run
    async def run(self) -> list[float]:
        self.times.append(workflow.now().timestamp())
        await asyncio.sleep(10)
        self.times.append(workflow.now().timestamp())
        await workflow.sleep(timedelta(minutes=2))
        self.times.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0)  # not a durable timer
        return self.times


def test_asyncio_sleep_and_workflow_sleep_are_durable_timers() -> None:
    run = Run(Timers)
    commands = run.start()
    assert len(commands) == 1
    timer = commands[0]
    assert isinstance(timer, TimerStarted)
    assert (timer.seq, timer.duration, timer.fire_at) == (1, 10, START_TIME + 10)

    assert run.activate(signal("unrelated")) == []  # waiting, no new commands
    commands = run.activate(fired(1), advance=9)
    assert len(commands) == 1
    timer = commands[0]
    assert isinstance(timer, TimerStarted)
    assert (timer.seq, timer.duration, timer.fire_at) == (2, 120, START_TIME + 10 + 120)

    commands = run.activate(fired(2), advance=120)
    assert describe(commands) == [
        ("WorkflowCompleted", [START_TIME, START_TIME + 10, START_TIME + 130])
    ]
    replayed = run.assert_replays_identically()
    assert replayed.now_timestamp == START_TIME + 130


def test_timer_fired_twice_or_unknown_is_ignored() -> None:
    run = Run(Timers)
    run.start()
    assert run.activate(fired(99)) == []
    commands = run.activate(fired(1), fired(1))
    assert describe(commands) == [("TimerStarted", 2, 120)]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- wait_condition


@workflow.defn
class Approval:
    def __init__(self) -> None:
        self.approved_by: str | None = None

    @workflow.run
    async def run(self, timeout: float | None) -> str:
        try:
            await workflow.wait_condition(lambda: self.approved_by is not None, timeout=timeout)
        except TimeoutError:
            return "timed out"
        return f"approved by {self.approved_by}"

    @workflow.signal
    def approve(self, who: str) -> None:
        self.approved_by = who


def test_wait_condition_without_timeout() -> None:
    run = Run(Approval)
    assert run.start(None) == []
    assert run.activate(signal("unknown-signal", 1)) == []
    commands = run.activate(signal("approve", "ann"))
    assert describe(commands) == [("WorkflowCompleted", "approved by ann")]
    run.assert_replays_identically()


def test_wait_condition_timeout_fires() -> None:
    run = Run(Approval)
    commands = run.start(60.0)
    assert describe(commands) == [("TimerStarted", 1, 60)]
    commands = run.activate(fired(1), advance=60)
    assert describe(commands) == [("WorkflowCompleted", "timed out")]
    run.assert_replays_identically()


def test_wait_condition_met_before_timeout_cancels_timer() -> None:
    run = Run(Approval)
    run.start(60.0)
    commands = run.activate(signal("approve", "bo"))
    assert describe(commands) == [
        ("TimerCanceled", 1),
        ("WorkflowCompleted", "approved by bo"),
    ]
    run.assert_replays_identically()


@pytest.mark.parametrize("signal_first", [True, False])
def test_signal_and_timeout_in_same_activation_condition_wins(signal_first: bool) -> None:
    """As with ``asyncio.wait_for(event.wait(), ...)``: a result that is there wins."""
    run = Run(Approval)
    run.start(60.0)
    inbound = [signal("approve", "di"), fired(1)]
    commands = run.activate(*(inbound if signal_first else inbound[::-1]), advance=60)
    assert describe(commands) == [("WorkflowCompleted", "approved by di")]
    run.assert_replays_identically()


def test_wait_condition_already_true_leaves_no_timer() -> None:
    run = Run(Approval)
    commands = run.start(60.0, extra=[signal("approve", "cy")])
    assert describe(commands) == [("WorkflowCompleted", "approved by cy")]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- signals


@workflow.defn
class Inbox:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.seen_at_start: list[str] | None = None
        self.closed = False

    @workflow.run
    async def run(self) -> dict[str, Any]:
        self.seen_at_start = list(self.items)
        await workflow.wait_condition(lambda: self.closed)
        return {"at_start": self.seen_at_start, "items": self.items}

    @workflow.signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @workflow.signal(name="add-greeted")
    async def add_greeted(self, name: str) -> None:
        self.items.append(await workflow.execute_activity(greet, name))

    @workflow.signal
    def close(self) -> None:
        self.closed = True

    @workflow.query
    def items_so_far(self, prefix: str) -> list[str]:
        return [prefix + item for item in self.items]


def test_signals_in_first_activation_run_before_run_awaits() -> None:
    run = Run(Inbox)
    assert run.start(extra=[signal("add", "a"), signal("add", "b")]) == []
    assert run.instance.query("items_so_far", b'[">"]') == b'[">a",">b"]'
    commands = run.activate(signal("add", "c"), signal("close"))
    assert describe(commands) == [
        ("WorkflowCompleted", {"at_start": ["a", "b"], "items": ["a", "b", "c"]})
    ]
    run.assert_replays_identically()


def test_sync_and_async_signal_handlers() -> None:
    run = Run(Inbox)
    run.start()
    commands = run.activate(signal("add", "x"), signal("add-greeted", "yan"), signal("add", "z"))
    assert describe(commands) == [("ActivityScheduled", 1, "greet", ["yan"])]
    assert run.instance.query("items_so_far", b'[""]') == b'["x","z"]'
    # close arrives before the async handler's activity completes: the workflow
    # ends at once and the handler's result is never appended
    commands = run.activate(completed(1, "hello yan"), signal("close"))
    assert describe(commands) == [
        ("WorkflowCompleted", {"at_start": [], "items": ["x", "z", "hello yan"]})
    ]
    replayed = run.assert_replays_identically()
    assert replayed.query("items_so_far", b'["-"]') == b'["-x","-z","-hello yan"]'


def test_signal_with_undecodable_payload_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    run = Run(Inbox)
    run.start()
    with caplog.at_level(logging.WARNING, logger="perdure.workflow"):
        commands = run.activate(signal("add", {"not": "a string"}), signal("add", "ok"))
    assert "dropping signal 'add'" in caplog.text
    # the only command is the visible record of the drop
    assert [(type(c).__name__, getattr(c, "name", None)) for c in commands] == [
        ("MarkerRecorded", "signal_dropped")]
    assert run.instance.query("items_so_far", b'[""]') == b'["ok"]'
    run.assert_replays_identically()
    # a history written before drops were recorded (no marker) replays as well
    older = [e for e in run.stored_history()
             if not (isinstance(e, MarkerRecorded) and e.name == "signal_dropped")]
    assert new_instance(Inbox).replay(older) == []


@workflow.defn
class LateHandler:
    def __init__(self) -> None:
        self.got: list[int] = []

    @workflow.run
    async def run(self) -> list[int]:
        await workflow.sleep(5)
        workflow.set_signal_handler("num", self.got.append)
        delivered_on_registration = list(self.got)
        await workflow.wait_condition(lambda: len(self.got) >= 3)
        workflow.set_signal_handler("num", None)
        await workflow.sleep(1)
        return [*delivered_on_registration, -1, *self.got]


def test_buffered_signals_are_delivered_on_set_signal_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Run(LateHandler)
    assert describe(run.start(extra=[signal("num", 1)])) == [("TimerStarted", 1, 5)]
    assert run.activate(signal("num", 2)) == []
    commands = run.activate(fired(1))
    assert describe(commands) == []  # two delivered on registration; waits for a third
    commands = run.activate(signal("num", 3))
    assert describe(commands) == [("TimerStarted", 2, 1)]
    # the handler was removed: this one is buffered again, and reported at the end
    assert run.activate(signal("num", 4)) == []
    with caplog.at_level(logging.WARNING, logger="perdure.workflow"):
        commands = run.activate(fired(2))
    assert describe(commands) == [("WorkflowCompleted", [1, 2, -1, 1, 2, 3])]
    assert "ended with unhandled signals: num" in caplog.text
    run.assert_replays_identically()


# --------------------------------------------------------------------------- determinism helpers


@workflow.defn
class Deterministic:
    def __init__(self) -> None:
        self.samples: list[Any] = []
        self.replaying: list[bool] = []

    @workflow.run
    async def run(self) -> list[Any]:
        self.sample()
        await workflow.sleep(30)
        self.sample()
        return self.samples

    def sample(self) -> None:
        info = workflow.info()
        self.replaying.append(workflow.is_replaying())
        self.samples.append(
            {
                "now": workflow.now().timestamp(),
                "random": workflow.random().random(),
                "randint": workflow.random().randint(0, 10**9),
                "uuid": str(workflow.uuid4()),
                "type": info.workflow_type,
                "queue": info.task_queue,
                "start": info.start_time.timestamp(),
            }
        )

    @workflow.query
    def samples_so_far(self) -> list[Any]:
        return self.samples

    @workflow.query
    def replaying_flags(self) -> list[bool]:
        return self.replaying


def test_now_random_and_uuid4_are_equal_on_replay() -> None:
    run = Run(Deterministic)
    run.start()
    run.activate(fired(1), advance=30)
    result = run.result
    assert [s["now"] for s in result] == [START_TIME, START_TIME + 30]
    assert result[0]["random"] != result[1]["random"]
    assert result[0]["uuid"] != result[1]["uuid"]
    assert {s["uuid"][14] for s in result} == {"4"}  # version 4 UUIDs
    assert {(s["type"], s["queue"], s["start"]) for s in result} == {
        ("Deterministic", TASK_QUEUE, START_TIME)
    }
    assert run.instance.query("replaying_flags", b"[]") == b"[false,false]"

    replayed = run.assert_replays_identically()
    assert msgspec.json.decode(replayed.query("samples_so_far", b"[]")) == result
    assert replayed.query("replaying_flags", b"[]") == b"[true,true]"


def test_randomness_depends_on_run_id() -> None:
    first, second = Run(Deterministic, run_id="run-a"), Run(Deterministic, run_id="run-b")
    first.start()
    second.start()
    a = msgspec.json.decode(first.instance.query("samples_so_far", b"[]"))
    b = msgspec.json.decode(second.instance.query("samples_so_far", b"[]"))
    assert a[0]["now"] == b[0]["now"]
    assert a[0]["uuid"] != b[0]["uuid"]
    assert a[0]["random"] != b[0]["random"]


# --------------------------------------------------------------------------- queries


@workflow.defn
class Counter:
    def __init__(self) -> None:
        self.count = 0

    @workflow.run
    async def run(self) -> int:
        while self.count < 3:
            self.count += await workflow.execute_activity(add, self.count, 1) - self.count
        return self.count

    @workflow.query
    def value(self) -> int:
        return self.count

    @workflow.query(name="times")
    def multiplied(self, factor: int) -> int:
        return self.count * factor

    @workflow.query
    def broken(self) -> int:
        raise RuntimeError("query bug")

    @workflow.query
    def sneaky(self) -> int:
        workflow.start_activity(greet, "nope")
        return self.count


def test_queries_after_replay() -> None:
    run = Run(Counter)
    run.start()
    run.activate(completed(1, 1))
    run.activate(completed(2, 2))
    replayed = run.replay()
    assert replayed.query("value", b"[]") == b"2"
    assert replayed.query("times", b"[10]") == b"20"
    assert replayed.query("value", b"[]") == run.instance.query("value", b"[]")
    with pytest.raises(UnknownHandlerError, match=r"no query 'nope'.*broken, sneaky, times, value"):
        replayed.query("nope", b"[]")
    with pytest.raises(QueryRejectedError, match="query bug"):
        replayed.query("broken", b"[]")


def test_query_cannot_issue_commands() -> None:
    run = Run(Counter)
    run.start()
    with pytest.raises(QueryRejectedError, match="must not start activities"):
        run.instance.query("sneaky", b"[]")
    live = run.activate(completed(1, 1))
    assert describe(live) == [("ActivityScheduled", 2, "add", [1, 1])]
    run.assert_replays_identically()


def test_query_before_start_is_rejected() -> None:
    instance = new_instance(Counter)
    with pytest.raises(QueryRejectedError, match="not started"):
        instance.query("value", b"[]")


def test_replay_for_query_runs_unprocessed_first_task() -> None:
    instance = new_instance(Counter)
    instance.replay_for_query([started(Counter)])
    assert instance.query("value", b"[]") == b"0"


# --------------------------------------------------------------------------- failures


@workflow.defn
class Careful:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        try:
            await workflow.execute_activity(greet, "x")
        except ActivityError as err:
            cause = err.__cause__
            root = cause.__cause__ if cause is not None else None
            failed_info = {
                "error": type(err).__name__,
                "activity_type": err.activity_type,
                "activity_id": err.activity_id,
                "attempt": err.attempt,
                "cause": [type(cause).__name__, getattr(cause, "type", None), str(cause)],
                "non_retryable": getattr(cause, "non_retryable", None),
                "details": list(getattr(cause, "details", ())),
                "root": [type(root).__name__, getattr(root, "type", None), str(root)],
            }
        try:
            await workflow.execute_activity(greet, "y")
        except ActivityError as err:
            timeout = err.__cause__
            assert isinstance(timeout, TimeoutFailure)
            return {"failed": failed_info, "timeout": [timeout.timeout_type, str(err)]}
        raise AssertionError("unreachable")


def test_activity_failure_is_activity_error_with_cause_chain() -> None:
    try:
        try:
            raise KeyError("missing")
        except KeyError as exc:
            raise ApplicationError("bad input", 7, type="InputError", non_retryable=True) from exc
    except ApplicationError as err:
        error = err

    run = Run(Careful)
    run.start()
    commands = run.activate(failed(1, error, attempt=3))
    assert describe(commands) == [("ActivityScheduled", 2, "greet", ["y"])]
    commands = run.activate(timed_out(2, "schedule_to_close", attempt=2))
    assert run.result == {
        "failed": {
            "error": "ActivityError",
            "activity_type": "greet",
            "activity_id": "1",
            "attempt": 3,
            "cause": ["ApplicationError", "InputError", "bad input"],
            "non_retryable": True,
            "details": [7],
            "root": ["ApplicationError", "KeyError", "'missing'"],
        },
        "timeout": [
            "schedule_to_close",
            "activity 'greet' (id 2) timed out (schedule_to_close) after 2 attempt(s)",
        ],
    }
    run.assert_replays_identically()


@workflow.defn
class Careless:
    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(greet, "z")


def test_unhandled_activity_failure_fails_the_workflow() -> None:
    run = Run(Careless)
    run.start()
    commands = run.activate(failed(1, ValueError("nope")))
    assert len(commands) == 1
    outcome = commands[0]
    assert isinstance(outcome, WorkflowFailed)
    assert outcome.failure.type == "ActivityError"
    assert outcome.failure.kind == "activity"
    assert outcome.failure.attributes == {"activity_type": "greet", "activity_id": "1", "attempt": 1}
    assert outcome.failure.cause is not None
    assert (outcome.failure.cause.type, outcome.failure.cause.message) == ("ValueError", "nope")
    run.assert_replays_identically()


def test_undecodable_activity_result_fails_the_task() -> None:
    """A result that does not fit the activity's return type raises in workflow code; the
    code's hint and the activity disagree (a bug a deploy fixes), so the task fails, not
    the run."""
    run = Run(Careless)
    run.start()
    with pytest.raises(PayloadDecodingError, match="result of activity 'greet'"):
        run.activate(completed(1, {"not": "a str"}))


# --------------------------------------------------------------------------- activity cancellation


@workflow.defn
class CancelActivity:
    @workflow.run
    async def run(self, immediately: bool) -> str:
        handle = workflow.start_activity(greet, "slow")
        other = workflow.start_activity(add, 1, 2)
        if not immediately:
            await workflow.sleep(5)
        assert handle.cancel() is True
        try:
            await handle
        except asyncio.CancelledError:
            outcome = "cancelled"
        else:
            outcome = "finished"
        assert handle.done()
        assert handle.cancel() is False
        return f"{outcome} {await other}"


def test_handle_cancel_emits_activity_cancel_requested() -> None:
    run = Run(CancelActivity)
    commands = run.start(False)
    assert describe(commands) == [
        ("ActivityScheduled", 1, "greet", ["slow"]),
        ("ActivityScheduled", 2, "add", [1, 2]),
        ("TimerStarted", 3, 5),
    ]
    commands = run.activate(fired(3))
    assert describe(commands) == [("ActivityCancelRequested", 1)]
    assert isinstance(commands[0], ActivityCancelRequested)
    # a late completion of the cancelled activity is ignored
    commands = run.activate(completed(1, "too late"), completed(2, 3))
    assert describe(commands) == [("WorkflowCompleted", "cancelled 3")]
    run.assert_replays_identically()


def test_cancel_activity_in_the_activation_that_scheduled_it() -> None:
    run = Run(CancelActivity)
    commands = run.start(True)
    assert describe(commands) == [
        ("ActivityScheduled", 1, "greet", ["slow"]),
        ("ActivityScheduled", 2, "add", [1, 2]),
        ("ActivityCancelRequested", 1),
    ]
    commands = run.activate(completed(1, "ran anyway"), completed(2, 3))
    assert describe(commands) == [("WorkflowCompleted", "cancelled 3")]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- workflow cancellation


@workflow.defn
class Cancellable:
    @workflow.run
    async def run(self, catch: bool) -> str:
        try:
            await workflow.execute_activity(greet, "long")
            await workflow.sleep(100)
        except asyncio.CancelledError:
            if not catch:
                raise
            return await workflow.execute_activity(cleanup, "cancelled")
        return "finished"


def test_cancel_requested_while_waiting_on_activity_cancels_workflow() -> None:
    run = Run(Cancellable)
    run.start(False)
    commands = run.activate(cancel("user asked"))
    assert describe(commands) == [("ActivityCancelRequested", 1), ("WorkflowCanceled",)]
    assert isinstance(commands[-1], WorkflowCanceled)
    assert run.done
    run.assert_replays_identically()


def test_cancel_requested_while_sleeping_cancels_timer() -> None:
    run = Run(Cancellable)
    run.start(False)
    run.activate(completed(1, "hello long"))
    commands = run.activate(cancel())
    assert describe(commands) == [("TimerCanceled", 2), ("WorkflowCanceled",)]
    run.assert_replays_identically()


def test_cancel_requested_can_be_caught_and_workflow_returns_value() -> None:
    run = Run(Cancellable)
    run.start(True)
    commands = run.activate(cancel())
    assert describe(commands) == [
        ("ActivityCancelRequested", 1),
        ("ActivityScheduled", 2, "cleanup-v1", ["cancelled"]),
    ]
    commands = run.activate(completed(2, "cleaned"))
    assert describe(commands) == [("WorkflowCompleted", "cleaned")]
    assert isinstance(commands[0], WorkflowCompleted)
    run.assert_replays_identically()


def test_cancel_requested_in_first_activation_reaches_the_first_await() -> None:
    # run() starts and reaches its first await before the cancellation lands, so its own
    # except/finally clean-up runs even when the cancel arrived with the start
    run = Run(Cancellable)
    commands = run.start(True, extra=[cancel()])
    assert describe(commands) == [
        ("ActivityScheduled", 1, "greet", ["long"]),
        ("ActivityCancelRequested", 1),
        ("ActivityScheduled", 2, "cleanup-v1", ["cancelled"]),
    ]
    run.assert_replays_identically()
    plain = Run(Cancellable)
    assert describe(plain.start(False, extra=[cancel()]))[-1] == ("WorkflowCanceled",)


@workflow.defn
class SelfCancelling:
    @workflow.run
    async def run(self) -> None:
        raise asyncio.CancelledError("by itself")


def test_cancellation_without_request_fails_workflow() -> None:
    run = Run(SelfCancelling)
    commands = run.start()
    assert len(commands) == 1
    assert isinstance(commands[0], WorkflowFailed)
    assert commands[0].failure.kind == "cancelled"
    run.assert_replays_identically()


# --------------------------------------------------------------------------- timers cancelled in-activation


@workflow.defn
class Fleeting:
    @workflow.run
    async def run(self) -> str:
        handle = asyncio.get_running_loop().call_later(5, lambda: None)
        handle.cancel()
        sleeper = asyncio.ensure_future(asyncio.sleep(7))
        await asyncio.sleep(0)  # lets the sleeper start its timer
        sleeper.cancel()
        await workflow.sleep(9)
        kept = asyncio.ensure_future(asyncio.sleep(11))
        await asyncio.sleep(0)
        kept.cancel()
        return "ok"


def test_timer_started_and_cancelled_in_same_activation_leaves_no_trace() -> None:
    run = Run(Fleeting)
    commands = run.start()
    # seq 1 and 2 were used by the vanished timers
    assert describe(commands) == [("TimerStarted", 3, 9)]
    commands = run.activate(fired(3))
    assert describe(commands) == [("WorkflowCompleted", "ok")]
    run.assert_replays_identically()


@workflow.defn
class CancelsEarlierTimer:
    @workflow.run
    async def run(self) -> str:
        sleeper = asyncio.ensure_future(asyncio.sleep(7))
        await workflow.sleep(1)
        sleeper.cancel()
        await asyncio.sleep(0)
        return "ok"


def test_timer_cancelled_in_later_activation_emits_timer_canceled() -> None:
    run = Run(CancelsEarlierTimer)
    assert describe(run.start()) == [("TimerStarted", 1, 1), ("TimerStarted", 2, 7)]
    commands = run.activate(fired(1))
    assert describe(commands) == [("TimerCanceled", 2), ("WorkflowCompleted", "ok")]
    assert isinstance(commands[0], TimerCanceled)
    run.assert_replays_identically()


# --------------------------------------------------------------------------- logging


@workflow.defn
class Chatty:
    @workflow.run
    async def run(self) -> int:
        workflow.logger.info("starting")
        total = 0
        for i in range(3):
            total += await workflow.execute_activity(add, total, i)
            workflow.logger.warning("step %d total %d", i, total)
        return total


def _user_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "perdure.workflow.user"]


def test_workflow_logger_is_silent_during_replay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="perdure.workflow.user")
    run = Run(Chatty)
    run.start()
    run.activate(completed(1, 0))
    run.activate(completed(2, 1))
    assert _user_records(caplog) == [
        "[wf-1] starting", "[wf-1] step 0 total 0", "[wf-1] step 1 total 1",
    ]
    record = next(r for r in caplog.records if r.name == "perdure.workflow.user")
    assert (record.workflow_id, record.run_id) == ("wf-1", "run-1")  # type: ignore[attr-defined]

    caplog.clear()
    replayed = run.replay()
    assert _user_records(caplog) == []
    # after replay the instance is live again: new activations log
    replayed.activate([completed(3, 3)], run.now + 1)
    assert _user_records(caplog) == ["[wf-1] step 2 total 4"]


def test_dropping_a_waiting_instance_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Evicting a cached workflow (or a query replay) drops its pending tasks quietly."""
    caplog.set_level(logging.DEBUG, logger="perdure.workflow")
    run = Run(TaskWorkflowForDrop)
    run.start()
    replayed = run.replay()
    assert not replayed.completed
    del run, replayed
    gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "perdure.workflow"] == []


@workflow.defn
class TaskWorkflowForDrop:
    @workflow.run
    async def run(self) -> None:
        await asyncio.gather(workflow.execute_activity(greet, "x"), asyncio.sleep(50))


@workflow.defn
class Lengths:
    @workflow.run
    async def run(self) -> list[int]:
        seen = [workflow.info().history_length]
        await workflow.sleep(1)
        seen.append(workflow.info().history_length)
        await workflow.execute_activity(add, 1, 2)
        seen.append(workflow.info().history_length)
        return seen


def test_history_length_in_info_is_the_same_live_and_on_replay() -> None:
    """Events in history before the activation's inbound events (see WorkflowInfo)."""
    run = Run(Lengths)
    run.start()  # 1 WorkflowStarted, 2 WTC, 3 TimerStarted
    run.activate(fired(1))  # 4 TimerFired, 5 WTC, 6 ActivityScheduled
    run.activate(completed(2, 3))  # 7 ActivityCompleted, 8 WTC, 9 WorkflowCompleted
    assert run.result == [0, 3, 6]
    replayed = run.assert_replays_identically()
    assert replayed.history_length == 9
