"""The workloads. Each is ``async def wN(quick, variant, bench) -> dict[str, float]`` run in a
fresh process.

SQLite (the default ``Bench``): every workload opens a fresh SQLite file in a
temporary directory with the default URL options (WAL, synchronous FULL); the
client and the worker share one process (and so one store and its in-process
wake-ups), except in W5.

PostgreSQL: every run gets a fresh schema (dropped afterwards). With
``bench.workers == 0`` the worker runs in this process, as on SQLite; with N > 0,
N worker subprocesses serve the task queue and this process is the client only.
Counters (commits, round trips, ...) are summed over every process.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _backend import (
    SQLITE,
    Bench,
    Snapshot,
    Workers,
    database,
    diff,
    pg_commit_floor_ms,
    pg_next_xid,
    pg_other_sessions,
    pg_schema_mb,
    pg_xact_commit,
    store_counters,
)
from _defs import (
    SIDE_FILE_ENV,
    STEP_SECONDS,
    Branch,
    ChildFanOut,
    FanOut,
    Recovery,
    Sequential,
    Waiter,
    noop,
    slow_step,
)
from _util import CommitCounter, db_size_mb, percentile, sqlite_commit_floor_ms
from perdure import Client, WorkerOptions
from perdure.client import WorkflowHandle

Metrics = dict[str, float]
QUEUE = "bench"
HERE = os.path.dirname(os.path.abspath(__file__))
PG_EXIT_SETTLE = 0.3
"""Seconds for the run's PostgreSQL backends to exit (and publish their statistics)."""


class NotApplicable(Exception):
    """This workload does not make sense for this backend / worker layout."""


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


def _store_options(variant: str, bench: Bench) -> dict[str, Any]:
    """Comparison variants only: ``sync=NORMAL`` (or OFF) drops SQLite's fsync per commit."""
    options: dict[str, Any] = {}
    for token in variant.split(","):
        if token.startswith("sync="):
            if bench.postgres:
                raise NotApplicable("sync=... is a SQLite option")
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


async def _warm_up(client: Client, bench: Bench, n_activities: int = 2) -> None:
    """Statement caches, first-import costs: one workflow per worker process (concurrently,
    so that each process probably runs one), outside the measurement."""
    count = max(1, bench.workers)
    await asyncio.gather(*(_execute(client, Sequential.run, n_activities, id=f"warm-up-{i}")
                           for i in range(count)))


def _counter_metrics(delta: dict[str, float], per: float, unit: str,
                     bench: Bench) -> Metrics:
    """Commits (and on PostgreSQL round trips and statements) per activity or workflow,
    summed over every process of the run."""
    metrics = {
        f"commits/{unit}": delta["commits"] / per,
        f"ops/{unit}": delta["operations"] / per,
        "ops/commit": delta["operations"] / max(1.0, delta["commits"]),
    }
    if bench.postgres:
        metrics[f"round_trips/{unit}"] = delta["round_trips"] / per
        metrics[f"statements/{unit}"] = delta["statements"] / per
        metrics["conflict_retries"] = delta.get("conflicts", 0.0)
    return metrics


def _stats_delta(after: Snapshot, before: Snapshot) -> Metrics:
    """The workers' own counters (workflow tasks, replays, rejected completions...)."""
    return {f"worker.{k}": v - before.stats.get(k, 0.0) for k, v in after.stats.items()}


