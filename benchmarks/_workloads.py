"""The workloads. Each is ``async def wN(quick, variant) -> dict[str, float]`` run in a fresh process.

Every workload opens a fresh SQLite file in a temporary directory with the
default URL options (WAL, synchronous FULL); the client and the worker share
one process (and so one store and its in-process wake-ups) unless stated.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from _defs import SIDE_FILE_ENV, STEP_SECONDS, FanOut, Recovery, Sequential, Waiter, noop
from _util import CommitCounter, db_size_mb, percentile, rss_mb, sqlite_commit_floor_ms, temp_db
from perdure import Client, Worker, WorkerOptions
from perdure.client import WorkflowHandle

Metrics = dict[str, float]
QUEUE = "bench"
HERE = os.path.dirname(os.path.abspath(__file__))


class CallCounter:
    """Counts calls of some store methods (wrapped on this instance only)."""

    def __init__(self, store: Any, names: tuple[str, ...]) -> None:
        self.calls = 0
        for name in names:
            original = getattr(store, name)

            def wrapped(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.calls += 1
                return _original(*args, **kwargs)

            setattr(store, name, wrapped)


def _store_options(variant: str) -> dict[str, Any]:
    """Comparison variants only: ``sync=NORMAL`` (or OFF) drops the fsync per commit."""
    options: dict[str, Any] = {}
    for token in variant.split(","):
        if token.startswith("sync="):
            options["synchronous"] = token.split("=", 1)[1]
    return options


async def _result(handle: WorkflowHandle[Any], timeout: float = 60.0) -> Any:
    """``handle.result()``, failing loudly (with the run's last task failure) instead of hanging."""
    try:
        return await handle.result(timeout=timeout)
    except TimeoutError:
        description = await handle.describe()
        raise RuntimeError(
            f"workflow {handle.workflow_id!r} did not finish within {timeout:g}s: "
            f"status={description.status}, history_length={description.history_length}, "
            f"pending_events={description.pending_events}, "
            f"workflow_task_attempt={description.workflow_task_attempt}, "
            f"last_workflow_task_failure={description.last_workflow_task_failure!r}"
        ) from None


async def _execute(client: Client, workflow: Any, *args: Any, id: str) -> Any:
    return await _result(await client.start_workflow(workflow, *args, id=id, task_queue=QUEUE))


def _worker_stats(worker: Worker) -> Metrics:
    stats = getattr(worker, "stats", {})
    return {f"worker.{k}": float(v) for k, v in stats.items()}


# ---------------------------------------------------------------- W1 throughput
async def w1_throughput(quick: bool, variant: str) -> Metrics:
    """200 workflows started at once, each running 10 sequential no-op activities."""
    n_workflows = 50 if quick else 200
    n_activities = 10
    options = WorkerOptions()
    if "no-eager" in variant.split(","):
        options = replace(options, eager_activities=False)
    with temp_db("w1") as (_path, url):
        client = await Client.connect(url, **_store_options(variant))
        counter = CommitCounter(client.store)
        client_ops = CallCounter(client.store, ("start_workflow", "get_run"))
        async with Worker(client, task_queue=QUEUE, workflows=[Sequential], activities=[noop],
                          options=options) as worker:
            # warm up (statement cache, first-import costs) outside the measurement
            await _execute(client, Sequential.run, 2, id="warm-up")
            commits0, ops0, writes0, busy0 = counter.snapshot()
            calls0 = client_ops.calls
            stats0 = _worker_stats(worker)
            t0 = time.perf_counter()
            handles = await asyncio.gather(*(
                client.start_workflow(Sequential.run, n_activities, id=f"w1-{i}",
                                      task_queue=QUEUE)
                for i in range(n_workflows)
            ))
            t_started = time.perf_counter()
            for handle in handles:
                assert await _result(handle) == sum(range(n_activities))
            elapsed = time.perf_counter() - t0
            commits1, ops1, writes1, busy1 = counter.snapshot()
            stats1 = _worker_stats(worker)
        await client.close()
    activities = n_workflows * n_activities
    ops = ops1 - ops0
    client_calls = client_ops.calls - calls0
    metrics: Metrics = {
        "seconds": elapsed,
        "start_all_ms": (t_started - t0) * 1000,
        "workflows/s": n_workflows / elapsed,
        "activities/s": activities / elapsed,
        "commits/activity": (commits1 - commits0) / activities,
        "ops/activity": ops / activities,
        "client_ops/activity": client_calls / activities,
        "worker_ops/activity": (ops - client_calls) / activities,
    }
    if counter.available:
        metrics["write_commits/activity"] = (writes1 - writes0) / activities
        metrics["ops/commit"] = ops / max(1, commits1 - commits0)
        metrics["writer_busy_%"] = 100 * (busy1 - busy0) / elapsed
    for key in ("worker.replays", "worker.eager_activities", "worker.workflow_tasks"):
        if key in stats1:
            metrics[key] = stats1[key] - stats0.get(key, 0.0)
    return metrics


# ---------------------------------------------------------------- W2 latency
async def w2_latency(quick: bool, variant: str) -> Metrics:
    """One workflow with one no-op activity, started and awaited N times in sequence."""
    n = 30 if quick else 100
    warm = 5
    store_options = _store_options(variant)
    with temp_db("w2") as (path, url):
        client = await Client.connect(url, **store_options)
        counter = CommitCounter(client.store)
        samples: list[float] = []
        start_samples: list[float] = []
        async with Worker(client, task_queue=QUEUE, workflows=[Sequential],
                          activities=[noop]):
            for i in range(warm):
                await _execute(client, Sequential.run, 1, id=f"warm-{i}")
            commits0, ops0, writes0, busy0 = counter.snapshot()
            for i in range(n):
                t0 = time.perf_counter()
                handle = await client.start_workflow(Sequential.run, 1, id=f"w2-{i}",
                                                     task_queue=QUEUE)
                start_samples.append((time.perf_counter() - t0) * 1000)
                assert await _result(handle, 10) == 0
                samples.append((time.perf_counter() - t0) * 1000)
            commits1, ops1, writes1, busy1 = counter.snapshot()
        await client.close()
        floor = sqlite_commit_floor_ms(os.path.dirname(path), store_options.get("synchronous",
                                                                                "FULL"))
    p50 = percentile(samples, 50)
    metrics: Metrics = {
        "p50_ms": p50,
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples),
        "start_p50_ms": percentile(start_samples, 50),
        "sqlite_commit_ms": floor,
        "p50/commit_floor": p50 / floor if floor > 0 else float("nan"),
        "commits/workflow": (commits1 - commits0) / n,
        "ops/workflow": (ops1 - ops0) / n,
    }
    if counter.available:
        metrics["write_commits/workflow"] = (writes1 - writes0) / n
        metrics["writer_ms/workflow"] = 1000 * (busy1 - busy0) / n
    return metrics


