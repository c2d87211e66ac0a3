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
  during COMMIT, the outcome is unknown. Every batch therefore also writes its
  number into the connection's row of ``writer_commits``; after reconnecting, the
  thread makes sure the old session is gone (terminating it if it lingers) and
  reads that row: the batch committed exactly when its number is there. Nothing
  is applied twice and nothing acknowledged is lost, across crashes too (a
  transaction id would not do: after a crash the server hands out the ids of
  transactions that never reached its WAL again).
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

from perdure._errors import DatabaseUnavailableError, InvalidArgumentError
from perdure.store._base import STOP, StoreNotes, StoreNotifier, take_batch
from perdure.store._base import resolve_batch as _resolve
from perdure.store._sql import Op

__all__ = ["PgConnection", "PostgresWriterPool"]

_log = logging.getLogger("perdure.store.postgres")

_MAX_BATCH = 256
_MAX_CONFLICT_RETRIES = 8
_TRANSIENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
              psycopg.errors.LockNotAvailable)


def _unusable(conn: PgConnection, exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone or unusable, not that an operation
    failed: it broke, the server is shutting down (SQLSTATE class 57P, sent before the
    socket closes, so ``broken`` is not set yet), or libpq is stuck in pipeline mode."""
    raw = conn.raw
    if raw.broken or raw.closed:
        return True
    if raw._pipeline is None and raw.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, psycopg.OperationalError) and sqlstate.startswith(("08", "57P"))


_READ_ONLY = frozenset({"SELECT", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SHOW",
                        "SET"})


_WRITES, _WRITES_IF_ROWS = 1, 2


@functools.lru_cache(maxsize=4096)
def _to_psycopg(sql: str) -> tuple[str, bool, int]:
    """``?`` placeholders (the shared SQL's) to psycopg's ``%s``; whether the statement
    returns rows (a SELECT, or RETURNING), which only a fresh cursor may hold; and whether
    it may change data: 0 (a SELECT or transaction control), ``_WRITES``, or
    ``_WRITES_IF_ROWS`` (an UPDATE or DELETE with RETURNING: it changed what it returns,
    so a claim that finds nothing changed nothing)."""
    words = sql.split(None, 1)
    head = words[0].upper() if words else ""
    returning = "RETURNING" in sql.upper()
    returns_rows = head in ("SELECT", "WITH") or returning
    if head in _READ_ONLY:
        writes = 0
    elif returning and head in ("UPDATE", "DELETE"):
        writes = _WRITES_IF_ROWS
    else:
        writes = _WRITES
    return sql.replace("%", "%%").replace("?", "%s"), returns_rows, writes


class PgConnection:
    """A psycopg connection that speaks the shared SQL's ``?`` placeholders and counts
    statements and round trips.

    In pipeline mode a statement whose result nobody reads is queued, not waited for:
    only a fetch (and the final COMMIT) costs a round trip.
    """

    __slots__ = ("_writes", "backend_pid", "backend_started", "batch", "raw", "round_trips",
                 "statements", "unread_writes", "writer_id", "wrote")

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self.statements = 0
        self.round_trips = 0
        self.backend_pid = raw.info.backend_pid
        self.backend_started: Any = None
        """This session's ``backend_start``: with the pid, names it uniquely."""
        self.writer_id = ""
        """This connection's row in ``writer_commits``."""
        self.batch = 0
        """The number of the last batch this connection tried to commit."""
        self.wrote = False
        """Whether the current transaction ran a statement that may change data."""
        self.unread_writes = 0
        """UPDATE/DELETE ... RETURNING statements whose rows were not read yet."""
        # statements that return no rows share one cursor: a new cursor per statement
        # costs more Python time than the statement itself (about 25 us of 45)
        self._writes = raw.cursor()

    def execute(self, sql: str, params: Any = ()) -> _Cursor:
        self.statements += 1
        pipelined = self.raw._pipeline is not None
        if not pipelined:
            self.round_trips += 1
        query, returns_rows, writes = _to_psycopg(sql)
        if writes == _WRITES:
            self.wrote = True
        elif writes == _WRITES_IF_ROWS:
            self.unread_writes += 1
        if not params:  # the simple protocol: several statements may share a round trip
            cursor = self.raw.execute(sql)  # type: ignore[arg-type]
        elif not returns_rows:
            self._writes.execute(query, params)  # type: ignore[arg-type]
            return _Cursor(self._writes, self, False, False)
        else:
            cursor = self.raw.execute(query, params)  # type: ignore[arg-type]
        return _Cursor(cursor, self, pipelined, writes == _WRITES_IF_ROWS)

    def execute_unread(self, sql: str, params: Any) -> None:
        """A statement whose rows nobody reads (``SELECT ... FOR UPDATE``, for its lock)."""
        self.statements += 1
        if self.raw._pipeline is None:
            self.round_trips += 1
        self._writes.execute(_to_psycopg(sql)[0], params)  # type: ignore[arg-type]

    def executemany(self, sql: str, params: Any) -> None:
        if self.raw._pipeline is not None:
            for row in params:  # queued one by one: no round trip of their own
                self.execute(sql, row)
            return
        self.statements += 1
        self.round_trips += 1
        self.wrote = True
        with self.raw.cursor() as cursor:
            cursor.executemany(_to_psycopg(sql)[0], params)  # type: ignore[arg-type]


class _Cursor:
    """A cursor whose first fetch in pipeline mode is counted as a round trip (an upper
    bound: the result may have arrived with an earlier one)."""

    __slots__ = ("_conn", "_cursor", "_pending", "_writes_if_rows")

    def __init__(self, cursor: psycopg.Cursor[Any], conn: PgConnection, pipelined: bool,
                 writes_if_rows: bool) -> None:
        self._cursor = cursor
        self._conn = conn
        self._pending = pipelined
        self._writes_if_rows = writes_if_rows

    def _fetched(self, rows: bool) -> None:
        if self._pending:
            self._pending = False
            self._conn.round_trips += 1
        if self._writes_if_rows:
            self._writes_if_rows = False
            self._conn.unread_writes -= 1
            if rows:
                self._conn.wrote = True

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        self._fetched(row is not None or self._cursor.rowcount > 0)
        return row

    def fetchall(self) -> list[Any]:
        rows = self._cursor.fetchall()
        self._fetched(bool(rows))
        return rows

    def __iter__(self) -> Any:
        return iter(self.fetchall())


Result = tuple[Any, Any, BaseException | None, StoreNotes | None]


class _ConnectionLost(Exception):
    """The connection broke; ``results`` is set when it broke during COMMIT, when the
    transaction may have committed."""

    def __init__(self, cause: BaseException, results: list[Result] | None = None,
                 marker: tuple[str, int, int, Any] | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.results = results
        self.marker = marker
        """(writer id, batch number, backend pid, backend start) of the cut-off COMMIT;
        None when the batch wrote no marker (before migration: rerunning is safe)."""


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
        self.round_trips = 0
        self.conflicts = 0
        self.reconnects = 0
        self.reconnected_at = -math.inf
        """When a connection last came back after an outage (real time)."""
        self.on_reconnect: Callable[[], None] | None = None
        self.marking = False
        """Whether batches write their commit marker (once the schema has the table)."""
        self._connections = 0

    # ----------------------------------------------------------------- lifecycle
    def connect(self) -> PgConnection:
        raw = psycopg.connect(self._conninfo, autocommit=True)
        conn = PgConnection(raw)
        row = raw.execute("SELECT backend_start FROM pg_stat_activity "
                          "WHERE pid = pg_backend_pid()").fetchone()
        conn.backend_started = row[0] if row else None
        with self._counter_lock:
            self._connections += 1
            conn.writer_id = f"{self._origin}-{self._connections}"
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
            self._queue.put(STOP)
        for thread in self._threads:
            thread.join(timeout=10)
        closed = RuntimeError("the PostgreSQL store was closed; open a new Client")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not STOP:
                _deliver([(item, (None, None, closed, None))])

    # ----------------------------------------------------------------- the thread
    def _thread_main(self, conn: PgConnection | None) -> None:
        q = self._queue
        while True:
            batch, stop = take_batch(q, _MAX_BATCH)
            if not batch:
                break
            try:
                conn, results = self._run_batch(conn, batch)
            except BaseException as exc:  # the thread must survive anything
                _log.exception("PostgreSQL writer: batch failed")
                results = [(None, None, exc, None) for _ in batch]
            _deliver(list(zip(batch, results, strict=True)), self._describe)
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
        conflicts_fail_operations = False
        while True:
            if conn is None or conn.raw.closed:
                conn = self._reconnect()
                if conn is None:
                    closed = RuntimeError("the PostgreSQL store was closed; open a new Client")
                    return None, [(None, None, closed, None) for _ in batch]
            try:
                results = self._attempt(conn, batch, savepoints=savepoints,
                                        conflicts_fail_operations=conflicts_fail_operations)
            except _ConnectionLost as lost:
                _log.warning("PostgreSQL connection lost (%s); reconnecting", lost.cause)
                self._discard(conn)
                conn = None
                if lost.results is not None:
                    committed: bool | None = None
                    while committed is None:  # the outcome must be known before a rerun
                        conn = self._reconnect()
                        if conn is None:
                            break
                        try:
                            committed = self._settle(conn, lost.marker)
                        except psycopg.Error as exc:
                            # lost again while asking, or the old session lingers: ask again
                            _log.warning("PostgreSQL: settling a cut-off COMMIT: %s", exc)
                            self._discard(conn)
                            conn = None
                            self._stopping.wait(0.5)
                    if committed is None:
                        _log.error("PostgreSQL: a COMMIT was cut off and the store closed "
                                   "before its outcome was known")
                        unknown = RuntimeError(
                            "the PostgreSQL store was closed while the outcome of this "
                            "operation was unknown (it may have been applied)"
                        )
                        return None, [(None, None, unknown, None) for _ in batch]
                    _log.warning("PostgreSQL: a COMMIT was cut off; it %s",
                                 "had committed" if committed else "had not committed: rerun")
                    if committed:
                        with self._counter_lock:
                            self.commits += 1
                            self.operations += len(batch)
                        return conn, lost.results
                    # nothing of it happened: run it again
                continue
            except _TRANSIENT:
                self._rollback(conn)
                conflicts += 1
                with self._counter_lock:
                    self.conflicts += 1
                if conflicts >= _MAX_CONFLICT_RETRIES:
                    # let the conflicting operation fail on its own
                    savepoints = conflicts_fail_operations = True
                time.sleep(0.001 * conflicts)
                continue
            if results is None:
                savepoints = True  # an operation raised: run again, isolating each one
                continue
            return conn, results

    def _attempt(
        self, conn: PgConnection, batch: list[Any], *, savepoints: bool,
        conflicts_fail_operations: bool = False,
    ) -> list[Result] | None:
        if not savepoints:
            return self._attempt_pipelined(conn, batch)
        return self._attempt_stepwise(conn, batch, savepoints=savepoints,
                                      conflicts_fail_operations=conflicts_fail_operations)

    def _attempt_pipelined(self, conn: PgConnection, batch: list[Any]) -> list[Result] | None:
        """The fast path: the whole batch in one pipeline, so that statements whose
        results are not read (inserts, updates, COMMIT) cost no round trip of their own.
        None when an operation raised, after rolling back."""
        raw = conn.raw
        results: list[Result] = []
        failed: BaseException | None = None
        committing = False
        marker = None
        try:
            with raw.pipeline():
                conn.wrote, conn.unread_writes = False, 0
                conn.execute("BEGIN")
                if all(getattr(item[0], "lease_only", False) for item in batch):
                    # claims and heartbeats only: losing them in a crash is harmless, so
                    # their COMMIT need not wait for the WAL flush (later durable commits
                    # flush it anyway, in order)
                    conn.execute("SET LOCAL synchronous_commit TO OFF")
                for op, future, _loop, _notifier in batch:
                    notes = StoreNotes()
                    try:
                        value = op(conn, notes)
                    except BaseException as exc:
                        failed = exc
                        break
                    results.append((future, value, None, notes))
                if failed is None:
                    payload = self._notify_payload(results)
                    if payload is not None:
                        conn.execute("SELECT pg_notify(?, ?)", (self._channel, payload))
                    marker = self._mark(conn)
                    # from here the COMMIT may reach the server (a pipeline flushes as it
                    # goes): a connection lost now leaves the outcome to be settled
                    committing = True
                    conn.execute("COMMIT")
            conn.round_trips += 1  # the pipeline's final sync
        except psycopg.OperationalError as exc:
            if _unusable(conn, exc):
                if committing:
                    raise _ConnectionLost(exc, results, marker) from exc
                raise _ConnectionLost(exc) from exc  # before COMMIT: rolled back
            if isinstance(exc, _TRANSIENT):
                raise
            failed = exc
        except psycopg.Error as exc:
            failed = exc
        if failed is not None:
            if isinstance(failed, _TRANSIENT):
                raise failed
            if _unusable(conn, failed):
                raise _ConnectionLost(failed) from failed
            self._rollback(conn)
            return None
        self._count_commit(conn, len(batch))
        return results

    def _count_commit(self, conn: PgConnection, operations: int) -> None:
        with self._counter_lock:
            self.commits += 1
            self.operations += operations
            self.statements += conn.statements
            self.round_trips += conn.round_trips
        conn.statements = conn.round_trips = 0

    def _attempt_stepwise(
        self, conn: PgConnection, batch: list[Any], *, savepoints: bool,
        conflicts_fail_operations: bool = False,
    ) -> list[Result] | None:
        """One transaction over the batch; None when an operation raised (without
        savepoints), after rolling back."""
        try:
            conn.wrote, conn.unread_writes = False, 0
            conn.execute("BEGIN")
            results: list[Result] = []
            for op, future, _loop, _notifier in batch:
                notes = StoreNotes()
                if not savepoints:
                    try:
                        value = op(conn, notes)
                    except _TRANSIENT:
                        raise
                    except psycopg.OperationalError as exc:
                        if _unusable(conn, exc):
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
                    if _unusable(conn, exc):
                        raise
                    if isinstance(exc, _TRANSIENT) and not conflicts_fail_operations:
                        raise  # a conflict is the batch's to retry, not this operation's
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
            marker = self._mark(conn)
            try:
                conn.execute(commit)
            except psycopg.OperationalError as exc:
                if _unusable(conn, exc):
                    raise _ConnectionLost(exc, results, marker) from exc
                raise
            self._count_commit(conn, len(batch))
            return results
        except _ConnectionLost:
            raise
        except psycopg.OperationalError as exc:
            if _unusable(conn, exc):
                raise _ConnectionLost(exc) from exc  # before COMMIT: rolled back
            raise

    def _notify_payload(self, results: list[Result]) -> str | None:
        """``origin|kinds|due|closed run ids`` (``*`` when too many to fit a NOTIFY)."""
        kinds: set[str] = set()
        due = math.inf
        closed: list[str] = []
        for _future, _value, _error, notes in results:
            if notes is not None:
                kinds |= notes.kinds
                due = min(due, notes.due)
                closed.extend(notes.closed_runs)
        if not kinds and due == math.inf:
            return None
        runs = ",".join(closed)
        if len(runs) > 6000 or "'" in runs or "|" in runs:
            runs = StoreNotifier.ALL_RUNS
        return (f"{self._origin}|{','.join(sorted(kinds))}|"
                f"{'' if due == math.inf else repr(due)}|{runs}")

    def _mark(self, conn: PgConnection) -> tuple[str, int, int, Any] | None:
        """Write this batch's number into the connection's commit marker, inside the
        batch's transaction: it is there afterwards exactly when the batch committed."""
        if not self.marking or not (conn.wrote or conn.unread_writes):
            return None  # a batch that changed nothing can simply run again
        conn.batch += 1
        now = time.time()
        if conn.batch == 1:  # a connection's first batch sweeps markers nobody needs
            conn.execute("DELETE FROM writer_commits WHERE updated_at < ?", (now - 86400,))
        conn.execute(
            "INSERT INTO writer_commits (writer_id, batch, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (writer_id) DO UPDATE SET batch = excluded.batch, "
            "updated_at = excluded.updated_at",
            (conn.writer_id, conn.batch, now),
        )
        return conn.writer_id, conn.batch, conn.backend_pid, conn.backend_started

    def _settle(self, conn: PgConnection, marker: tuple[str, int, int, Any] | None) -> bool:
        """Whether a batch whose COMMIT was cut off committed, asked on a new connection.

        First the old session must be over: while it lives it may still commit (it may
        not even have received the COMMIT yet, and then it would wait for a client that
        is gone). So the old session (its pid and start time name it; a restart ended it
        anyway) is terminated and awaited. Then the marker row tells.
        """
        if marker is None:
            return False  # no marker (schema not ready): only idempotent work ran; rerun
        writer_id, batch, pid, backend_started = marker
        for _ in range(600):
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = ? "
                "AND backend_start = ?)", (pid, backend_started),
            ).fetchone()
            if row is None or not row[0]:
                break
            conn.execute("SELECT pg_terminate_backend(?)", (pid,)).fetchone()
            time.sleep(0.05)
        else:
            raise psycopg.OperationalError(f"the old session (pid {pid}) does not end")
        row = conn.execute("SELECT batch FROM writer_commits WHERE writer_id = ?",
                           (writer_id,)).fetchone()
        return row is not None and int(row[0]) == batch

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


def typed_error(exc: BaseException, describe: str) -> BaseException:
    """``exc`` as Perdure's error when PostgreSQL (or psycopg's adaptation) refused a value
    or ran short of something; anything else unchanged (a bug should show as itself).
    Lost connections and conflicts never get here: the writer rides them out."""
    typed: BaseException
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError
                  | psycopg.errors.ProgramLimitExceeded | UnicodeEncodeError | OverflowError):
        reason = " ".join(str(exc).split())
        typed = InvalidArgumentError(
            f"PostgreSQL at {describe} cannot store a value of this call ({reason})")
    elif isinstance(exc, psycopg.OperationalError):
        reason = " ".join(str(exc).split())
        typed = DatabaseUnavailableError(f"PostgreSQL at {describe} failed: {reason}")
    else:
        return exc
    typed.__cause__ = exc
    return typed


def _deliver(items: list[tuple[Any, Result]], describe: str = "") -> None:
    """Hand results to the event loops that wait for them, grouped per loop; driver
    errors as Perdure's (see :func:`typed_error`)."""
    by_loop: dict[Any, list[Any]] = {}
    for (_op, future, loop, notifier), (_f, value, error, notes) in items:
        if error is not None:
            error = typed_error(error, describe)
        by_loop.setdefault((loop, notifier), []).append((future, value, error, notes))
    for (loop, notifier), group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, group, notifier)
        except RuntimeError:
            pass  # that loop is closed; nobody waits for these results
