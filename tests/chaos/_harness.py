"""What both chaos tests share: a fleet of worker subprocesses, the executions log, and
the checks that nothing was lost and nothing recorded twice."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from perdure import Client, WorkflowStatus
from perdure.history import ActivityCompleted

from .chaos_workflows import EXECUTIONS_ENV, STEP_SECONDS_ENV, ChaosSteps, expected_result

T = TypeVar("T")

WORKER = Path(__file__).with_name("chaos_worker.py")
TASK_QUEUE = "chaos"


@dataclasses.dataclass
class WorkerProcess:
    number: int
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float

    def ready(self) -> bool:
        return self.out.exists() and b"ready" in self.out.read_bytes()

    def alive(self) -> bool:
        return self.proc.poll() is None


class WorkerFleet:
    """Worker subprocesses on one database; stdout/stderr of each go to files in ``logs``."""

    def __init__(self, url: str, logs: Path, *, step_seconds: float = 0.004,
                 activity_slots: int = 100) -> None:
        self.activity_slots = activity_slots
        self.url = url
        self.logs = logs
        self.executions = logs / "executions.log"
        self.step_seconds = step_seconds
        self.workers: list[WorkerProcess] = []
        self.kills = 0
        self.killed_pids: set[int] = set()

    def start(self) -> WorkerProcess:
        number = len(self.workers)
        out, err = self.logs / f"worker-{number}.out", self.logs / f"worker-{number}.err"
        env = dict(os.environ)
        env[EXECUTIONS_ENV] = str(self.executions)
        env[STEP_SECONDS_ENV] = str(self.step_seconds)
        env["PERDURE_CHAOS_ACTIVITY_SLOTS"] = str(self.activity_slots)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, str(WORKER), self.url, TASK_QUEUE],
                                    stdout=stdout, stderr=stderr, env=env)
        worker = WorkerProcess(number, proc, out, err, time.monotonic())
        self.workers.append(worker)
        return worker

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    async def wait_ready(self, workers: list[WorkerProcess], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(w.ready() for w in workers):
            for w in workers:
                if not w.alive():
                    raise AssertionError(
                        f"worker {w.number} exited with {w.proc.returncode} before it was "
                        f"ready:\n{w.err.read_text(errors='replace')[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not ready within {timeout}s:\n{self.stderr_tail()}")
            await asyncio.sleep(0.05)

    def victim(self, rng: random.Random, spare: WorkerProcess | None = None) -> WorkerProcess:
        """A random serving worker (not ``spare``, the replacement just started)."""
        serving = [w for w in self.live() if w.ready() and w is not spare]
        return rng.choice(serving or [w for w in self.live() if w is not spare])

    def kill(self, worker: WorkerProcess) -> None:
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(timeout=10)
        self.kills += 1
        self.killed_pids.add(worker.proc.pid)

    def unexpected_exits(self) -> list[str]:
        """Workers that died on their own (not SIGKILLed by us)."""
        return [
            f"worker {w.number} exited with {w.proc.returncode}:\n"
            f"{w.err.read_text(errors='replace')[-3000:]}"
            for w in self.workers
            if w.proc.poll() is not None and w.proc.returncode != -signal.SIGKILL
        ]

    def stderr_tail(self, chars: int = 1500) -> str:
        parts = []
        for w in self.workers:
            text = w.err.read_text(errors="replace") if w.err.exists() else ""
            if text.strip():
                parts.append(f"--- worker {w.number} (pid {w.proc.pid}) stderr:\n{text[-chars:]}")
        return "\n".join(parts) or "(no worker wrote to stderr)"

    def logged(self, text: str) -> int:
        """How many lines of the workers' stderr contain ``text``."""
        return sum(
            line.count(text) > 0
            for w in self.workers if w.err.exists()
            for line in w.err.read_text(errors="replace").splitlines()
        )

    def assert_no_errors_logged(self) -> None:
        """No worker logged an ERROR or a traceback (a store call that failed instead of
        waiting out the outage, a task that died)."""
        if self.logged(" ERROR ") or self.logged("Traceback"):
            raise AssertionError(f"a worker logged errors:\n{self.stderr_tail(6000)}")

    def stop_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def read_executions(self) -> collections.Counter[tuple[str, int]]:
        """How many times each (workflow id, activity seq) started executing."""
        runs: collections.Counter[tuple[str, int]] = collections.Counter()
        if self.executions.exists():
            for line in self.executions.read_text().splitlines():
                workflow_id, seq, _attempt, _pid, _at = line.split()
                runs[workflow_id, int(seq)] += 1
        return runs

    def executed_attempts(self) -> dict[tuple[str, int, int], dict[int, float]]:
        """Every (workflow id, activity seq, attempt) that started executing, with the
        pids of the processes that ran it and when (time.time())."""
        attempts: dict[tuple[str, int, int], dict[int, float]] = collections.defaultdict(dict)
        if self.executions.exists():
            for line in self.executions.read_text().splitlines():
                workflow_id, seq, attempt, pid, at = line.split()
                attempts[workflow_id, int(seq), int(attempt)][int(pid)] = float(at)
        return attempts


