"""A deliberately non-deterministic workflow (it calls ``random.random()``) fails its
workflow task with the determinism guard's message at once, not with a confusing mismatch
later; with ``determinism_guard="warn"`` it completes, with a warning logged."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest

from perdure import ConfigurationError, WorkerOptions, WorkflowStatus, activity, workflow
from perdure.testing import WorkflowEnvironment
from perdure.workflow import _guard

from ._helpers import wait_until

TQ = "determinism-guard"
LINE = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
            if text.rstrip().endswith("# the-bug"))


@activity.defn
async def measure(n: int) -> float:
    # activity code may read the clock and draw random numbers: its result is recorded
    return n + time.time() * 0 + random.random() * 0


@workflow.defn
class Dice:
    @workflow.run
    async def run(self, n: int) -> float:
        base = await workflow.execute_activity(measure, n, start_to_close_timeout=10)
        return base + random.random()  # the-bug


async def test_a_non_deterministic_call_fails_the_task_with_the_guards_message(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Dice], activities=[measure]):
        handle = await env.client.start_workflow(Dice.run, 1, id="dice", task_queue=TQ)

        async def retried() -> object:
            description = await handle.describe()
            return description if (description.workflow_task_attempt or 0) >= 2 else None

        description = await wait_until(retried, what="the workflow task failed twice")
    message = description.last_workflow_task_failure or ""
    assert message.startswith("NondeterminismError: workflow 'Dice' (id 'dice', run ")
    assert "called random.random() at " in message
    assert f"test_determinism_guard.py:{LINE} in run" in message
    assert "Use workflow.random()" in message
    assert "would not be deterministic" in message
    assert "recorded:" not in message  # not a replay mismatch
    assert description.status == WorkflowStatus.RUNNING
    history = await handle.fetch_history()
    names = [type(event).__name__ for event in history.events]
    assert "WorkflowCompleted" not in names
    # the activity ran: its result waits (in the inbox, or in history) for a task that works
    assert description.pending_events >= 1 or "ActivityCompleted" in names


async def test_in_warn_mode_the_workflow_completes_with_a_warning(
    env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_guard, "_warned", set())  # once per call site and process
    options = WorkerOptions(determinism_guard="warn")
    with caplog.at_level(logging.WARNING, logger="perdure.workflow"):
        async with env.worker(task_queue=TQ, workflows=[Dice], activities=[measure],
                              options=options):
            handle = await env.client.start_workflow(Dice.run, 1, id="dice-warn",
                                                     task_queue=TQ)
            result = await handle.result(timeout=10)
    assert 1 <= result < 2
    description = await handle.describe()
    assert description.status == WorkflowStatus.COMPLETED
    assert description.last_workflow_task_failure is None
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "perdure.workflow" and "called random.random()" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, though the activation ran twice
    assert f"test_determinism_guard.py:{LINE} in run" in warnings[0]
    assert "Use workflow.random()" in warnings[0]
    assert "determinism_guard='warn'" in warnings[0]


async def test_an_unknown_guard_mode_is_a_configuration_error(env: WorkflowEnvironment) -> None:
    with pytest.raises(ConfigurationError, match="determinism_guard"):
        env.worker(task_queue=TQ, workflows=[Dice],
                   options=WorkerOptions(determinism_guard="loud"))
