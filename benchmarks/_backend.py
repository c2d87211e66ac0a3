"""Backends and worker layouts: SQLite in one process, or PostgreSQL with N worker processes.

``Bench`` says which: ``backend`` ("sqlite" or "postgres") and ``workers``, the
number of worker subprocesses (0: the worker runs inside the benchmark's own
process, beside the client, as it always does on SQLite). ``database()`` gives
each run a fresh SQLite file or a fresh PostgreSQL schema (dropped afterwards);
``Workers`` runs the worker(s) and collects their store counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from _util import median, rss_mb
from perdure import Client, Worker, WorkerOptions

HERE = os.path.dirname(os.path.abspath(__file__))
PG_DSN = os.environ.get("PERDURE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
COUNTERS = ("commits", "operations", "statements", "round_trips")


@dataclass(frozen=True)
class Bench:
    backend: str = "sqlite"
    workers: int = 0
    """Worker subprocesses; 0 = one worker in the benchmark's (the client's) process."""
    pool_size: int = 2
    """PostgreSQL: ``pool_size`` of every process's store (Perdure's default is 2)."""
    pg_dsn: str = PG_DSN

    @property
    def postgres(self) -> bool:
        return self.backend == "postgres"

    @property
    def label(self) -> str:
        if not self.postgres:
            return ""
        return "pg, inproc" if self.workers == 0 else f"pg, {self.workers}w"


SQLITE = Bench()
"""The default: SQLite, the worker in the client's process."""


def workers_label(workers: int) -> str:
    return "inproc" if workers == 0 else str(workers)


# ---------------------------------------------------------------- databases
@dataclass
class Database:
    url: str
    path: str | None = None
    """SQLite: the database file."""
    directory: str = ""
    """A temporary directory for side files, removed afterwards (both backends)."""
    schema: str | None = None
    """PostgreSQL: the run's own schema."""
    dsn: str = ""


@contextlib.asynccontextmanager
async def database(bench: Bench, prefix: str, sqlite_options: str = "") -> AsyncIterator[Database]:
    """A fresh SQLite file, or a fresh PostgreSQL schema (``DROP SCHEMA ... CASCADE`` after)."""
    directory = tempfile.mkdtemp(prefix=f"perdure-bench-{prefix}-")
    try:
        if not bench.postgres:
            path = os.path.join(directory, "perdure.db")
            yield Database(url=f"sqlite:///{path}{sqlite_options}", path=path,
                           directory=directory)
            return
        schema = f"bench_{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
        sep = "&" if "?" in bench.pg_dsn else "?"
        url = f"{bench.pg_dsn}{sep}schema={schema}&pool_size={bench.pool_size}"
        try:
            yield Database(url=url, directory=directory, schema=schema, dsn=bench.pg_dsn)
        finally:
            await asyncio.to_thread(_drop_schema, bench.pg_dsn, schema)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _pg_query(dsn: str, sql: str, params: Sequence[Any] = ()) -> Any:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None


async def pg_xact_commit(dsn: str) -> int:
    """``pg_stat_database.xact_commit`` of this database: every session's commits, read-only
    ones included. Backends report their statistics when idle, at most once a second, so a
    reading is only complete for commits made more than about a second earlier."""
    return int(await asyncio.to_thread(
        _pg_query, dsn, "SELECT xact_commit FROM pg_stat_database "
        "WHERE datname = current_database()"))


async def pg_other_sessions(dsn: str) -> int:
    """Client sessions connected to the server right now (before a run: other people's)."""
    return int(await asyncio.to_thread(
        _pg_query, dsn, "SELECT count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"))