class PgCrossCheck:
    """PostgreSQL's own counts, as a check on the store counters.

    * ``pg_xact_commit``: ``pg_stat_database.xact_commit`` of the database, read before this
      run's first connection and after its last one closed. Backends publish their statistics
      when idle at most once a second (sometimes only 10 s later) but always when they exit,
      so only a window around the whole run is exact. It counts every session's commits in
      the database: read-only ones, each connection's ``SET search_path`` and ``LISTEN``
      (a few per process), and other sessions' if anything else uses the database. It is
      compared with the whole-run counters (warm-up, idle heartbeats, shutdown included).
    * ``pg_xids``: transaction ids assigned cluster-wide during the measurement
      (``pg_current_snapshot()``'s xmax, which reading does not move). A transaction takes
      one when it first writes, so this is Perdure's writing batches (each writes a commit
      marker; up to 67e982d every batch took one, by ``txid_current()``) + rolled-back
      attempts + other sessions' writing transactions anywhere on the server.
    """

    def __init__(self, bench: Bench, dsn: str) -> None:
        self.bench = bench
        self.dsn = dsn
        self.x0 = 0
        self.xid0 = self.xid1 = 0
        self.others = 0

    async def begin(self) -> None:
        """Before the run's first connection."""
        if self.bench.postgres:
            self.x0 = await pg_xact_commit(self.dsn)
            self.others = await pg_other_sessions(self.dsn)

    async def mark_start(self) -> None:
        if self.bench.postgres:
            self.xid0 = await pg_next_xid(self.dsn)

    async def mark_end(self) -> None:
        if self.bench.postgres:
            self.xid1 = await pg_next_xid(self.dsn)

    async def finish(self, workers: Workers, client_totals: dict[str, float],
                     window: dict[str, float], per: float, unit: str) -> Metrics:
        """After the client closed and every worker process exited."""
        if not self.bench.postgres:
            return {}
        await asyncio.sleep(PG_EXIT_SETTLE)  # the backends publish their statistics on exit
        x1 = await pg_xact_commit(self.dsn)
        totals = workers.final_totals(client_totals)
        return {
            f"whole_run_commits/{unit}": totals["commits"] / per,
            f"whole_run_round_trips/{unit}": totals["round_trips"] / per,
            f"pg_xact_commit/{unit}": (x1 - self.x0) / per,
            "pg_xact_commit/whole_run_commits": (x1 - self.x0) / max(1.0, totals["commits"]),
            f"pg_xids/{unit}": (self.xid1 - self.xid0) / per,
            "pg_xids/commits": (self.xid1 - self.xid0) / max(1.0, window["commits"]),
            "worker_final_lines": float(len(workers.finals)),
            "pg_other_sessions": float(self.others),
        }


def _worker_args(options: WorkerOptions) -> list[str]:
    """The same WorkerOptions for a worker subprocess."""
    default = WorkerOptions()
    args: list[str] = []
    if options.max_cached_workflows != default.max_cached_workflows:
        args += ["--max-cached-workflows", str(options.max_cached_workflows)]
    if options.eager_activities != default.eager_activities:
        args.append("--no-eager")
    if options.dead_worker_timeout != default.dead_worker_timeout:
        args += ["--dead-worker-timeout", str(options.dead_worker_timeout)]
    if options.liveness_interval != default.liveness_interval:
        args += ["--liveness-interval", str(options.liveness_interval)]
    return args


def _workers(bench: Bench, client: Client, url: str, options: WorkerOptions | None = None,
             *, task_queue: str = QUEUE, env: dict[str, str] | None = None) -> Workers:
    options = options or WorkerOptions()
    return Workers(bench, client, url, task_queue,
                   workflows=[Sequential, FanOut, Waiter, Recovery, ChildFanOut, Branch],
                   activities=[noop, slow_step], options=options,
                   proc_args=_worker_args(options), env=env)


