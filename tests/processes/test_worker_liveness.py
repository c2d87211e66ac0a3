"""A worker in its own process, frozen (SIGSTOP) or starved (its event loop blocked)
while it holds work, on both backends.

* Frozen past the dead-worker timeout, it is dead to the others: its attempt is
  reclaimed and runs again elsewhere; when it thaws, its late result is rejected, and
  counted in ``Worker.stats`` (also on the fused path, which used to drop the count).
* Starved (workflow code or an activity blocking its event loop for longer than the
  dead-worker timeout), it is alive (DESIGN's invariant 5): its liveness heartbeat does
  not wait for the loop, so nothing of its work is reclaimed and nothing runs twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from perdure import Client, Worker, WorkerOptions, activity
from perdure.history import ActivityCompleted

from .liveness_workflows import (
    EXECUTIONS_ENV,
    BlockTheLoop,
    OneBlockingActivity,
    WaitForGo,
    block_loop,
    executions,
    wait_for_go,
)

WORKER = Path(__file__).with_name("liveness_worker_process.py")
pytestmark = pytest.mark.slow
DEAD_AFTER = 1.0
"""The dead-worker timeout of every worker here (``liveness_worker_process.OPTIONS``)."""


class WorkerProcess:
    """The worker subprocess: its identity, its stats, and SIGSTOP/SIGCONT."""

    def __init__(self, url: str, folder: Path, task_queue: str, *,
                 loop_stall_timeout: float = 60.0) -> None:
        self.url = url
        self.app = f"perdure-liveness-{uuid.uuid4().hex[:8]}"
        if url.startswith("postgresql"):  # names its sessions, to see when they are idle
            url += f"&application_name={self.app}"
        self.stats_file = folder / "stats.json"
        env = dict(os.environ, **{EXECUTIONS_ENV: str(folder / "executions.log")},
                   PERDURE_TEST_LOOP_STALL_TIMEOUT=str(loop_stall_timeout))
        self.stderr = folder / "worker.err"
        with self.stderr.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), url, task_queue, str(self.stats_file)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        assert self.proc.stdout is not None
        self.identity = self.proc.stdout.readline().strip()
        assert self.identity, "the worker process did not start"

    def stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stats_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _holds_locks(self) -> bool:
        """Whether the (stopped) process holds a database lock others would wait for."""
        if self.url.startswith("sqlite"):
            conn = sqlite3.connect(self.url.split(":///", 1)[1], timeout=0.2)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                return True
            finally:
                conn.close()
        import psycopg

        time.sleep(0.05)  # a statement the server was running finishes
        with psycopg.connect(self.url.split("?")[0], autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND state <> 'idle'", (self.app,)).fetchone()
        return bool(row and row[0])

    def freeze(self) -> None:
        """SIGSTOP, at a moment when it holds no lock (else thaw and try again): a frozen
        transaction would stall every other process, not just this one."""
        for _ in range(100):
            self.proc.send_signal(signal.SIGSTOP)
            if not self._holds_locks():
                return
            self.proc.send_signal(signal.SIGCONT)
            time.sleep(0.03)
        raise AssertionError("the worker always held a database lock when stopped")

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def worker_process(database_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(database_url, tmp_path, "liveness")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def client(database_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    os.environ[EXECUTIONS_ENV] = str(tmp_path / "executions.log")  # the in-process worker's
    c = await Client.connect(database_url)
    try:
        yield c
    finally:
        await c.close()
        os.environ.pop(EXECUTIONS_ENV, None)


async def _until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


async def test_a_frozen_workers_late_result_is_rejected_and_counted(
    worker_process: WorkerProcess, client: Client, tmp_path: Path,
) -> None:
    log = tmp_path / "executions.log"
    handle = await client.start_workflow(WaitForGo.run, str(tmp_path), id="frozen",
                                         task_queue="liveness")
    # attempt 1 runs in the worker process, which has the run cached (the fused path)
    await _until(lambda: executions(log), "attempt 1 to start")
    assert executions(log) == [("wait_for_go", 1, worker_process.proc.pid)]
    worker_process.freeze()
    # another worker finds it silent past the dead-worker timeout: attempt 2, here
    options = WorkerOptions(liveness_interval=0.2, dead_worker_timeout=DEAD_AFTER)
    async with Worker(client, task_queue="liveness", activities=[wait_for_go],
                      options=options):
        await _until(lambda: len(executions(log)) == 2, "the attempt to be reclaimed")
        assert executions(log)[1] == ("wait_for_go", 2, os.getpid())
        # the frozen worker thaws and finishes attempt 1: too late
        (tmp_path / "go-1").touch()
        worker_process.thaw()
        stats = await _until(
            lambda: worker_process.stats().get("rejected_activity_results"),
            "the late result to be rejected and counted", timeout=20.0)
        assert stats == 1
        (tmp_path / "go-2").touch()
        assert await handle.result(timeout=30) == "attempt 2"
    history = await handle.fetch_history()
    assert [e.attempt for e in history.events if isinstance(e, ActivityCompleted)] == [2]
    worker_process.stop()
    final = worker_process.stats()
    assert final["rejected_activity_results"] == 1 and final["fused_completions"] == 0


async def test_a_starved_worker_is_alive_and_its_work_runs_once(
    worker_process: WorkerProcess, client: Client, tmp_path: Path,
) -> None:
    """Workflow code, then two activities, each block the worker's event loop for 2.5
    times the dead-worker timeout. Before, its liveness heartbeat (a task on that loop)
    stopped meanwhile: another worker declared it dead, reclaimed the activity and ran it
    again, and released the workflow task, so that the blocking activation was rejected,
    ran again, and again (it never finished)."""
    log = tmp_path / "executions.log"
    seconds = 2.5 * DEAD_AFTER
    options = WorkerOptions(liveness_interval=0.2, dead_worker_timeout=DEAD_AFTER)
    # another worker sweeps for dead workers, and would run any reclaimed attempt
    async with Worker(client, task_queue="liveness", activities=[block_loop],
                      options=options) as other:
        handle = await client.start_workflow(BlockTheLoop.run, seconds, id="starved",
                                             task_queue="liveness")
        assert await handle.result(timeout=60) == ["first", "second"]
    pid = worker_process.proc.pid
    assert executions(log) == [("activation", 1, pid), ("first", 1, pid),
                               ("second", 1, pid)]
    assert other.stats["activities"] == 0
    worker_process.stop()
    stats = worker_process.stats()
    assert stats["rejected_completions"] == 0 and stats["rejected_activity_results"] == 0
    assert stats["task_failures"] == 0


@activity.defn(name="block_loop")
async def block_loop_stand_in(name: str, seconds: float) -> str:
    """``block_loop`` as the other worker runs it: without blocking."""
    return f"{name} (stand-in)"


async def test_a_loop_stuck_past_the_stall_timeout_gives_its_work_up(
    database_url: str, client: Client, tmp_path: Path,
) -> None:
    """The other side of the bargain: a loop stuck for good must not keep its work. Past
    ``loop_stall_timeout`` the stuck worker's heartbeat stops and its attempt is taken
    over; its late result is rejected."""
    stuck = WorkerProcess(database_url, tmp_path, "liveness", loop_stall_timeout=0.5)
    try:
        options = WorkerOptions(liveness_interval=0.2, dead_worker_timeout=DEAD_AFTER)
        async with Worker(client, task_queue="liveness", activities=[block_loop_stand_in],
                          options=options) as other:
            handle = await client.start_workflow(OneBlockingActivity.run, 4 * DEAD_AFTER,
                                                 id="stuck", task_queue="liveness")
            assert await handle.result(timeout=60) == "only (stand-in)"
        assert other.stats["activities"] == 1
        stuck.stop()
        assert stuck.stats()["rejected_activity_results"] == 1
        assert "its event loop has not run for" in stuck.stderr.read_text()
    finally:
        stuck.stop()
