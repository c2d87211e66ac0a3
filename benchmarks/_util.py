"""Shared helpers: statistics, process memory, commit accounting, temporary databases."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found")


def db_size_mb(path: str) -> float:
    """Size of a SQLite database and its WAL, in MB."""
    return sum(os.path.getsize(path + suffix) for suffix in ("", "-wal")
               if os.path.exists(path + suffix)) / 2**20


@contextlib.contextmanager
def temp_db(prefix: str) -> Iterator[tuple[str, str]]:
    """A fresh directory holding (path, url) of a not-yet-created SQLite database."""
    directory = tempfile.mkdtemp(prefix=f"perdure-bench-{prefix}-")
    path = os.path.join(directory, "perdure.db")
    try:
        yield path, f"sqlite:///{path}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class CommitCounter:
    """Counts the store's batches that wrote rows (each one a durable, fsync'd commit).

    ``SqliteStore.commits`` counts every batch, including read-only ones (polls,
    ``get_run``), which commit nothing to the WAL and cost no fsync. This wraps
    the writer thread's batch runner *on this instance only* (the benchmark
    never edits Perdure) and compares ``total_changes`` around each batch.
    Falls back to "unavailable" if Perdure's internals change shape.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.write_commits = 0
        self.busy_seconds = 0.0
        """Time the writer thread spent running batches (SQL, commit, fsync)."""
        self.available = False
        writer = getattr(store, "_writer", None)
        original = getattr(writer, "_run_batch", None)
        if writer is None or original is None:
            return

        def run_batch(conn: sqlite3.Connection, batch: list[Any]) -> None:
            before = conn.total_changes
            t0 = time.perf_counter()
            original(conn, batch)
            self.busy_seconds += time.perf_counter() - t0
            if conn.total_changes != before:
                self.write_commits += 1

        writer._run_batch = run_batch
        self.available = True

    def snapshot(self) -> tuple[int, int, int, float]:
        """(commits, operations, write commits, writer busy seconds) so far."""
        return self.store.commits, self.store.operations, self.write_commits, self.busy_seconds


def sqlite_commit_floor_ms(directory: str, synchronous: str = "FULL", n: int = 100) -> float:
    """Median latency of one tiny INSERT+COMMIT in WAL mode (Perdure's default: synchronous FULL).

    The floor under any durable state change on this disk: one fsync of the WAL.
    """
    path = os.path.join(directory, "floor.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE t (x INTEGER)")
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            conn.execute("COMMIT")
            samples.append((time.perf_counter() - t0) * 1000)
        return median(samples)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)