# ---------------------------------------------------------------- W3 fan-out
async def w3_fanout(quick: bool, variant: str) -> Metrics:
    """One workflow: 50 concurrent branches (asyncio.gather) of 5 sequential activities."""
    branches, depth = (20, 5) if quick else (50, 5)
    activities = branches * depth
    with temp_db("w3") as (_path, url):
        client = await Client.connect(url, **_store_options(variant))
        counter = CommitCounter(client.store)
        async with Worker(client, task_queue=QUEUE, workflows=[FanOut, Sequential],
                          activities=[noop]) as worker:
            await _execute(client, Sequential.run, 2, id="warm-up")
            commits0, ops0, writes0, busy0 = counter.snapshot()
            stats0 = _worker_stats(worker)
            t0 = time.perf_counter()
            result = await _result(await client.start_workflow(
                FanOut.run, branches, depth, id="w3", task_queue=QUEUE), timeout=20)
            elapsed = time.perf_counter() - t0
            commits1, ops1, writes1, busy1 = counter.snapshot()
            stats1 = _worker_stats(worker)
        history = await client.get_workflow_handle("w3").fetch_history()
        await client.close()
    assert result == sum(range(activities))
    metrics: Metrics = {
        "seconds": elapsed,
        "activities/s": activities / elapsed,
        "commits/activity": (commits1 - commits0) / activities,
        "ops/activity": (ops1 - ops0) / activities,
        "workflow_tasks/activity": (
            stats1.get("worker.workflow_tasks", 0) - stats0.get("worker.workflow_tasks", 0)
        ) / activities,
        "history_events": float(len(history.events)),
    }
    if counter.available:
        metrics["write_commits/activity"] = (writes1 - writes0) / activities
        metrics["writer_busy_%"] = 100 * (busy1 - busy0) / elapsed
    return metrics


# ---------------------------------------------------------------- W4 idle waiters
async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float,
                 interval: float = 0.05) -> None:
    deadline = time.perf_counter() + timeout
    while not await predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not reached in time")
        await asyncio.sleep(interval)


