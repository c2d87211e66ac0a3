"""The PostgreSQL store: many worker processes on many machines, one database.

The operations are :class:`SqlStore`'s, with PostgreSQL's dialect: row locks
(``FOR UPDATE``) on the run an operation changes, claims with ``FOR UPDATE SKIP
LOCKED`` so that every task goes to exactly one worker, and an advisory lock per
workflow id around starts. The writer pool (``_postgres_writer``) does group
commit and rides out lost connections; a listener thread turns ``NOTIFY`` from
other processes into in-process wake-ups, so idle workers do not poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo

from perdure._clock import Clock, SystemClock
from perdure.store._base import StoreNotes, StoreNotifier
from perdure.store._postgres_writer import PgConnection, PostgresWriterPool, _to_psycopg
from perdure.store._schema import POSTGRES_MIGRATIONS
from perdure.store._sql import Conn, Op, SqlStore

__all__ = ["PostgresStore"]

T = TypeVar("T")

_log = logging.getLogger("perdure.store.postgres")

_MIGRATION_LOCK = 0x7065726475726500  # "perdure\0": one migrating process at a time

# A host cut off from the network in the middle of a transaction keeps its row locks
# until the server notices that it is gone: by default only after TCP's retransmission
# timeout (about 15 minutes) or keepalive (2 hours). Meanwhile no other worker can
# reclaim the runs it locked, and their batches that touch them wait. So each session
# asks the server to drop a silent client after about 5 seconds (unless the server's
# configuration or the URL's options set these; unknown ones, as tcp_user_timeout
# before PostgreSQL 12, are skipped). The cut-off writer reconnects when the network
# returns and settles a cut-off COMMIT by its commit marker.
_SERVER_TCP_SETTINGS = (
    "SELECT set_config(name, v, false) FROM (VALUES ('tcp_keepalives_idle', '2'), "
    "('tcp_keepalives_interval', '1'), ('tcp_keepalives_count', '3'), "
    "('tcp_user_timeout', '5000')) AS d (name, v) JOIN pg_settings USING (name) "
    "WHERE source = 'default'"
)

# The client side likewise: a host whose session the server dropped while the host
# waited for an answer (nothing of its own unacknowledged) would otherwise notice only
# after keepalive's 2 hours, long after the network came back; with these it notices
# within about 5 seconds and reconnects. Parameters in the URL win.
_CLIENT_TCP_DEFAULTS = {
    "keepalives_idle": "2", "keepalives_interval": "1", "keepalives_count": "3",
    "tcp_user_timeout": "5000",
}


def _with_client_tcp_defaults(conninfo: str) -> str:
    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return conninfo  # connecting will explain what is wrong with it
    extra = {k: v for k, v in _CLIENT_TCP_DEFAULTS.items() if k not in given}
    if psycopg.pq.version() < 120000:  # libpq before 12 has no tcp_user_timeout
        extra.pop("tcp_user_timeout", None)
    return psycopg.conninfo.make_conninfo(conninfo, **extra) if extra else conninfo


class PostgresStore(SqlStore):
    """Perdure's state in a PostgreSQL database (optionally in its own schema)."""

    _LOCK = " FOR UPDATE"
    # the run's row first: PostgreSQL locks in this order and keeps what it took when it
    # skips a row, so a task row would stay locked (unclaimed) whenever its run was busy
    _SKIP_LOCKED_OF = " FOR UPDATE OF r, c SKIP LOCKED"
    _LEAST = "LEAST"
    _INSERTION_ORDER = "run_no"
    _JSON = "CAST(? AS jsonb)"

    def _search_attribute_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        # containment, served by the GIN index on search_attributes: the value itself, or
        # a keyword list holding it (a list value: holding each of its items)
        if isinstance(value, list):
            return "search_attributes @> CAST(? AS jsonb)", [json.dumps({key: value})]
        return ("(search_attributes @> CAST(? AS jsonb) OR search_attributes @> "
                "CAST(? AS jsonb))", [json.dumps({key: value}), json.dumps({key: [value]})])

    def __init__(self, conninfo: str, *, url: str, schema: str | None = None,
                 pool_size: int = 2, clock: Clock | None = None, describe: str = "") -> None:
        self.url = url
        self.schema = schema
        self.clock = clock or SystemClock()
        self.notifier = StoreNotifier()
        # other processes' commits arrive by NOTIFY: polls are only a safety net
        self.notifier.first_poll, self.notifier.poll_interval = 0.25, 2.0
        self._conninfo = _with_client_tcp_defaults(conninfo)
        self._describe = describe or conninfo
        self._origin = uuid.uuid4().hex[:12]
        self.channel = f"perdure_{schema}" if schema else "perdure"
        self._pool_size = pool_size
        self._pool: PostgresWriterPool | None = None
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: _NotificationListener | None = None
        self._closed = False

    # ----------------------------------------------------------------- counters
    @property
    def commits(self) -> int:
        """Transactions committed by this process (for benchmarks)."""
        return self._pool.commits if self._pool else 0

    @property
    def operations(self) -> int:
        """Store operations run by this process (for benchmarks)."""
        return self._pool.operations if self._pool else 0

    @property
    def statements(self) -> int:
        """Statements sent in committed transactions (for benchmarks)."""
        return self._pool.statements if self._pool else 0

    @property
    def round_trips(self) -> int:
        """Round trips to the server in committed transactions (for benchmarks)."""
        return self._pool.round_trips if self._pool else 0

    # ----------------------------------------------------------------- lifecycle
    def _setup_connection(self, conn: PgConnection) -> None:
        schema = f'SET search_path TO "{self.schema}"; ' if self.schema else ""
        conn.execute(schema + _SERVER_TCP_SETTINGS)  # one round trip
        conn.statements = 0

    def _start(self) -> None:
        with self._start_lock:
            if self._closed:
                raise RuntimeError("the PostgreSQL store was closed; open a new Client")
            if self._pool is not None:
                return
            pool = PostgresWriterPool(
                self._conninfo, size=self._pool_size, setup=self._setup_connection,
                channel=self.channel, origin=self._origin, describe=self._describe,
            )
            pool.start()
            pool.on_reconnect = self._wake_everything
            self._pool = pool

    def _wake_everything(self) -> None:
        """After an outage, anything may have become ready: every loop of ours looks."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.notifier.notify, StoreNotifier.KINDS, -math.inf,
                                          [StoreNotifier.ALL_RUNS])
            except RuntimeError:
                pass

    def _run(self, op: Op[T]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the PostgreSQL store was closed; open a new Client")
        if self._pool is None:
            self._start()
        assert self._pool is not None
        if self._listener is None:
            self._loop = asyncio.get_running_loop()
            self._listener = _NotificationListener(self)
            self._listener.start()
        return self._pool.submit(op, self.notifier)

    def _liveness_connection(self) -> _LivenessConnection:
        raw = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
        try:
            conn = PgConnection(raw)
            self._setup_connection(conn)
            # soft state: a lost heartbeat is harmless (the next one follows)
            conn.execute("SET synchronous_commit = off")
        except BaseException:
            raw.close()
            raise
        return _LivenessConnection(raw)

    async def close(self) -> None:
        await self._stop_liveness()
        self._closed = True
        pool, listener = self._pool, self._listener
        self._pool = self._listener = None
        loop = asyncio.get_running_loop()
        if listener is not None:
            await loop.run_in_executor(None, listener.stop)
        if pool is not None:
            await loop.run_in_executor(None, pool.stop)

    async def migrate(self) -> None:
        if self._pool is None:
            await asyncio.get_running_loop().run_in_executor(None, self._start)

        def op(conn: Conn, notes: StoreNotes) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            if self.schema:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            self._upgrade_schema(conn, POSTGRES_MIGRATIONS, f"at {self._describe}")

        await self._run(op)
        self._schema_ready()

    def _schema_ready(self) -> None:
        """From now on every batch writes its commit marker (the table exists)."""
        if self._pool is not None:
            self._pool.marking = True

    async def schema_version(self) -> int:
        if self._pool is None:
            await asyncio.get_running_loop().run_in_executor(None, self._start)

        def op(conn: Conn, notes: StoreNotes) -> int:
            return self._read_schema_version(conn)

        version = await self._run(op)
        if version >= 2:
            self._schema_ready()
        return version

    # ----------------------------------------------------------------- dialect
    def _schema_table_exists(self, conn: Conn) -> bool:
        return conn.execute("SELECT to_regclass('perdure_schema')").fetchone()[0] is not None

    def _lock_run_only(self, conn: Conn, workflow_id: str, run_id: str) -> None:
        conn.execute_unread(
            "SELECT 1 FROM workflow_runs WHERE workflow_id = ? AND run_id = ? FOR UPDATE",
            (workflow_id, run_id),
        )

    def _lock_runs_held_by(self, conn: Conn, worker_id: str) -> None:
        conn.execute_unread(
            "SELECT 1 FROM workflow_runs WHERE sticky_worker = ? OR (workflow_id, run_id) IN "
            "(SELECT workflow_id, run_id FROM workflow_tasks WHERE lease_owner = ? UNION "
            "SELECT workflow_id, run_id FROM activity_tasks WHERE lease_owner = ?) "
            "ORDER BY workflow_id, run_id FOR UPDATE",
            (worker_id, worker_id, worker_id),
        )

    def _lock_stream(self, conn: Conn, workflow_id: str) -> None:
        conn.execute_unread("SELECT pg_advisory_xact_lock(hashtextextended(?, 1))",
                            (workflow_id,))

    def _lock_workflow_id(self, conn: Conn, workflow_id: str) -> None:
        conn.execute_unread("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                            (workflow_id,))

    def _claim_sql(self, table: str, key: str, set_clause: str, where: str, order: str,
                   returning: str) -> str:
        # the run's row is locked with the task's, skipping either if taken: operations
        # lock a run before its tasks, and a claim that took a task first and its run
        # later (in a batch) would deadlock with them. The run comes first (see
        # _SKIP_LOCKED_OF): nothing locks a task row without holding its run, so a claim
        # that gets the run gets the task, and one that does not holds nothing
        qualified = ", ".join(f"c.{column.strip()}" for column in key.split(","))
        return (
            f"UPDATE {table} SET {set_clause} WHERE ({key}) IN (SELECT {qualified} "
            f"FROM {table} c JOIN workflow_runs r ON r.workflow_id = c.workflow_id "
            f"AND r.run_id = c.run_id WHERE {where} ORDER BY {order} LIMIT ?"
            f"{self._SKIP_LOCKED_OF}) RETURNING {returning}"
        )

    def _may_reclaim(self, dead_after: float) -> bool:
        pool = self._pool
        return pool is None or time.time() - pool.reconnected_at >= dead_after


class _LivenessConnection:
    """The liveness thread's session: the shared SQL's ``?`` placeholders, autocommit."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any) -> None:
        self.raw.execute(_to_psycopg(sql)[0], params)  # type: ignore[arg-type]

    def close(self) -> None:
        self.raw.close()