# ---------------------------------------------------------------- W1 throughput
async def w1_throughput(quick: bool, variant: str, bench: Bench = SQLITE) -> Metrics:
    """200 workflows started at once, each running 10 sequential no-op activities."""
    n_workflows = 50 if quick else 200
    n_activities = 10
    activities = n_workflows * n_activities
    options = WorkerOptions()
    if "no-eager" in variant.split(","):
        options = replace(options, eager_activities=False)
    async with database(bench, "w1") as db:
        check = PgCrossCheck(bench, db.dsn)
        await check.begin()
        client = await Client.connect(db.url, **_store_options(variant, bench))
        counter = CommitCounter(client.store)
        client_ops = CallCounter(client.store, ("start_workflow", "get_run"))
        async with _workers(bench, client, db.url, options) as workers:
            # warm up (statement cache, first-import costs) outside the measurement
            await _warm_up(client, bench)
            snap0 = await workers.snapshot()
            await check.mark_start()
            _commits0, _ops0, writes0, busy0 = counter.snapshot()
            calls0 = client_ops.calls
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
            _commits1, _ops1, writes1, busy1 = counter.snapshot()
            snap1 = await workers.snapshot()
            await check.mark_end()
        client_totals = store_counters(client)
        await client.close()
        delta = diff(snap1.counters, snap0.counters)
        metrics_check = await check.finish(workers, client_totals, delta, activities, "activity")
    client_calls = client_ops.calls - calls0
    metrics: Metrics = {
        "seconds": elapsed,
        "start_all_ms": (t_started - t0) * 1000,
        "workflows/s": n_workflows / elapsed,
        "activities/s": activities / elapsed,
        **_counter_metrics(delta, activities, "activity", bench),
        "client_ops/activity": client_calls / activities,
        "worker_ops/activity": (delta["operations"] - client_calls) / activities,
        **metrics_check,
    }
    if counter.available:
        metrics["write_commits/activity"] = (writes1 - writes0) / activities
        metrics["writer_busy_%"] = 100 * (busy1 - busy0) / elapsed
    metrics.update(_stats_delta(snap1, snap0))
    return metrics


# ---------------------------------------------------------------- W2 latency
async def w2_latency(quick: bool, variant: str, bench: Bench = SQLITE) -> Metrics:
    """One workflow with one no-op activity, started and awaited N times in sequence."""
    n = 30 if quick else 100
    warm = 5
    store_options = _store_options(variant, bench)
    async with database(bench, "w2") as db:
        check = PgCrossCheck(bench, db.dsn)
        await check.begin()
        client = await Client.connect(db.url, **store_options)
        counter = CommitCounter(client.store)
        samples: list[float] = []
        start_samples: list[float] = []
        async with _workers(bench, client, db.url) as workers:
            for i in range(warm):
                await _execute(client, Sequential.run, 1, id=f"warm-{i}")
            snap0 = await workers.snapshot()
            await check.mark_start()
            _c0, _o0, writes0, busy0 = counter.snapshot()
            walls: list[tuple[float, float]] = []
            for i in range(n):
                wall0 = time.time()
                t0 = time.perf_counter()
                handle = await client.start_workflow(Sequential.run, 1, id=f"w2-{i}",
                                                     task_queue=QUEUE)
                start_samples.append((time.perf_counter() - t0) * 1000)
                assert await _result(handle, 10) == 0
                samples.append((time.perf_counter() - t0) * 1000)
                walls.append((wall0, time.time()))
            _c1, _o1, writes1, busy1 = counter.snapshot()
            snap1 = await workers.snapshot()
            await check.mark_end()
        phases = await _w2_phases(client, walls)
        client_totals = store_counters(client)
        await client.close()
        delta = diff(snap1.counters, snap0.counters)
        metrics_check = await check.finish(workers, client_totals, delta, n, "workflow")
        if bench.postgres:
            floor_name = "pg_commit_ms"
            floor = await asyncio.to_thread(pg_commit_floor_ms, db.dsn)
        else:
            floor_name = "sqlite_commit_ms"
            floor = sqlite_commit_floor_ms(db.directory,
                                           store_options.get("synchronous", "FULL"))
    p50 = percentile(samples, 50)
    counted = _counter_metrics(delta, n, "workflow", bench)
    counted.pop("ops/commit")
    metrics: Metrics = {
        "p50_ms": p50,
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples),
        "start_p50_ms": percentile(start_samples, 50),
        floor_name: floor,
        "p50/commit_floor": p50 / floor if floor > 0 else float("nan"),
        **counted,
        **phases,
        **metrics_check,
        **_stats_delta(snap1, snap0),
    }
    if counter.available:
        metrics["write_commits/workflow"] = (writes1 - writes0) / n
        metrics["writer_ms/workflow"] = 1000 * (busy1 - busy0) / n
    return metrics


