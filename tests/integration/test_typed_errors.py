"""Bad arguments to the public API raise Perdure's typed errors, naming the argument, and
change nothing: no ValueError, TypeError, AttributeError, RecursionError or
UnicodeEncodeError from deep inside, no driver error, no row written."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from datetime import datetime, timedelta
from typing import Any

import pytest

from perdure import (
    IdConflictPolicy,
    InvalidArgumentError,
    PayloadEncodingError,
    PayloadTooLargeError,
    PerdureError,
    RetryPolicy,
    WithStartWorkflowOperation,
    workflow,
)
from perdure._task_token import encode_task_token
from perdure.testing import WorkflowEnvironment
from tests._digest import database_digest

TQ = "typed-errors"


@workflow.defn
class Waits:
    @workflow.run
    async def run(self, value: Any) -> Any:
        await workflow.wait_condition(lambda: False)
        return value

    @workflow.signal
    def poke(self, value: Any) -> None:
        pass

    @workflow.update
    def change(self, value: Any) -> Any:
        return value


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _token(created: Any, workflow_id: Any, run_id: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, workflow_id, run_id]).encode()).decode()


async def test_bad_arguments_raise_typed_errors_and_change_nothing(
    env: WorkflowEnvironment, database_url: str,
) -> None:
    client = env.client
    handle = await client.start_workflow(Waits.run, 1, id="target", task_queue=TQ)
    start = client.start_workflow
    big = {"k": "v" * (2 * 1024 * 1024)}
    many = {f"k{i}": "v" * 900 for i in range(3000)}
    cases: list[tuple[type[PerdureError], str, Any]] = [
        (InvalidArgumentError, "id_reuse_policy",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, id_reuse_policy="sometimes")),
        (InvalidArgumentError, "id_conflict_policy",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, id_conflict_policy=3)),
        (InvalidArgumentError, "execution_timeout",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, execution_timeout=math.nan)),
        (InvalidArgumentError, "execution_timeout",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, execution_timeout=-1)),
        (InvalidArgumentError, "execution_timeout",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, execution_timeout=math.inf)),
        (InvalidArgumentError, "execution_timeout",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, execution_timeout="10s")),
        (InvalidArgumentError, "run_timeout",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, run_timeout=timedelta(-1))),
        (InvalidArgumentError, "execution_timeout",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, execution_timeout=10**400)),
        (InvalidArgumentError, "timeout", lambda: handle.result(timeout=10**400)),
        (InvalidArgumentError, "cron schedule",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ,
                       cron_schedule="@every " + "9" * 400 + "h")),
        (InvalidArgumentError, "task_queue",
         lambda: start(Waits.run, 1, id="a", task_queue=7)),
        (InvalidArgumentError, "task_queue",
         lambda: start(Waits.run, 1, id="a", task_queue=["a", "b"])),
        (InvalidArgumentError, "workflow id", lambda: start(Waits.run, 1, id=7, task_queue=TQ)),
        (InvalidArgumentError, "retry_policy",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, retry_policy="forever")),
        (InvalidArgumentError, "start_signal_args",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, start_signal=Waits.poke,
                       start_signal_args=5)),
        (InvalidArgumentError, "signal_args",
         lambda: client.signal_with_start(Waits.run, Waits.poke, 5, 1, id="a", task_queue=TQ)),
        (PayloadTooLargeError, "memo",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, memo=big)),
        (PayloadTooLargeError, "search attributes",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, search_attributes=many)),
        (InvalidArgumentError, "64 bits",
         lambda: start(Waits.run, 1, id="a", task_queue=TQ, search_attributes={"n": 2**70})),
        (PayloadEncodingError, "nested too deeply",
         lambda: start(Waits.run, _deep(100_000), id="a", task_queue=TQ)),
        (PayloadEncodingError, "surrogate",
         lambda: start(Waits.run, "x\udcff", id="a", task_queue=TQ)),
        (PayloadEncodingError, "surrogate", lambda: handle.signal(Waits.poke, {"\ud800": 1})),
        (InvalidArgumentError, "timeout", lambda: handle.query("anything", timeout=math.nan)),
        (InvalidArgumentError, "timeout", lambda: handle.query("anything", timeout="soon")),
        (InvalidArgumentError, "timeout", lambda: handle.result(timeout=-1)),
        (InvalidArgumentError, "follow_runs", lambda: handle.result(follow_runs="yes")),
        (InvalidArgumentError, "wait_for_stage",
         lambda: handle.start_update(Waits.change, 1, wait_for_stage=9)),
        (InvalidArgumentError, "timeout",
         lambda: handle.execute_update(Waits.change, 1, timeout=math.inf)),
        (InvalidArgumentError, "status", lambda: client.list_workflows(status="bogus")),
        (InvalidArgumentError, "status", lambda: client.list_workflows(status=["running"])),
        (InvalidArgumentError, "started_after",
         lambda: client.list_workflows(started_after="yesterday")),
        (InvalidArgumentError, "started_after",
         lambda: client.list_workflows(started_after=datetime(2024, 1, 1))),
        (InvalidArgumentError, "closed_before",
         lambda: client.list_workflows(closed_before=math.nan)),
        (InvalidArgumentError, "limit", lambda: client.list_workflows(limit=0)),
        (InvalidArgumentError, "limit", lambda: client.list_workflows(limit=True)),
        (InvalidArgumentError, "limit", lambda: client.list_workflows(limit=2**70)),
        (InvalidArgumentError, "limit", lambda: client.list_workflows(limit="10")),
        (InvalidArgumentError, "page_token", lambda: client.list_workflows(page_token="junk")),
        (InvalidArgumentError, "page_token", lambda: client.list_workflows(page_token=7)),
        (InvalidArgumentError, "page_token",
         lambda: client.list_workflows(page_token=_token(1.0, "a\x00b", "r"))),
        (InvalidArgumentError, "page_token",
         lambda: client.list_workflows(page_token=_token("NaN", "a", "r"))),
        (InvalidArgumentError, "64 bits",
         lambda: client.list_workflows(search_attributes={"n": -(2**70)})),
        (InvalidArgumentError, "to_event", lambda: handle.reset(to_event="3")),
        (InvalidArgumentError, "to_event", lambda: handle.reset(to_event=0)),
        (InvalidArgumentError, "not in this history", lambda: handle.reset(to_event=2**40)),
        (InvalidArgumentError, "reapply_signals",
         lambda: handle.reset(to_event=1, reapply_signals="yes")),
        (InvalidArgumentError, "new workflow id", lambda: handle.fork(7, to_event=1)),
        (InvalidArgumentError, "edit_results", lambda: handle.fork("f", edit_results=[1])),
        (InvalidArgumentError, "edit_results",
         lambda: handle.fork("f", edit_results={"x": 1})),
        (InvalidArgumentError, "task_queue",
         lambda: handle.fork("f", to_event=1, task_queue=["a"])),
        (InvalidArgumentError, "reason", lambda: handle.cancel(reason=5)),
        (InvalidArgumentError, "reason", lambda: handle.terminate(reason="x\ud800")),
        (InvalidArgumentError, "after", lambda: anext(handle.stream(after=-1))),
        (InvalidArgumentError, "task token",
         lambda: client.get_async_activity_handle(task_token=b"junk").complete(1)),
        (InvalidArgumentError, "task token",
         lambda: client.get_async_activity_handle(
             task_token=encode_task_token("target", "r", 2**40, 1)).complete(1)),
        (InvalidArgumentError, "activity_id",
         lambda: client.get_async_activity_handle(workflow_id="target",
                                                  activity_id="x").complete(1)),
        (InvalidArgumentError, "activity_id",
         lambda: client.get_async_activity_handle(workflow_id="target",
                                                  activity_id=[1]).complete(1)),
        (InvalidArgumentError, "id_conflict_policy",
         lambda: client.execute_update_with_start_workflow(
             Waits.change, 1, start_workflow_operation=WithStartWorkflowOperation(
                 Waits.run, 1, id="ws", task_queue=TQ, id_conflict_policy="whatever"))),
        (InvalidArgumentError, "wait_for_stage",
         lambda: client.start_update_with_start_workflow(
             Waits.change, 1, wait_for_stage="now",
             start_workflow_operation=WithStartWorkflowOperation(
                 Waits.run, 1, id="ws", task_queue=TQ,
                 id_conflict_policy=IdConflictPolicy.USE_EXISTING))),
    ]
    before = database_digest(database_url)
    problems: list[str] = []
    for index, (expected, words, call) in enumerate(cases):
        try:
            await asyncio.wait_for(call(), 30)
        except TimeoutError:
            problems.append(f"case {index} ({words}): hung")
        except Exception as exc:
            if not isinstance(exc, expected) or words not in str(exc):
                problems.append(f"case {index} ({words}): {type(exc).__name__}: {exc}"[:300])
        else:
            problems.append(f"case {index} ({words}): nothing raised")
        if database_digest(database_url) != before:
            problems.append(f"case {index} ({words}): the database changed")
            before = database_digest(database_url)
    assert problems == [], f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


def test_retry_policies_are_checked_where_they_are_made() -> None:
    for bad in ({"backoff_coefficient": math.nan}, {"backoff_coefficient": "2"},
                {"maximum_attempts": -1}, {"maximum_attempts": 2.5},
                {"initial_interval": 1}, {"maximum_interval": timedelta(0)},
                {"non_retryable_error_types": "ValueError"}):
        with pytest.raises(InvalidArgumentError, match="RetryPolicy"):
            RetryPolicy(**bad)
    # a long-failing activity's back-off stays at its cap (it overflowed at attempt 1,025,
    # and the attempt's end could not be recorded)
    assert RetryPolicy().delay_after(5000) == 100.0