async def w4_idle_waiters(quick: bool, variant: str) -> Metrics:
    """2,000 workflows waiting on a signal: worker-process memory, then release them all."""
    n = 300 if quick else 2000
    cache = WorkerOptions().max_cached_workflows
    if variant.startswith("cache="):
        cache = int(variant.split("=", 1)[1])
    options = WorkerOptions(max_cached_workflows=cache)
    with temp_db("w4") as (path, url):
        client = await Client.connect(url)
        async with Worker(client, task_queue=QUEUE, workflows=[Waiter, Sequential],
                          activities=[noop],
                          options=options) as worker:
            await _execute(client, Sequential.run, 1, id="warm-up")
            gc.collect()
            rss0 = rss_mb()
            t0 = time.perf_counter()
            handles = await asyncio.gather(*(
                client.start_workflow(Waiter.run, id=f"w4-{i}", task_queue=QUEUE)
                for i in range(n)
            ))

            async def all_waiting() -> bool:
                # the first workflow task appends WorkflowTaskCompleted: history length >= 2
                runs = await client.list_workflows(status="running", limit=n + 10)
                return len(runs) == n and all(r.history_length >= 2 for r in runs)

            await _until(all_waiting, timeout=300)
            t_waiting = time.perf_counter() - t0
            gc.collect()
            rss1 = rss_mb()
            cached = float(len(getattr(worker, "_cache", ())))
            replays0 = worker.stats.get("replays", 0)
            t1 = time.perf_counter()
            await asyncio.gather(*(h.signal(Waiter.release) for h in handles))
            t_signalled = time.perf_counter() - t1

            async def all_done() -> bool:
                return not await client.list_workflows(status="running", limit=1)

            await _until(all_done, timeout=300, interval=0.02)
            t_release = time.perf_counter() - t1
            replays = worker.stats.get("replays", 0) - replays0
            db_mb = db_size_mb(path)
        await client.close()
    growth = rss1 - rss0
    return {
        "rss_growth_mb": growth,
        "kb/waiter": growth * 1024 / n,
        "cached_workflows": cached,
        "db_file_mb": db_mb,
        "start_until_all_waiting_s": t_waiting,
        "signal_all_s": t_signalled,
        "release_all_s": t_release,
        "replays_on_release": float(replays),
    }


# ---------------------------------------------------------------- W5 crash recovery
def _spawn_worker(url: str, side_file: str, variant: str) -> subprocess.Popen[str]:
    args = [sys.executable, os.path.join(HERE, "_worker_proc.py"), url, "bench-w5"]
    if variant == "fast":
        args += ["--dead-worker-timeout", "1.0", "--liveness-interval", "0.2"]
    env = dict(os.environ, **{SIDE_FILE_ENV: side_file})
    return subprocess.Popen(args, stdout=subprocess.PIPE, env=env, text=True)


async def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if line.strip() != "ready":
        raise RuntimeError(f"worker subprocess did not start: {line!r}")


async def w5_recovery(quick: bool, variant: str) -> Metrics:
    """20 sequential 200 ms activities; SIGKILL the worker subprocess after ~8; start another."""
    n, kill_after = 20, 8
    with temp_db("w5") as (path, url):
        side_file = os.path.join(os.path.dirname(path), "side.log")
        client = await Client.connect(url)
        handle = await client.start_workflow(Recovery.run, n, id="w5", task_queue="bench-w5")
        first = _spawn_worker(url, side_file, variant)
        second: subprocess.Popen[str] | None = None
        try:
            await _wait_ready(first)

            async def completed_enough() -> bool:
                history = await handle.fetch_history()
                done = sum(type(e).__name__ == "ActivityCompleted" for e in history.events)
                return done >= kill_after

            await _until(completed_enough, timeout=60, interval=0.02)
            kill_wall = time.time()
            t_kill = time.perf_counter()
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = _spawn_worker(url, side_file, variant)
            await _wait_ready(second)
            t_ready = time.perf_counter() - t_kill

            async def closed() -> bool:
                return (await handle.describe()).status != "running"

            await _until(closed, timeout=120, interval=0.02)
            t_done = time.perf_counter() - t_kill
            assert await _result(handle, 10) == sum(range(n))
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.to_thread(proc.wait, 15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        await client.close()
        text = await asyncio.to_thread(Path(side_file).read_text)
        lines = [line.split() for line in text.splitlines() if line]
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    resumed_at = None
    completed_before_kill = 0
    for kind, seq, _attempt, _pid, when, _key in lines:
        if kind == "start":
            starts[int(seq)] = starts.get(int(seq), 0) + 1
            if float(when) > kill_wall and resumed_at is None:
                resumed_at = float(when) - kill_wall
        else:
            ends[int(seq)] = ends.get(int(seq), 0) + 1
            if float(when) <= kill_wall:
                completed_before_kill += 1
    remaining_work = (n - completed_before_kill) * STEP_SECONDS
    return {
        "kill_to_complete_s": t_done,
        "kill_to_worker_ready_s": t_ready,
        "kill_to_first_resumed_activity_s": resumed_at if resumed_at is not None else float("nan"),
        "recovery_overhead_s": t_done - remaining_work,
        "activities_run_twice": float(sum(1 for c in starts.values() if c > 1)),
        "activities_completed_twice": float(sum(1 for c in ends.values() if c > 1)),
        "completed_before_kill": float(completed_before_kill),
    }


WORKLOADS: dict[str, tuple[Callable[[bool, str], Awaitable[Metrics]], list[str]]] = {
    # name: (function, variants run by default)
    "W1": (w1_throughput, [""]),
    "W2": (w2_latency, ["", "sync=NORMAL"]),
    "W3": (w3_fanout, [""]),
    "W4": (w4_idle_waiters, ["", "cache=100"]),
    "W5": (w5_recovery, ["", "fast"]),
}