async def _w2_phases(client: Client, walls: list[tuple[float, float]]) -> Metrics:
    """Where W2's time goes (medians, wall clock; every process is on this machine), from the
    two activations' ``WorkflowTaskCompleted.time`` (when each activation began):

    * ``to_first_activation_ms``: start_workflow (commit, wake-up of a worker, claim);
    * ``between_activations_ms``: first activation's commit, the activity, its completion;
    * ``last_activation_to_result_ms``: second activation, its commit, the client's wake-up
      (on PostgreSQL with worker subprocesses: NOTIFY to the client's listener) and read.
    """
    phases: dict[str, list[float]] = {"to_first_activation_ms": [], "between_activations_ms": [],
                                      "last_activation_to_result_ms": []}
    for i, (wall0, wall1) in enumerate(walls):
        history = await client.get_workflow_handle(f"w2-{i}").fetch_history()
        times = [e.time for e in history.events if type(e).__name__ == "WorkflowTaskCompleted"]
        if len(times) < 2:
            continue
        phases["to_first_activation_ms"].append((times[0] - wall0) * 1000)
        phases["between_activations_ms"].append((times[-1] - times[0]) * 1000)
        phases["last_activation_to_result_ms"].append((wall1 - times[-1]) * 1000)
    return {k: percentile(v, 50) for k, v in phases.items() if v}


# ---------------------------------------------------------------- W3 fan-out
@dataclass
class _Window:
    """One measured workflow, from its start to its result: what every process did meanwhile."""

    result: Any
    seconds: float
    counters: dict[str, float]
    """Store counters summed over every process (``commits``, ``operations``, ...)."""
    stats: Metrics
    """The workers' own counters (``worker.workflow_tasks``, ...)."""
    write_commits: float = float("nan")
    """SQLite: batches that wrote (each one fsync); NaN if the counter is not available."""
    writer_busy_s: float = float("nan")
    xids: float = float("nan")
    """PostgreSQL: transaction ids assigned cluster-wide (writing transactions)."""


async def _measure(client: Client, workers: Workers, counter: CommitCounter,
                   check: PgCrossCheck, workflow: Any, *args: Any, id: str,
                   timeout: float) -> _Window:
    """Start one workflow and await its result, with every process's counters around it."""
    snap0 = await workers.snapshot()
    await check.mark_start()
    _c0, _o0, writes0, busy0 = counter.snapshot()
    t0 = time.perf_counter()
    result = await _result(await client.start_workflow(workflow, *args, id=id, task_queue=QUEUE),
                           timeout=timeout)
    elapsed = time.perf_counter() - t0
    _c1, _o1, writes1, busy1 = counter.snapshot()
    snap1 = await workers.snapshot()
    await check.mark_end()
    window = _Window(result, elapsed, diff(snap1.counters, snap0.counters),
                     _stats_delta(snap1, snap0))
    if counter.available:
        window.write_commits = float(writes1 - writes0)
        window.writer_busy_s = busy1 - busy0
    if check.bench.postgres:
        window.xids = float(check.xid1 - check.xid0)
    return window


def _fanout_metrics(window: _Window, activities: int, history_events: int,
                    bench: Bench) -> Metrics:
    """W3's figures (and W3c's): per activity, over every process."""
    metrics: Metrics = {
        "seconds": window.seconds,
        "activities/s": activities / window.seconds,
        **_counter_metrics(window.counters, activities, "activity", bench),
        "workflow_tasks/activity": window.stats.get("worker.workflow_tasks", 0.0) / activities,
        "history_events": float(history_events),
    }
    return metrics


def _writer_metrics(window: _Window, activities: int) -> Metrics:
    if math.isnan(window.write_commits):
        return {}
    return {"write_commits/activity": window.write_commits / activities,
            "writer_busy_%": 100 * window.writer_busy_s / window.seconds}


