"""NaN and infinity are refused where they are encoded, never stored as ``null``.

JSON has no NaN or infinity; msgspec (and pydantic) write them as ``null``, which would
change the value silently and then fail a ``float`` parameter somewhere else, later.
Each call that encodes a value refuses them with PayloadEncodingError naming what and
where; an activity whose result holds one fails once, for good (another attempt would
do the paid work again and return the same)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from perdure import (
    ActivityError,
    ApplicationError,
    InvalidArgumentError,
    PayloadEncodingError,
    WorkflowNotFoundError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.testing import WorkflowEnvironment
from tests._digest import database_digest

from ._helpers import wait_until

TQ = "non-finite"
CALLS: list[int] = []


@dataclasses.dataclass
class Score:
    label: str
    value: float


@workflow.defn
class Scores:
    def __init__(self) -> None:
        self.scores: list[float] = []
        self.done = False

    @workflow.run
    async def run(self, first: float) -> list[float]:
        self.scores.append(first)
        await workflow.wait_condition(lambda: self.done)
        return self.scores

    @workflow.signal
    def add(self, value: float) -> None:
        self.scores.append(value)

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.update
    def add_now(self, value: float) -> int:
        self.scores.append(value)
        return len(self.scores)

    @workflow.query
    def scaled(self, factor: float) -> list[float]:
        return [s * factor for s in self.scores]


@activity.defn
async def judge(text: str) -> Score:
    CALLS.append(1)
    return Score(label=text, value=math.nan)  # a model's score that is not a number


@workflow.defn
class Judged:
    @workflow.run
    async def run(self) -> str:
        try:
            score = await workflow.execute_activity(judge, "essay", start_to_close_timeout=10)
        except ActivityError as exc:
            cause = exc.__cause__
            assert isinstance(cause, ApplicationError)
            return f"{cause.type} non_retryable={cause.non_retryable}: {cause.message}"
        return f"got {score!r}"


@workflow.defn
class NotANumber:
    @workflow.run
    async def run(self) -> float:
        return math.inf


@workflow.defn
class Commands:
    """Each command with a NaN or infinity is refused at the call, catchably."""

    @workflow.run
    async def run(self) -> list[str]:
        refused: list[str] = []
        for what, call in (
            ("activity argument", lambda: workflow.execute_activity(
                judge, math.nan, start_to_close_timeout=10)),
            ("sleep", lambda: workflow.sleep(math.inf)),
            ("sleep nan", lambda: workflow.sleep(math.nan)),
            ("wait timeout", lambda: workflow.wait_condition(lambda: False, timeout=math.nan)),
        ):
            try:
                await call()
            except (PayloadEncodingError, InvalidArgumentError) as exc:
                refused.append(f"{what}: {type(exc).__name__}")
        for what, upsert in (("memo", lambda: workflow.upsert_memo({"x": math.nan})),
                             ("search attribute",
                              lambda: workflow.upsert_search_attributes({"x": math.inf}))):
            try:
                upsert()
            except (PayloadEncodingError, InvalidArgumentError) as exc:
                refused.append(f"{what}: {type(exc).__name__}")
        return refused


async def test_client_refuses_nan_and_infinity_where_it_encodes(
    env: WorkflowEnvironment, database_url: str,
) -> None:
    client = env.client
    handle = await client.start_workflow(Scores.run, 1.5, id="scores", task_queue=TQ)
    before = database_digest(database_url)
    cases: list[tuple[str, Any]] = [
        ("argument 1 of workflow 'Scores'",
         lambda: client.start_workflow(Scores.run, math.nan, id="nan-start", task_queue=TQ)),
        ("argument 1 of signal 'add'", lambda: handle.signal(Scores.add, -math.inf)),
        ("argument 1 of update 'add_now'",
         lambda: handle.execute_update(Scores.add_now, math.nan)),
        ("argument 1 of query", lambda: handle.query(Scores.scaled, math.inf)),
        ("the memo", lambda: client.start_workflow(Scores.run, 1.0, id="nan-memo",
                                                   task_queue=TQ, memo={"p": [1.0, math.nan]})),
        ("argument 1 of signal 'add'", lambda: client.signal_with_start(
            Scores.run, Scores.add, (math.nan,), 1.0, id="nan-sws", task_queue=TQ)),
        ("argument 2 of workflow 'Scores'", lambda: client.start_workflow(
            "Scores", 1.0, {"deep": [Score("x", math.inf)]}, id="nan-deep", task_queue=TQ)),
    ]
    for what, call in cases:
        with pytest.raises(PayloadEncodingError) as info:
            await call()
        message = str(info.value)
        assert what in message, message
        assert "nan" in message or "inf" in message, message
        assert "null" in message  # says what would have happened
        assert database_digest(database_url) == before, what
    with pytest.raises(PayloadEncodingError, match=r"\['deep'\]\[0\]\.value is inf"):
        await client.start_workflow("Scores", {"deep": [Score("x", math.inf)]},
                                    id="nan-path", task_queue=TQ)
    for workflow_id in ("nan-start", "nan-memo", "nan-sws", "nan-deep", "nan-path"):
        with pytest.raises(WorkflowNotFoundError):
            await client.get_workflow_handle(workflow_id).describe()
    # None is still None, and a finite float still a float
    await handle.signal(Scores.add, 2.5)
    await handle.signal(Scores.finish)
    async with env.worker(task_queue=TQ, workflows=[Scores]):
        assert sorted(await handle.result(timeout=10)) == [1.5, 2.5]


async def test_an_activity_result_with_nan_fails_once_for_good(env: WorkflowEnvironment) -> None:
    CALLS.clear()
    async with env.worker(task_queue=TQ, workflows=[Judged], activities=[judge]):
        handle = await env.client.start_workflow(Judged.run, id="judged", task_queue=TQ)
        outcome = await handle.result(timeout=30)
    assert outcome.startswith("PayloadEncodingError non_retryable=True: cannot serialize "
                              "result of activity 'judge'"), outcome
    assert "the value at .value is nan" in outcome
    assert CALLS == [1]  # not retried: the (paid) call ran once


async def test_a_workflow_result_with_infinity_fails_the_task_not_the_value(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[NotANumber]):
        handle = await env.client.start_workflow(NotANumber.run, id="inf-result",
                                                 task_queue=TQ)

        async def failed() -> Any:
            description = await handle.describe()
            return description if description.last_workflow_task_failure else None

        description = await wait_until(failed, what="the workflow task to fail")
    assert description.status == WorkflowStatus.RUNNING  # not completed with null
    assert "PayloadEncodingError" in (description.last_workflow_task_failure or "")
    assert "result of workflow 'NotANumber'" in (description.last_workflow_task_failure or "")


async def test_workflow_commands_with_nan_are_refused_at_the_call(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Commands], activities=[judge]):
        handle = await env.client.start_workflow(Commands.run, id="commands", task_queue=TQ)
        refused = await handle.result(timeout=30)
    assert refused == [
        "activity argument: PayloadEncodingError", "sleep: InvalidArgumentError",
        "sleep nan: InvalidArgumentError", "wait timeout: InvalidArgumentError",
        "memo: PayloadEncodingError", "search attribute: InvalidArgumentError",
    ]
    events = [type(e).__name__ for e in (await handle.fetch_history()).events]
    assert "TimerStarted" not in events and "ActivityScheduled" not in events