async def within(awaitable: Awaitable[T], deadline: float, what: str) -> T:
    """Await with the test's deadline (``time.monotonic()``): a store call must not hang
    the test forever."""
    try:
        return await asyncio.wait_for(awaitable, max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        raise AssertionError(f"{what} did not return before the test's deadline") from None


def workflow_id(key: int) -> str:
    return f"chaos-{key:04d}"


async def start_workflows(client: Client, keys: range, count: int) -> None:
    """Start one workflow per key, 50 at a time (they share commits)."""
    key_list = list(keys)
    for first in range(0, len(key_list), 50):
        await asyncio.gather(*(
            client.start_workflow(ChaosSteps.run, key, count, id=workflow_id(key),
                                  task_queue=TASK_QUEUE)
            for key in key_list[first:first + 50]
        ))


def _count_completed_activities(url: str) -> int:
    import psycopg

    base, _, schema = url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        if schema:
            conn.execute(f'SET search_path TO "{schema}"')
        row = conn.execute("SELECT count(*) FROM history_events "
                           "WHERE event_type = 'ActivityCompleted'").fetchone()
    return int(row[0]) if row else 0


async def completed_activities(url: str) -> int:
    """How many activity completions the histories hold (PostgreSQL): progress."""
    return await asyncio.to_thread(_count_completed_activities, url)


async def count_closed(client: Client, total: int) -> int:
    running = await client.list_workflows(status=WorkflowStatus.RUNNING, limit=total + 1)
    return total - len(running)


async def stuck_report(client: Client, fleet: WorkerFleet, limit: int = 10) -> str:
    """Which workflows still run, what describe() says of them, and what workers logged."""
    running = await client.list_workflows(status=WorkflowStatus.RUNNING, limit=100_000)
    lines = [f"{len(running)} workflow(s) still running: "
             f"{', '.join(sorted(d.workflow_id for d in running)[:50])}"]
    for description in sorted(running, key=lambda d: d.workflow_id)[:limit]:
        detail = await client.get_workflow_handle(description.workflow_id).describe()
        lines.append(f"  {detail}")
    live = fleet.live()
    lines.append(f"live workers: {[(w.number, w.proc.pid, w.ready()) for w in live]}; "
                 f"kills: {fleet.kills}")
    lines.append(fleet.stderr_tail())
    return "\n".join(lines)


@dataclasses.dataclass
class Verified:
    workflows: int
    activities: int
    executions: int
    reexecuted: int


async def verify_all(client: Client, fleet: WorkerFleet, keys: range, count: int,
                     context: str = "") -> Verified:
    """Every workflow completed with the right result; its history holds exactly ``count``
    ActivityCompleted events with distinct seqs, each from an attempt that really ran; an
    attempt whose result was not the one recorded ran in a process we SIGKILLed."""
    runs = fleet.read_executions()
    # workflow id -> {(seq, attempt): pids that ran it}
    attempts: dict[str, dict[tuple[int, int], dict[int, float]]] = collections.defaultdict(dict)
    for (wid, seq, attempt), pids in fleet.executed_attempts().items():
        attempts[wid][seq, attempt] = pids
    problems: list[str] = []
    for key in keys:
        handle = client.get_workflow_handle(workflow_id(key), workflow=ChaosSteps)
        wid = handle.workflow_id
        result = await handle.result(timeout=10)
        if result != expected_result(key, count):
            problems.append(f"{wid}: result {result!r}, expected {expected_result(key, count)!r}")
        history = await handle.fetch_history()
        completed = [e for e in history.events if isinstance(e, ActivityCompleted)]
        seqs = [e.seq for e in completed]
        if len(seqs) != count or len(set(seqs)) != count:
            problems.append(f"{wid}: ActivityCompleted seqs {seqs} (expected {count} distinct)")
        ran = attempts[wid]
        recorded = {(e.seq, e.attempt) for e in completed}
        for seq, attempt in sorted(recorded - ran.keys()):
            problems.append(f"{wid}: seq {seq} completed by attempt {attempt}, which never ran")
        for (seq, attempt), pids in sorted(ran.items()):
            if (seq, attempt) not in recorded and not pids.keys() <= fleet.killed_pids:
                runs_of_seq = sorted(
                    (f"attempt {a} in pid {p} at {t:.3f}" for (s, a), ps in ran.items()
                     if s == seq for p, t in ps.items()),
                )
                problems.append(
                    f"{wid}: seq {seq} attempt {attempt} ran in pid(s) {sorted(pids)}, its "
                    f"result was not recorded, yet only {sorted(fleet.killed_pids)} were "
                    f"killed; runs of seq {seq}: {runs_of_seq}; the recorded result came from "
                    f"attempt {[e.attempt for e in completed if e.seq == seq]}"
                )
        if {seq for seq, _ in ran} != set(seqs):
            problems.append(f"{wid}: executed seqs {sorted({s for s, _ in ran})} but "
                            f"completed {sorted(seqs)}")
    assert not problems, (f"{len(problems)} problem(s){context}:\n" + "\n".join(problems[:40])
                          + f"\n{fleet.stderr_tail()}")
    return Verified(
        workflows=len(keys), activities=len(keys) * count,
        executions=sum(runs.values()), reexecuted=sum(1 for n in runs.values() if n > 1),
    )