async def w3_fanout(quick: bool, variant: str, bench: Bench = SQLITE) -> Metrics:
    """One workflow: 50 concurrent branches (asyncio.gather) of 5 sequential activities."""
    branches, depth = (20, 5) if quick else (50, 5)
    activities = branches * depth
    async with database(bench, "w3") as db:
        check = PgCrossCheck(bench, db.dsn)
        await check.begin()
        client = await Client.connect(db.url, **_store_options(variant, bench))
        counter = CommitCounter(client.store)
        async with _workers(bench, client, db.url) as workers:
            await _warm_up(client, bench)
            window = await _measure(client, workers, counter, check, FanOut.run, branches, depth,
                                    id="w3", timeout=20)
        history = await client.get_workflow_handle("w3").fetch_history()
        client_totals = store_counters(client)
        await client.close()
        metrics_check = await check.finish(workers, client_totals, window.counters, activities,
                                           "activity")
    assert window.result == sum(range(activities))
    return {
        **_fanout_metrics(window, activities, len(history.events), bench),
        **metrics_check,
        **window.stats,
        **_writer_metrics(window, activities),
    }


# ---------------------------------------------------------------- W3c fan-out of children
async def _children_events(client: Client, parent_id: str, expected: int) -> int:
    """History events of every child of ``parent_id`` (which must all have completed)."""
    children = await client.list_workflows(parent_workflow_id=parent_id, limit=expected + 10)
    if len(children) != expected or any(c.status != "completed" for c in children):
        raise RuntimeError(f"{parent_id!r}: expected {expected} completed children, found "
                           f"{sorted(str(c.status) for c in children)}")
    histories = [await client.get_workflow_handle(c.workflow_id, run_id=c.run_id).fetch_history()
                 for c in children]
    return sum(len(h.events) for h in histories)


async def w3c_children(quick: bool, variant: str, bench: Bench = SQLITE) -> Metrics:
    """W3 with child workflows: one parent starts 50 child workflows at once (asyncio.gather of
    ``execute_child_workflow``), each running W3's branch of 5 sequential activities.

    Unless the variant is ``no-baseline``, the same process (same database, same worker)
    first runs W3's fan-out of activities, so that ``seconds/w3_seconds`` and the
    ``extra_*/child`` figures compare two measurements taken back to back.
    """
    branches, depth = (20, 5) if quick else (50, 5)
    activities = branches * depth
    baseline = "no-baseline" not in variant.split(",")
    async with database(bench, "w3c") as db:
        check = PgCrossCheck(bench, db.dsn)
        await check.begin()
        client = await Client.connect(db.url, **_store_options(variant, bench))
        counter = CommitCounter(client.store)
        async with _workers(bench, client, db.url) as workers:
            await _warm_up(client, bench)
            # the child-workflow code paths too (first imports), one parent per worker process
            await asyncio.gather(*(_execute(client, ChildFanOut.run, 2, 2,
                                            id=f"warm-up-children-{i}")
                                   for i in range(max(1, bench.workers))))
            base = None
            if baseline:
                base = await _measure(client, workers, counter, check, FanOut.run, branches,
                                      depth, id="w3", timeout=20)
            window = await _measure(client, workers, counter, check, ChildFanOut.run, branches,
                                    depth, id="w3c", timeout=60)
        parent_events = len((await client.get_workflow_handle("w3c").fetch_history()).events)
        child_events = await _children_events(client, "w3c", branches)
        base_events = len((await client.get_workflow_handle("w3").fetch_history()).events) \
            if base is not None else 0
        client_totals = store_counters(client)
        await client.close()
        # pg_xids cover the last window measured: the children's
        metrics_check = await check.finish(workers, client_totals, window.counters, activities,
                                           "activity")
    assert window.result == sum(range(activities))
    metrics: Metrics = {
        **_fanout_metrics(window, activities, parent_events + child_events, bench),
        "parent_history_events": float(parent_events),
        "commits/child": window.counters["commits"] / branches,
        "workflow_tasks/child": window.stats.get("worker.workflow_tasks", 0.0) / branches,
        **metrics_check,
        **window.stats,
        **_writer_metrics(window, activities),
    }
    if base is None:
        return metrics
    assert base.result == sum(range(activities))
    # the whole-run counts cover both fan-outs (and the warm-ups): not per this one's activity
    for key in ("whole_run_commits/activity", "whole_run_round_trips/activity",
                "pg_xact_commit/activity"):
        metrics.pop(key, None)

    def extra(after: float, before: float) -> float:
        return (after - before) / branches

    metrics.update({
        "w3_seconds": base.seconds,
        "w3_replays": base.stats.get("worker.replays", 0.0),
        "seconds/w3_seconds": window.seconds / base.seconds,
        "w3_commits/activity": base.counters["commits"] / activities,
        "extra_commits/child": extra(window.counters["commits"], base.counters["commits"]),
        "extra_ops/child": extra(window.counters["operations"], base.counters["operations"]),
        "extra_workflow_tasks/child": extra(window.stats.get("worker.workflow_tasks", 0.0),
                                            base.stats.get("worker.workflow_tasks", 0.0)),
        "extra_events/child": extra(parent_events + child_events, base_events),
        "extra_ms/child": extra(window.seconds, base.seconds) * 1000,
    })
    if not metrics["w3_replays"]:
        # W3's parent is sometimes replayed from history in the middle of its fan-out (a
        # fused completion that loses a race drops the cached instance): those runs are
        # slower. Only the runs whose baseline had no replay: the Runs column counts them.
        metrics["seconds/w3_seconds_no_replays"] = metrics["seconds/w3_seconds"]
    if not math.isnan(window.write_commits):
        metrics.update({
            "w3_write_commits/activity": base.write_commits / activities,
            "extra_write_commits/child": extra(window.write_commits, base.write_commits),
            "extra_writer_ms/child": extra(window.writer_busy_s, base.writer_busy_s) * 1000,
        })
    if bench.postgres:
        metrics.update({
            "extra_round_trips/child": extra(window.counters["round_trips"],
                                             base.counters["round_trips"]),
            "extra_pg_xids/child": extra(window.xids, base.xids),
        })
    return metrics


