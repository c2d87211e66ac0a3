"""The embedded SQLite store: WAL mode, one writer thread, group commit.

Every store method is an operation of :class:`SqlStore`, run by the writer
thread in ``_sqlite_writer`` in a transaction it may share with other
operations: many workflows' state changes share one durable commit.

Several processes may open the same file (workers in separate processes); SQLite's
write lock and ``busy_timeout`` serialize them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any, TypeVar

from perdure._clock import Clock, SystemClock
from perdure.store._base import StoreNotes, StoreNotifier
from perdure.store._schema import SQLITE_MIGRATIONS
from perdure.store._sql import Op, SqlStore
from perdure.store._sqlite_writer import WriterThread

__all__ = ["SqliteStore"]

T = TypeVar("T")


class SqliteStore(SqlStore):
    """Perdure's state in one SQLite file (WAL mode)."""

    def __init__(self, path: str, *, clock: Clock | None = None, synchronous: str = "FULL",
                 url: str = "") -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.clock = clock or SystemClock()
        self.notifier = StoreNotifier()
        self._writer = WriterThread(path, synchronous)
        self._started = False
        self._lock = threading.Lock()

    @property
    def commits(self) -> int:
        """Transactions committed by this process (for benchmarks)."""
        return self._writer.commits

    @property
    def operations(self) -> int:
        """Store operations run by this process (for benchmarks)."""
        return self._writer.operations

    def _run(self, op: Op[T]) -> asyncio.Future[T]:
        if not self._started:
            with self._lock:
                if not self._started:
                    self._writer.start()
                    self._started = True
        return self._writer.submit(op, self.notifier)

    def keep_alive(self, worker_id: str, interval: float, alive: Any) -> None:
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            # another connection would open another, empty database: in-memory stores
            # serve one process, whose workers' event loops beat for themselves
            return
        super().keep_alive(worker_id, interval, alive)

    def _liveness_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def close(self) -> None:
        await self._stop_liveness()
        if self._started:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.stop)
            self._started = False
            self._writer = WriterThread(self.path, self._writer._synchronous)

    async def migrate(self) -> None:
        def op(conn: sqlite3.Connection, notes: StoreNotes) -> None:
            self._upgrade_schema(conn, SQLITE_MIGRATIONS, self.path)

        await self._run(op)

    async def schema_version(self) -> int:
        def op(conn: sqlite3.Connection, notes: StoreNotes) -> int:
            return self._read_schema_version(conn)

        return await self._run(op)