class _NotificationListener:
    """A thread on its own connection: LISTEN, and wake this process's workers when
    another process commits new work (or a new due time)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="perdure-postgres-listen",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # wake the thread out of its wait for notifications now, rather than at its
            # next poll (a quarter of a second: every short-lived client paid it on close)
            try:
                with psycopg.connect(self._store._conninfo, autocommit=True,
                                     connect_timeout=2) as conn:
                    conn.execute(f"NOTIFY \"{self._store.channel}\", 'stop'")
            except psycopg.Error:
                pass
        self._thread.join(timeout=5)

    def _main(self) -> None:
        delay = 0.05
        first = True
        while not self._stop.is_set():
            try:
                conn = psycopg.connect(self._store._conninfo, autocommit=True)
            except psycopg.Error:
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            try:
                conn.execute(f'LISTEN "{self._store.channel}"')
                if not first:
                    self._store._wake_everything()  # we may have missed notifications
                first = False
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=0.25):
                        if self._stop.is_set():
                            break  # stop() woke us with a notification of its own
                        try:
                            self._dispatch(note.payload)
                        except Exception:  # a malformed payload must not end the listener
                            _log.warning("ignored a malformed notification: %r", note.payload)
            except psycopg.Error:
                _log.debug("PostgreSQL listener lost its connection; reconnecting")
            finally:
                try:
                    conn.close()
                except Exception:
                    pass

    def _dispatch(self, payload: str) -> None:
        try:
            origin, kinds_text, due_text, runs_text = payload.split("|")
        except ValueError:
            return
        if origin == self._store._origin:
            return  # our own commit: this process was woken already
        kinds = [k for k in kinds_text.split(",") if k]
        due = float(due_text) if due_text else math.inf
        closed = [r for r in runs_text.split(",") if r]
        loop = self._store._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._store.notifier.notify, kinds, due, closed)
        except RuntimeError:
            pass  # the loop is closed
