"""PostgreSQL's writer pool: group commit on a few connections, riding out outages.

Like SQLite's writer thread, each pool thread takes every operation waiting in
the shared queue and runs them in ONE transaction (savepoints only after an
operation fails). What PostgreSQL adds:

* **Several connections.** ``pool_size`` threads share the queue: while one
  commits, the next batch runs on another connection.
* **Transient conflicts.** A deadlock or serialization failure (two processes'
  batches touching the same runs in opposite orders) rolls the batch back and
  runs it again; operations are functions of the database, so a rerun is exact.
* **Lost connections.** The thread reconnects with back-off for as long as it
  takes and runs the batch again; callers just wait. If the connection died
  during COMMIT, the outcome is unknown, so the thread asks the server
  (``txid_status``) whether that transaction committed before deciding between
  "done" and "run again": nothing is applied twice and nothing acknowledged is lost.
* **Cross-process wake-ups.** A batch that created work sends ``NOTIFY`` in its
  transaction (delivered only if it commits); see ``_postgres``'s listener.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg.errors

from perdure._errors import DatabaseUnavailableError
from perdure.store._base import StoreNotes, StoreNotifier
from perdure.store._sql import Op

__all__ = ["PgConnection", "PostgresWriterPool"]

_log = logging.getLogger("perdure.store.postgres")

_MAX_BATCH = 256
_MAX_CONFLICT_RETRIES = 8
_TRANSIENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
              psycopg.errors.LockNotAvailable)


@functools.lru_cache(maxsize=4096)
def _to_psycopg(sql: str) -> str:
    """``?`` placeholders (the shared SQL's) to psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection that speaks the shared SQL's ``?`` placeholders and counts
    round trips."""

    __slots__ = ("raw", "statements")

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self.statements = 0

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        self.statements += 1
        if not params:  # the simple protocol: several statements may share a round trip
            return self.raw.execute(sql)  # type: ignore[arg-type]
        return self.raw.execute(_to_psycopg(sql), params)  # type: ignore[arg-type]

    def executemany(self, sql: str, params: Any) -> None:
        self.statements += 1
        with self.raw.cursor() as cursor:
            cursor.executemany(_to_psycopg(sql), params)  # type: ignore[arg-type]


class _Stop:
    pass


Result = tuple[Any, Any, BaseException | None, StoreNotes | None]


class _ConnectionLost(Exception):
    """The connection broke; ``txid`` and ``results`` are set when it broke during
    COMMIT, when the transaction may have committed."""

    def __init__(self, cause: BaseException, txid: int | None = None,
                 results: list[Result] | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.txid = txid
        self.results = results


class PostgresWriterPool:
    """``size`` threads, one connection each, running queued operations in shared
    transactions."""

    def __init__(self, conninfo: str, *, size: int, setup: Callable[[PgConnection], None],
                 channel: str, origin: str, describe: str) -> None:
        self._conninfo = conninfo
        self._size = size
        self._setup = setup
        self._channel = channel
        self._origin = origin
        self._describe = describe
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._counter_lock = threading.Lock()
        self.commits = 0
        self.operations = 0
        self.statements = 0
        self.conflicts = 0
        self.reconnects = 0
        self.reconnected_at = -math.inf
        """When a connection last came back after an outage (real time)."""
        self.on_reconnect: Callable[[], None] | None = None

    # ----------------------------------------------------------------- lifecycle
    def connect(self) -> PgConnection:
        raw = psycopg.connect(self._conninfo, autocommit=True)
        conn = PgConnection(raw)
        self._setup(conn)
        return conn

    def start(self) -> None:
        """Connect every thread's connection; raise a clear error if the first fails."""
        connections: list[PgConnection] = []
        try:
            for _ in range(self._size):
                connections.append(self.connect())
        except psycopg.Error as exc:
            for conn in connections:
                self._discard(conn)
            reason = " ".join((str(exc).strip() or type(exc).__name__).split())
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {self._describe} (check that the server "
                f"runs and that the URL's host, port, database and user are right): {reason}"
            ) from exc
        for index, conn in enumerate(connections):
            thread = threading.Thread(
                target=self._thread_main, args=(conn,),
                name=f"perdure-postgres-{index}", daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def submit(self, op: Op[Any], notifier: StoreNotifier) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._stopping.is_set():
            future.set_exception(RuntimeError("the PostgreSQL store was closed; open a new Client"))
            return future
        self._queue.put((op, future, loop, notifier))
        return future

    def stop(self) -> None:
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(_Stop())
        for thread in self._threads:
            thread.join(timeout=10)
        closed = RuntimeError("the PostgreSQL store was closed; open a new Client")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _Stop):
                _deliver([(item, (None, None, closed, None))])

    # ----------------------------------------------------------------- the thread
    def _thread_main(self, conn: PgConnection | None) -> None:
        q = self._queue
        while True:
            item = q.get()
            if isinstance(item, _Stop):
                break
            batch = [item]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop):
                    stop = True
                    break
                batch.append(nxt)
            try:
                conn, results = self._run_batch(conn, batch)
            except BaseException as exc:  # the thread must survive anything
                _log.exception("PostgreSQL writer: batch failed")
                results = [(None, None, exc, None) for _ in batch]
            _deliver(list(zip(batch, results, strict=True)))
            if stop:
                break
        if conn is not None:
            try:
                conn.raw.close()
            except Exception:
                pass

    def _reconnect(self) -> PgConnection | None:
        """Connect again, with back-off, until it works or the pool stops."""
        delay = 0.05
        started = time.monotonic()
        warned = False
        while not self._stopping.is_set():
            try:
                conn = self.connect()
            except psycopg.Error as exc:
                if not warned or time.monotonic() - started > 30:
                    _log.warning("PostgreSQL at %s unreachable (%s); retrying",
                                 self._describe, str(exc).strip())
                    warned, started = True, time.monotonic()
                self._stopping.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            with self._counter_lock:
                self.reconnects += 1
                self.reconnected_at = time.time()
            if warned:
                _log.warning("PostgreSQL at %s reachable again", self._describe)
            if self.on_reconnect is not None:
                self.on_reconnect()
            return conn
        return None

    def _run_batch(
        self, conn: PgConnection | None, batch: list[Any]
    ) -> tuple[PgConnection | None, list[Result]]:
        conflicts = 0
        savepoints = False
        while True:
            if conn is None or conn.raw.closed:
                conn = self._reconnect()
                if conn is None:
                    closed = RuntimeError("the PostgreSQL store was closed; open a new Client")
                    return None, [(None, None, closed, None) for _ in batch]
            try:
                results = self._attempt(conn, batch, savepoints=savepoints)
            except _ConnectionLost as lost:
                _log.warning("PostgreSQL connection lost (%s); reconnecting", lost.cause)
                self._discard(conn)
                conn = None
                if lost.txid is not None:
                    conn = self._reconnect()
                    if conn is None:
                        continue
                    status = self._txid_status(conn, lost.txid)
                    if status == "committed" and lost.results is not None:
                        with self._counter_lock:
                            self.commits += 1
                            self.operations += len(batch)
                        return conn, lost.results
                    # aborted (or forgotten): nothing of it happened; run it again
                continue
            except _TRANSIENT:
                self._rollback(conn)
                conflicts += 1
                with self._counter_lock:
                    self.conflicts += 1
                if conflicts >= _MAX_CONFLICT_RETRIES:
                    savepoints = True  # let the conflicting operation fail on its own
                time.sleep(0.001 * conflicts)
                continue
            if results is None:
                savepoints = True  # an operation raised: run again, isolating each one
                continue
            return conn, results

    def _attempt(
        self, conn: PgConnection, batch: list[Any], *, savepoints: bool
    ) -> list[Result] | None:
        """One transaction over the batch; None when an operation raised (without
        savepoints), after rolling back."""
        txid: int | None = None
        try:
            cursor = conn.execute("BEGIN; SELECT txid_current()")
            cursor.nextset()  # past BEGIN's result
            row = cursor.fetchone()
            assert row is not None
            txid = int(row[0])
            results: list[Result] = []
            for op, future, _loop, _notifier in batch:
                notes = StoreNotes()
                if not savepoints:
                    try:
                        value = op(conn, notes)
                    except _TRANSIENT:
                        raise
                    except psycopg.OperationalError:
                        if conn.raw.broken or conn.raw.closed:
                            raise
                        self._rollback(conn)
                        return None
                    except BaseException:
                        self._rollback(conn)
                        return None
                    results.append((future, value, None, notes))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn, notes)
                except BaseException as exc:
                    if isinstance(exc, psycopg.OperationalError) and (
                        conn.raw.broken or conn.raw.closed
                    ):
                        raise
                    conn.execute("ROLLBACK TO SAVEPOINT op")
                    conn.execute("RELEASE SAVEPOINT op")
                    results.append((future, None, exc, None))
                else:
                    conn.execute("RELEASE SAVEPOINT op")
                    results.append((future, value, None, notes))
            commit = "COMMIT"
            payload = self._notify_payload(results)
            if payload is not None:
                commit = f"NOTIFY \"{self._channel}\", '{payload}'; COMMIT"
            try:
                conn.execute(commit)
            except psycopg.OperationalError as exc:
                if conn.raw.broken or conn.raw.closed:
                    raise _ConnectionLost(exc, txid, results) from exc
                raise
            with self._counter_lock:
                self.commits += 1
                self.operations += len(batch)
                self.statements += conn.statements
            conn.statements = 0
            return results
        except _ConnectionLost:
            raise
        except psycopg.OperationalError as exc:
            if conn.raw.broken or conn.raw.closed:
                raise _ConnectionLost(exc) from exc  # before COMMIT: rolled back
            raise

    def _notify_payload(self, results: list[Result]) -> str | None:
        kinds: set[str] = set()
        due = math.inf
        for _future, _value, _error, notes in results:
            if notes is not None:
                kinds |= notes.kinds
                due = min(due, notes.due)
        if not kinds and due == math.inf:
            return None
        return f"{self._origin}|{','.join(sorted(kinds))}|{'' if due == math.inf else repr(due)}"

    def _txid_status(self, conn: PgConnection, txid: int) -> str:
        """Whether a transaction whose COMMIT was cut off did commit."""
        for _ in range(600):
            row = conn.execute("SELECT txid_status(?)", (txid,)).fetchone()
            status = row[0] if row else None
            if status != "in progress":
                return str(status)
            time.sleep(0.05)  # the old backend has not noticed its client is gone yet
        return "unknown"

    @staticmethod
    def _rollback(conn: PgConnection) -> None:
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            pass

    @staticmethod
    def _discard(conn: PgConnection) -> None:
        try:
            conn.raw.close()
        except Exception:
            pass


def _deliver(items: list[tuple[Any, Result]]) -> None:
    """Hand results to the event loops that wait for them, grouped per loop."""
    by_loop: dict[Any, list[Any]] = {}
    for (_op, future, loop, notifier), (_f, value, error, notes) in items:
        by_loop.setdefault((loop, notifier), []).append((future, value, error, notes))
    for (loop, notifier), group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, group, notifier)
        except RuntimeError:
            pass  # that loop is closed; nobody waits for these results


def _resolve(items: list[Any], notifier: StoreNotifier) -> None:
    kinds: set[str] = set()
    due = math.inf
    for future, value, exc, notes in items:
        if notes is not None:
            kinds |= notes.kinds
            due = min(due, notes.due)
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
    if kinds or due < math.inf:
        notifier.notify(kinds, due)
