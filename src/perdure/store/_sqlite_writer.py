"""SQLite's writer thread: one connection, group commit, savepoints only on failure.

Every store method becomes an *operation*, a function of the connection. The
thread takes every operation waiting in its queue and runs them in ONE
transaction, then resolves their futures on their event loops. Many workflows'
state changes thus share one durable commit. When an operation raises, the
batch is undone and run again with a savepoint around each operation, so that
only the failing one is undone. A second, idle connection checkpoints the WAL
once it grows, so that no commit pays for a checkpoint inline.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from perdure.store._base import STOP, StoreNotes, StoreNotifier, take_batch
from perdure.store._base import resolve_batch as _resolve

__all__ = ["Op", "WriterThread"]

T = TypeVar("T")
Op = Callable[[sqlite3.Connection, StoreNotes], T]

_MAX_BATCH = 512
_CHECKPOINT_INTERVAL = 0.2
_CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024  # what SQLite's default autocheckpoint would allow


class WriterThread:
    """Owns the connection; runs queued operations in shared transactions."""

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="perdure-sqlite", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._checkpoint_stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self.commits = 0
        self.operations = 0

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, op: Op[T], notifier: StoreNotifier) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, future, loop, notifier))
        return future

    def stop(self) -> None:
        self._queue.put(STOP)
        self._thread.join(timeout=10)
        self._checkpoint_stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)

    def _checkpoint_loop(self) -> None:
        """Move WAL pages into the database file off the writer thread (PASSIVE: never
        blocks writers), so that no commit pays for a checkpoint inline."""
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                                   timeout=30.0)
        except sqlite3.Error:
            return
        try:
            wal = self._path + "-wal"
            while not self._checkpoint_stop.wait(_CHECKPOINT_INTERVAL):
                try:
                    if os.path.getsize(wal) >= _CHECKPOINT_WAL_BYTES:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except (OSError, sqlite3.Error):
                    pass
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                               timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
        return conn

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="perdure-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()
        q = self._queue
        while True:
            batch, stop = take_batch(q, _MAX_BATCH)
            if not batch:
                break
            try:
                self._run_batch(conn, batch)
            except BaseException as exc:  # the thread must survive anything
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for _op, future, loop, notifier in batch:
                    try:
                        loop.call_soon_threadsafe(_resolve, [(future, None, exc, None)], notifier)
                    except RuntimeError:
                        pass  # that loop is closed
            if stop:
                break
        conn.close()
        # operations queued behind the stop: fail them rather than leave callers waiting
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item is STOP:
                continue
            _op, future, loop, notifier = item
            closed = RuntimeError("the SQLite store was closed; open a new Client")
            try:
                loop.call_soon_threadsafe(_resolve, [(future, None, closed, None)], notifier)
            except RuntimeError:
                pass

    @staticmethod
    def _execute(
        conn: sqlite3.Connection, batch: list[Any], *, savepoints: bool
    ) -> list[tuple[Any, Any, BaseException | None, StoreNotes | None]] | None:
        """Run the batch's operations; without savepoints, None as soon as one raises."""
        results: list[tuple[Any, Any, BaseException | None, StoreNotes | None]] = []
        for op, future, _loop, _notifier in batch:
            notes = StoreNotes()
            if not savepoints:
                try:
                    value = op(conn, notes)
                except BaseException as exc:
                    if len(batch) > 1:
                        return None
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    conn.execute("BEGIN IMMEDIATE")
                    return [(future, None, exc, None)]
                results.append((future, value, None, notes))
                continue
            conn.execute("SAVEPOINT op")
            try:
                value = op(conn, notes)
            except BaseException as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                results.append((future, None, exc, None))
            else:
                conn.execute("RELEASE op")
                results.append((future, value, None, notes))
        return results

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for _op, future, loop, notifier in batch:
                try:
                    loop.call_soon_threadsafe(_resolve, [(future, None, exc, None)], notifier)
                except RuntimeError:
                    pass  # that loop is closed
            return
        results = self._execute(conn, batch, savepoints=False)
        if results is None:
            # an operation raised: undo the whole batch, then run it again with a savepoint
            # around each operation so that only the failing one is undone
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            results = self._execute(conn, batch, savepoints=True)
            assert results is not None
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as commit_error:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            results = [(f, None, commit_error, None) for f, _, _, _ in results]
        self.commits += 1
        self.operations += len(batch)
        by_loop: dict[Any, list[Any]] = {}
        for (future, value, error, op_notes), (_, _, loop, notifier) in zip(
            results, batch, strict=True
        ):
            by_loop.setdefault((loop, notifier), []).append((future, value, error, op_notes))
        for (loop, notifier), items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items, notifier)
            except RuntimeError:
                pass  # the loop is closed; nobody waits for these results
