"""A child workflow whose worker is SIGKILLed finishes on another worker; its parent,
served by a worker process that never dies, never notices."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perdure import Client, WorkflowNotFoundError, WorkflowStatus
from perdure.history import ActivityCompleted, event_type_name

from .process_workflows import CHILD_TASK_QUEUE, StepsParent
from .test_crash_recovery import WorkerProcesses

pytestmark = pytest.mark.slow
PARENT_TASK_QUEUE = "crash-parent"
COUNT = 16


@pytest.fixture
def processes(database_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(database_url, tmp_path / "executions.log")
    try:
        yield procs
    finally:
        procs.stop_all()


def _executions(path: Path) -> list[tuple[int, int, int]]:
    """(index, attempt, pid) of every ``step`` execution, in order."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        index, attempt, pid = line.split()
        rows.append((int(index), int(attempt), int(pid)))
    return rows


async def _completed_activities(client: Client, workflow_id: str) -> int:
    try:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
    except WorkflowNotFoundError:
        return 0  # the parent has not started it yet
    return sum(isinstance(e, ActivityCompleted) for e in history.events)


async def test_sigkilled_child_worker_is_replaced_and_parent_never_notices(
    processes: WorkerProcesses,
) -> None:
    client = await Client.connect(processes.url)
    try:
        parent_worker = processes.start(PARENT_TASK_QUEUE)
        first = processes.start(CHILD_TASK_QUEUE)
        handle = await client.start_workflow(StepsParent.run, COUNT, id="parent",
                                             task_queue=PARENT_TASK_QUEUE)
        child_id = "parent/steps"
        deadline = time.monotonic() + 30
        while await _completed_activities(client, child_id) < 5:
            assert time.monotonic() < deadline, "the child made no progress"
            await asyncio.sleep(0.02)
        processes.kill(first)
        done_before_kill = await _completed_activities(client, child_id)
        assert done_before_kill < COUNT, "the child finished before the kill: nothing tested"
        child = client.get_workflow_handle(child_id)
        assert (await child.describe()).status == WorkflowStatus.RUNNING
        assert (await handle.describe()).status == WorkflowStatus.RUNNING

        second = processes.start(CHILD_TASK_QUEUE)
        started = time.monotonic()
        expected = sum(i * i for i in range(COUNT))
        assert await handle.result(timeout=60) == f"{child_id}: {expected}"
        recovery = time.monotonic() - started
        assert parent_worker.poll() is None  # the parent's worker ran throughout

        # the parent saw one start and one completion of one child, and nothing else
        parent_events = [event_type_name(e) for e in (await handle.fetch_history()).events]
        assert parent_events == [
            "WorkflowStarted", "WorkflowTaskCompleted", "ChildWorkflowScheduled",
            "ChildWorkflowStarted", "WorkflowTaskCompleted",
            "ChildWorkflowCompleted", "WorkflowTaskCompleted", "WorkflowCompleted",
        ]
        children = await client.list_workflows(parent_workflow_id="parent")
        assert [(c.workflow_id, c.status) for c in children] == [
            (child_id, WorkflowStatus.COMPLETED)
        ]  # one child run: it was not restarted, only resumed

        # the child: every activity recorded completed exactly once
        child_history = (await child.fetch_history()).events
        completed = [e.seq for e in child_history if isinstance(e, ActivityCompleted)]
        assert len(completed) == COUNT and len(set(completed)) == COUNT
        assert event_type_name(child_history[-1]) == "WorkflowCompleted"

        # executions: every step ran; only the one in flight at the kill may have run twice
        runs = _executions(processes.executions)
        per_index = collections.Counter(index for index, _, _ in runs)
        assert sorted(per_index) == list(range(COUNT))
        twice = [index for index, n in per_index.items() if n > 1]
        assert len(twice) <= 1, per_index
        assert all(index >= done_before_kill for index in twice), (twice, done_before_kill)
        # the work was really split between the killed worker and its replacement
        pids = {pid for _, _, pid in runs}
        assert pids == {first.pid, second.pid}, (pids, first.pid, second.pid)
        assert all(pid == first.pid for index, _, pid in runs if index < done_before_kill)
        assert all(pid == second.pid for index, _, pid in runs if index > done_before_kill)

        child_events = collections.Counter(event_type_name(e) for e in child_history)
        print(f"\nchild activities completed before the kill: {done_before_kill}; ran twice: "
              f"{twice}; recovery after restart: {recovery:.2f}s; child events: "
              f"{dict(child_events)}; parent events: {parent_events}")
    finally:
        await client.close()
