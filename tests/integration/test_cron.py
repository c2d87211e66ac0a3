"""Cron workflows (``start_workflow(cron_schedule=...)``), with Temporal's meaning, under
time skipping, on both backends."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import timedelta

import pytest

from perdure import (
    ApplicationError,
    ChildWorkflowError,
    InvalidArgumentError,
    RetryPolicy,
    WorkflowFailureError,
    WorkflowNotFoundError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.testing import WorkflowEnvironment

TQ = "cron"


@dataclasses.dataclass
class Seen:
    """What one run saw when its code began."""

    now: float
    attempt: int
    cron_schedule: str | None
    last_result: int | None
    has_last_result: bool
    last_failure: str | None


SEEN: list[Seen] = []


@activity.defn
async def observe(seen: Seen) -> int:
    """Records a run's view; returns how many runs began so far (1 for the first)."""
    SEEN.append(seen)
    return len(SEEN)


@workflow.defn
class Report:
    """A cron job: counts the chain's completed runs; fails the runs it is told to."""

    @workflow.run
    async def run(self, fail_runs: list[int]) -> int:
        failure = workflow.get_last_failure()
        previous = workflow.get_last_completion_result(int)
        number = await workflow.execute_activity(observe, Seen(
            now=workflow.now().timestamp(), attempt=workflow.info().attempt,
            cron_schedule=workflow.info().cron_schedule, last_result=previous,
            has_last_result=workflow.has_last_completion_result(),
            last_failure=str(failure) if failure is not None else None,
        ), start_to_close_timeout=10)
        if number in fail_runs:
            raise ApplicationError(f"run {number} failed")
        return (previous or 0) + 1


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


async def _runs(env: WorkflowEnvironment, workflow_id: str) -> list[tuple[str, object]]:
    """(status, result or failure message) of every run of ``workflow_id``, oldest first."""
    runs: list[tuple[str, object]] = []
    for description in reversed(await env.client.list_workflows(limit=1000)):
        if description.workflow_id != workflow_id:
            continue
        record = await env.client.store.get_run(workflow_id, description.run_id)
        outcome: object = None
        if record.result is not None:
            outcome = json.loads(record.result)
        elif record.failure is not None and description.status == WorkflowStatus.FAILED:
            outcome = json.loads(record.failure)["message"]
        runs.append((str(description.status), outcome))
    return runs


async def test_a_cron_runs_at_every_tick_of_the_skipped_interval(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Report], activities=[observe]):
        handle = await env.client.start_workflow(Report.run, [], id="report", task_queue=TQ,
                                                 cron_schedule="*/5 * * * *")
        started = env.client.store.clock.now()
        # the run exists at once, but its code waits for the first tick
        description = await handle.describe()
        assert description.status == WorkflowStatus.RUNNING
        assert description.history_length == 1
        assert SEEN == []
        await env.sleep(timedelta(minutes=30))
    ticks = [s.now for s in SEEN]
    assert len(ticks) == 6
    assert all(t % 300 == 0 for t in ticks)  # on the five-minute marks, exactly
    assert started < ticks[0] <= started + 300
    assert [b - a for a, b in itertools.pairwise(ticks)] == [300.0] * 5
    assert {s.cron_schedule for s in SEEN} == {"*/5 * * * *"}
    assert [s.last_result for s in SEEN] == [None, 1, 2, 3, 4, 5]
    assert [s.has_last_result for s in SEEN] == [False] + [True] * 5
    runs = await _runs(env, "report")
    assert runs == [("completed", n) for n in range(1, 7)] + [("running", None)]
    # a query, signal or describe by id reaches the run waiting for the next tick
    assert (await env.client.get_workflow_handle("report").describe()).history_length == 1


async def test_a_failed_run_is_followed_by_the_next_tick(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Report], activities=[observe]):
        await env.client.start_workflow(Report.run, [2], id="hourly", task_queue=TQ,
                                        cron_schedule="@every 1h")
        await env.sleep(timedelta(hours=3))
    ticks = [s.now for s in SEEN]
    assert [b - a for a, b in itertools.pairwise(ticks)] == [3600.0, 3600.0]
    assert await _runs(env, "hourly") == [
        ("completed", 1), ("failed", "run 2 failed"), ("completed", 2), ("running", None),
    ]
    # the run after the failure sees it, and the last completion result carried over it
    assert [s.last_failure for s in SEEN] == [None, None, "run 2 failed"]
    assert [s.last_result for s in SEEN] == [None, 1, 1]


