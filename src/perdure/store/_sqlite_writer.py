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

from perdure._errors import DatabaseUnavailableError
from perdure.store._base import STOP, StoreNotes, StoreNotifier, take_batch
from perdure.store._base import resolve_batch as _resolve
from perdure.store._sqlite_file import FileIdentity, check_openable, refuse_foreign, typed_error

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
        self._identity: FileIdentity | None = None
        self._lost: BaseException | None = None
        """Set once the file was deleted or replaced: every later operation fails so."""
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
        """Open the file, refusing what is not Perdure's to use (see ``_sqlite_file``)
        before anything is written to it; errors name the file."""
        check_openable(self._path)
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                                   timeout=30.0)
        except sqlite3.Error as exc:
            raise typed_error(exc, self._path) from None
        try:
            refuse_foreign(conn, self._path)
            self._identity = FileIdentity(self._path)
            self._configure(conn)
        except BaseException as exc:
            conn.close()
            raise typed_error(exc, self._path) from None
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it

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
                self._fail_batch(batch, typed_error(exc, self._path))  # that loop is closed
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

    def _fail_batch(self, batch: list[Any], exc: BaseException) -> None:
        for _op, future, loop, notifier in batch:
            try:
                loop.call_soon_threadsafe(_resolve, [(future, None, exc, None)], notifier)
            except RuntimeError:
                pass  # that loop is closed

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        if self._lost is not None:
            self._fail_batch(batch, self._lost)
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_batch(batch, typed_error(exc, self._path))
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
        lost = self._identity.problem() if self._identity is not None else None
        try:
            if lost is not None:
                # the file was deleted or replaced: what this commit acknowledged would
                # be lost with the old inode; stop instead
                self._lost = lost
                raise lost
            conn.execute("COMMIT")
        except (sqlite3.Error, DatabaseUnavailableError) as commit_error:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            failed = typed_error(commit_error, self._path)
            results = [(f, None, failed, None) for f, _, _, _ in results]
        self.commits += 1
        self.operations += len(batch)
        by_loop: dict[Any, list[Any]] = {}
        for (future, value, error, op_notes), (_, _, loop, notifier) in zip(
            results, batch, strict=True
        ):
            if error is not None:
                error = typed_error(error, self._path)
            by_loop.setdefault((loop, notifier), []).append((future, value, error, op_notes))
        for (loop, notifier), items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items, notifier)
            except RuntimeError:
                pass  # the loop is closed; nobody waits for these results