# ---------------------------------------------------------------- W4 idle waiters
async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float,
                 interval: float = 0.05) -> None:
    deadline = time.perf_counter() + timeout
    while not await predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not reached in time")
        await asyncio.sleep(interval)


async def w4_idle_waiters(quick: bool, variant: str, bench: Bench = SQLITE) -> Metrics:
    """2,000 workflows waiting on a signal: worker-process memory, then release them all.

    With worker subprocesses, RSS is the sum over the workers (the client's is not counted).
    """
    n = 300 if quick else 2000
    cache = WorkerOptions().max_cached_workflows
    if variant.startswith("cache="):
        cache = int(variant.split("=", 1)[1])
    options = WorkerOptions(max_cached_workflows=cache)
    async with database(bench, "w4") as db:
        client = await Client.connect(db.url)
        async with _workers(bench, client, db.url, options) as workers:
            await _warm_up(client, bench, 1)
            snap0 = await workers.snapshot()  # gc.collect() and VmRSS in every worker process
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
            snap1 = await workers.snapshot()
            t1 = time.perf_counter()
            await asyncio.gather(*(h.signal(Waiter.release) for h in handles))
            t_signalled = time.perf_counter() - t1

            async def all_done() -> bool:
                return not await client.list_workflows(status="running", limit=1)

            await _until(all_done, timeout=300, interval=0.02)
            t_release = time.perf_counter() - t1
            snap2 = await workers.snapshot()
            if bench.postgres:
                db_mb = await pg_schema_mb(db.dsn, db.schema or "")
            else:
                db_mb = db_size_mb(db.path or "")
        await client.close()
    growth = snap1.rss_mb - snap0.rss_mb
    metrics = {
        "rss_growth_mb": growth,
        "kb/waiter": growth * 1024 / n,
        "cached_workflows": snap1.cached,
        "db_file_mb": db_mb,
        "start_until_all_waiting_s": t_waiting,
        "signal_all_s": t_signalled,
        "release_all_s": t_release,
        "replays_on_release": snap2.stats.get("replays", 0) - snap1.stats.get("replays", 0),
    }
    if bench.workers:
        metrics["worker_rss_mb_before"] = snap0.rss_mb
    return metrics