async def pg_next_xid(dsn: str) -> int:
    """The next transaction id the server will assign (reading it assigns none)."""
    return int(await asyncio.to_thread(
        _pg_query, dsn, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"))


async def pg_schema_mb(dsn: str, schema: str) -> float:
    size = await asyncio.to_thread(
        _pg_query, dsn, "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
        (schema,))
    return float(size) / 2**20


def pg_commit_floor_ms(dsn: str, n: int = 100) -> float:
    """Median latency of one tiny INSERT + COMMIT (one round trip, one WAL flush) on this server."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE perdure_bench_floor (x integer)")
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO perdure_bench_floor VALUES (%s)", (i,))
            samples.append((time.perf_counter() - t0) * 1000)
        return median(samples)


# ---------------------------------------------------------------- counters
def store_counters(client: Client) -> dict[str, float]:
    """This process's store counters (PostgreSQL: commits, operations, statements, round
    trips, and the writer pool's conflicts, i.e. batches rolled back and rerun after a deadlock
    or serialization failure; SQLite: commits and operations)."""
    counters = {name: float(getattr(client.store, name, 0) or 0) for name in COUNTERS}
    counters["conflicts"] = float(getattr(getattr(client.store, "_pool", None), "conflicts", 0))
    return counters


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# ---------------------------------------------------------------- workers
@dataclass
class _Proc:
    proc: asyncio.subprocess.Process
    ready_at: float = 0.0
    final: dict[str, Any] | None = None
    killed: bool = False


@dataclass
class Snapshot:
    """The summed counters of every process of a run (the client's included), at one moment."""

    counters: dict[str, float]
    rss_mb: float
    """Worker subprocesses: the sum of their VmRSS; in-process: this process's."""
    cached: float
    stats: dict[str, float] = field(default_factory=dict)


class Workers:
    """The run's worker(s): one in this process (``bench.workers == 0``), or that many
    subprocesses (``_worker_proc.py``) on the same database, this process being the client only.

    ``snapshot()`` sums the store counters of every process, this one's included.
    """

    def __init__(self, bench: Bench, client: Client, url: str, task_queue: str, *,
                 workflows: Sequence[type], activities: Sequence[Any],
                 options: WorkerOptions | None = None, proc_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.bench = bench
        self.client = client
        self.url = url
        self.task_queue = task_queue
        self.options = options or WorkerOptions()
        self.proc_args = list(proc_args)
        self.env = env
        self.worker: Worker | None = None
        if bench.workers == 0:
            self.worker = Worker(client, task_queue=task_queue, workflows=workflows,
                                 activities=activities, options=self.options)
        self.procs: list[_Proc] = []
        self.finals: list[dict[str, Any]] = []
        """The SIGTERM lines of the subprocesses that shut down (not of killed ones)."""

    async def __aenter__(self) -> Workers:
        if self.worker is not None:
            await self.worker.start()
        else:
            await asyncio.gather(*(self.spawn() for _ in range(self.bench.workers)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.worker is not None:
            await self.worker.shutdown()
        await asyncio.gather(*(self._terminate(p) for p in self.procs))

    # ------------------------------------------------------------ subprocesses
    async def spawn(self) -> _Proc:
        """Start one worker subprocess and wait for its "ready" line."""
        args = [os.path.join(HERE, "_worker_proc.py"), self.url, self.task_queue,
                *self.proc_args]
        env = dict(os.environ, **(self.env or {}))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, env=env)
        entry = _Proc(proc)
        self.procs.append(entry)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.decode().strip() != "ready":
            raise RuntimeError(f"worker subprocess did not start: {line!r}")
        entry.ready_at = time.perf_counter()
        return entry

    def alive(self) -> list[_Proc]:
        return [p for p in self.procs if not p.killed and p.proc.returncode is None]

    def kill(self, pid: int) -> None:
        """SIGKILL one worker subprocess (it prints nothing more)."""
        for entry in self.procs:
            if entry.proc.pid == pid:
                entry.killed = True
                entry.proc.send_signal(signal.SIGKILL)
                return
        raise KeyError(pid)

    async def _read_json(self, entry: _Proc, kind: str, timeout: float) -> dict[str, Any]:
        assert entry.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(entry.proc.stdout.readline(),
                                          max(0.1, deadline - time.monotonic()))
            if not line:
                raise RuntimeError(f"worker {entry.proc.pid} closed its stdout")
            text = line.decode().strip()
            if text.startswith("{"):
                data = json.loads(text)
                if data.get("kind") == kind:
                    return data

    async def _terminate(self, entry: _Proc) -> None:
        proc = entry.proc
        if entry.killed or proc.returncode is not None:
            await proc.wait()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            self.finals.append(await self._read_json(entry, "final", 30))
        except (TimeoutError, RuntimeError, ValueError) as exc:
            print(f"worker {proc.pid}: no final counters ({exc!r})", file=sys.stderr)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    # ------------------------------------------------------------ measurements
    async def snapshot(self) -> Snapshot:
        """Counters of every process now (this one's included); RSS and cache of the workers."""
        counters = store_counters(self.client)
        if self.worker is not None:
            gc.collect()
            stats = {k: float(v) for k, v in self.worker.stats.items()}
            return Snapshot(counters, rss_mb(), float(len(self.worker._cache)), stats)
        alive = self.alive()
        for entry in alive:
            entry.proc.send_signal(signal.SIGUSR1)
        lines = await asyncio.gather(*(self._read_json(e, "snapshot", 30) for e in alive))
        stats: dict[str, float] = {}
        rss = cached = 0.0
        for line in lines:
            for name in (*COUNTERS, "conflicts"):
                counters[name] += line.get(name, 0)
            rss += line["rss_mb"]
            cached += line["cached"]
            for k, v in line["stats"].items():
                stats[k] = stats.get(k, 0.0) + v
        return Snapshot(counters, rss, cached, stats)

    def final_totals(self, client_totals: dict[str, float]) -> dict[str, float]:
        """Whole-process counters: the client's plus every worker's SIGTERM line."""
        totals = dict(client_totals)
        for line in self.finals:
            for name in (*COUNTERS, "conflicts"):
                totals[name] = totals.get(name, 0.0) + line.get(name, 0)
        return totals
