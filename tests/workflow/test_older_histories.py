"""Histories recorded by an older Perdure, whose edge checks were looser, still replay:
what history holds is taken as it is, and the checks apply to what is new."""

from __future__ import annotations

import gc
from datetime import timedelta

import msgspec
import pytest

from perdure import activity, workflow
from perdure._converter import _ARITY, arity_problem
from perdure._errors import PayloadEncodingError
from perdure._failure import failure_from_exception
from perdure.history import (
    ActivityScheduled,
    ChildWorkflowScheduled,
    ChildWorkflowStarted,
    SignalReceived,
    WorkflowFailed,
    WorkflowTaskCompleted,
)

from ._harness import START_TIME, args, new_instance, signal, started

LONG_ID = "child-" + "x" * 1500  # over today's 1,000-byte limit for ids


@activity.defn
async def record_score(score: float) -> None:
    return None


@workflow.defn
class Scores:
    def __init__(self) -> None:
        self.seen = 0

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(record_score, float("nan"),
                                        start_to_close_timeout=timedelta(seconds=5))

    @workflow.signal
    def poke(self) -> None:
        self.seen += 1


@workflow.defn
class LongChild:
    @workflow.run
    async def run(self) -> None:
        child = await workflow.start_child_workflow("Other", id=LONG_ID)
        await child


@workflow.defn
class Counter:
    def __init__(self) -> None:
        self.total = 0

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def add(self, n: int) -> None:
        self.total += n


def test_a_nan_an_older_version_stored_as_null_replays() -> None:
    history = [
        started(Scores),
        WorkflowTaskCompleted(time=START_TIME),
        ActivityScheduled(seq=1, activity_type="record_score", task_queue="q",
                          input=msgspec.Raw(b"[null]"), activity_id="1",
                          start_to_close_timeout=5.0),
    ]
    instance = new_instance(Scores)
    assert instance.replay(history) == []
    instance.activate([signal("poke")], START_TIME + 1)  # a live activation goes on
    assert instance.workflow_object.seen == 1
    # new code refuses a NaN where it is new: at the call, in workflow code
    fresh = new_instance(Scores)
    with pytest.raises(PayloadEncodingError, match="nan"):
        fresh.activate([started(Scores)], START_TIME)


def test_an_id_over_todays_limit_that_history_holds_replays() -> None:
    history = [
        started(LongChild),
        WorkflowTaskCompleted(time=START_TIME),
        ChildWorkflowScheduled(seq=1, workflow_type="Other", workflow_id=LONG_ID,
                               task_queue="q", input=msgspec.Raw(b"[]"),
                               parent_close_policy="terminate"),
        ChildWorkflowStarted(seq=1, run_id="r"),
    ]
    instance = new_instance(LongChild)
    instance.replay(history)
    assert instance._children[1].workflow_id == LONG_ID


def test_a_run_an_older_version_failed_on_a_wrong_arity_signal_replays() -> None:
    history = [
        started(Counter),
        WorkflowTaskCompleted(time=START_TIME),
        SignalReceived(name="add", args=args(2, 3)),
        WorkflowTaskCompleted(time=START_TIME + 1),
        WorkflowFailed(failure=failure_from_exception(
            TypeError("Counter.add() takes 2 positional arguments but 3 were given"))),
    ]
    instance = new_instance(Counter)
    assert instance.replay(history) == []
    assert instance.completed


def test_the_arity_cache_lets_run_time_handlers_go() -> None:
    def make() -> object:
        def handler(value: int) -> None:
            return None
        assert arity_problem(handler, 2) is not None
        return handler

    before = len(_ARITY[False])
    handlers = [make() for _ in range(50)]
    assert len(_ARITY[False]) >= before + 50
    del handlers
    gc.collect()
    assert len(_ARITY[False]) <= before + 1