# ---------------------------------------------------------------- W5 crash recovery
def _side_lines(side_file: str) -> list[list[str]]:
    try:
        text = Path(side_file).read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.splitlines() if line]


async def w5_recovery(quick: bool, variant: str, bench: Bench = SQLITE) -> Metrics:
    """20 sequential 200 ms activities served by worker subprocesses; SIGKILL the one running
    the activity in flight after ~8.

    With one worker (SQLite, or PostgreSQL ``--workers 1``) a fresh worker subprocess is
    started at once; with N > 1 the other N - 1 take over, and none is started.
    """
    if bench.workers == 0 and bench.postgres:
        raise NotApplicable("W5 kills a worker process: it needs worker subprocesses")
    procs = max(1, bench.workers)
    layout = replace(bench, workers=procs)
    n, kill_after = 20, 8
    options = WorkerOptions()
    if variant == "fast":
        options = WorkerOptions(dead_worker_timeout=1.0, liveness_interval=0.2)
    async with database(bench, "w5") as db:
        side_file = os.path.join(db.directory, "side.log")
        client = await Client.connect(db.url)
        handle = await client.start_workflow(Recovery.run, n, id="w5", task_queue="bench-w5")
        t_ready = float("nan")
        async with _workers(layout, client, db.url, options, task_queue="bench-w5",
                            env={SIDE_FILE_ENV: side_file}) as workers:

            async def completed_enough() -> bool:
                history = await handle.fetch_history()
                done = sum(type(e).__name__ == "ActivityCompleted" for e in history.events)
                return done >= kill_after

            await _until(completed_enough, timeout=60, interval=0.02)
            victim: list[int] = []

            async def in_flight_started() -> bool:
                # the worker running the next activity (normally already started)
                for kind, seq, _attempt, pid, _when, _key in _side_lines(side_file):
                    if kind == "start" and int(seq) == kill_after:
                        victim.append(int(pid))
                        return True
                return False

            await _until(in_flight_started, timeout=10, interval=0.005)
            kill_wall = time.time()
            t_kill = time.perf_counter()
            workers.kill(victim[0])
            if procs == 1:
                await workers.procs[0].proc.wait()
                replacement = await workers.spawn()
                t_ready = replacement.ready_at - t_kill

            async def closed() -> bool:
                return (await handle.describe()).status != "running"

            await _until(closed, timeout=120, interval=0.02)
            t_done = time.perf_counter() - t_kill
            assert await _result(handle, 10) == sum(range(n))
        await client.close()
        lines = await asyncio.to_thread(_side_lines, side_file)
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
    metrics = {
        "kill_to_complete_s": t_done,
        "kill_to_first_resumed_activity_s": resumed_at if resumed_at is not None else float("nan"),
        "recovery_overhead_s": t_done - remaining_work,
        "activities_run_twice": float(sum(1 for c in starts.values() if c > 1)),
        "activities_completed_twice": float(sum(1 for c in ends.values() if c > 1)),
        "completed_before_kill": float(completed_before_kill),
    }
    if procs == 1:
        metrics["kill_to_worker_ready_s"] = t_ready
    return metrics


WORKLOADS: dict[str, tuple[Callable[..., Awaitable[Metrics]], list[str]]] = {
    # name: (function, variants run by default)
    "W1": (w1_throughput, [""]),
    "W2": (w2_latency, ["", "sync=NORMAL"]),
    "W3": (w3_fanout, [""]),
    "W3c": (w3c_children, [""]),
    "W4": (w4_idle_waiters, ["", "cache=100"]),
    "W5": (w5_recovery, ["", "fast"]),
}

# PostgreSQL: variants that make sense there (sync= is SQLite's)
PG_VARIANTS: dict[str, list[str]] = {
    "W1": [""], "W2": [""], "W3": [""], "W3c": [""], "W4": ["", "cache=100"],
    "W5": ["", "fast"],
}