async def test_the_retry_policy_retries_a_run_before_the_chain_moves_on(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Report], activities=[observe]):
        await env.client.start_workflow(
            Report.run, [2], id="retried", task_queue=TQ, cron_schedule="0 * * * *",
            retry_policy=RetryPolicy(initial_interval=timedelta(minutes=10), maximum_attempts=2),
        )
        await env.sleep(timedelta(hours=3))
    ticks = [s.now for s in SEEN]
    # the hour's first run, the second run, its retry ten minutes later, the third run
    assert [s.attempt for s in SEEN] == [1, 1, 2, 1]
    assert [b - a for a, b in itertools.pairwise(ticks)] == [3600.0, 600.0, 3000.0]
    assert SEEN[2].last_failure == "run 2 failed"  # the retry sees why
    assert SEEN[3].last_failure is None and SEEN[3].last_result == 2
    statuses = [status for status, _ in await _runs(env, "retried")]
    assert statuses == ["completed", "failed", "completed", "completed", "running"]


async def test_terminate_ends_the_chain_and_result_follows_it(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Report], activities=[observe]):
        first = await env.client.start_workflow(Report.run, [], id="stoppable", task_queue=TQ,
                                                cron_schedule="@hourly")
        await env.sleep(timedelta(hours=2))
        assert len(SEEN) == 2
        # result() follows the chain from the first run: no run's result ends it (and
        # while it waits, time skips from tick to tick)
        with pytest.raises(TimeoutError):
            await first.result(timeout=0.3)
        await env.client.get_workflow_handle("stoppable").terminate("enough")
        with pytest.raises(WorkflowFailureError) as info:
            await first.result(timeout=10)
        assert info.value.status == "terminated"
        ran = len(SEEN)
        await env.sleep(timedelta(hours=3))
    assert len(SEEN) == ran
    statuses = [status for status, _ in await _runs(env, "stoppable")]
    assert statuses[-1] == "terminated" and set(statuses[:-1]) == {"completed"}
    # the terminated run may have begun (at a tick reached while result() waited)
    assert len(statuses) - 1 <= ran <= len(statuses)


@workflow.defn
class Waits:
    """A cron job whose run waits for cancellation (and lets it end the run)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


async def test_cancel_ends_the_chain(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Waits]):
        handle = await env.client.start_workflow(Waits.run, id="cancelled", task_queue=TQ,
                                                 cron_schedule="@daily")
        await env.sleep(timedelta(days=1))
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=30)
        assert info.value.status == "canceled"
        await env.sleep(timedelta(days=2))
    runs = await env.client.list_workflows(limit=10)
    assert [str(d.status) for d in runs] == ["canceled"]


@pytest.mark.parametrize("expression", [
    "61 * * * *", "* * * *", "* * * * * *", "@every", "@every 5x", "@fortnightly",
    "CRON_TZ=Europe/Paris 0 9 * * *", "", "0 0 31 2 *",
])
async def test_bad_expressions_are_refused_at_start(
    env: WorkflowEnvironment, expression: str,
) -> None:
    with pytest.raises(InvalidArgumentError, match="cron schedule") as info:
        await env.client.start_workflow(Report.run, [], id="bad", task_queue=TQ,
                                        cron_schedule=expression)
    assert repr(expression) in str(info.value)
    with pytest.raises(WorkflowNotFoundError):
        await env.client.get_workflow_handle("bad").describe()


@workflow.defn
class Supervisor:
    """Runs a cron child and waits for it: it hears of the chain only when it ends."""

    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.execute_child_workflow(Report.run, [], id="child-report",
                                                  cron_schedule="@every 10m")
        except ChildWorkflowError as error:
            return f"child chain ended: {error.__cause__}"
        return "child completed"


async def test_a_cron_child_reports_to_its_parent_when_the_chain_ends(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Supervisor, Report],
                          activities=[observe]):
        parent = await env.client.start_workflow(Supervisor.run, id="supervisor",
                                                 task_queue=TQ)
        await env.sleep(timedelta(minutes=35))
        assert len(SEEN) == 3
        assert {s.cron_schedule for s in SEEN} == {"@every 10m"}
        assert [b - a for a, b in itertools.pairwise(s.now for s in SEEN)] == [600.0] * 2
        # three runs completed; the parent heard nothing of them
        assert (await parent.describe()).status == WorkflowStatus.RUNNING
        await env.client.get_workflow_handle("child-report").terminate("chain over")
        assert (await parent.result(timeout=30)).startswith("child chain ended: ")
    statuses = [status for status, _ in await _runs(env, "child-report")]
    assert statuses == ["completed"] * 3 + ["terminated"]
