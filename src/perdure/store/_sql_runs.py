"""The SQL stores' operations on runs: start, signal, read, claim and advance them.

Shared by SQLite and PostgreSQL; ``_sql`` adds activity attempts, due work, queries
and retention on top.

Every store method is one *operation*: a function of a DB-API connection that
a backend's writer runs in a transaction, possibly shared with other operations
(group commit). The SQL is written once, with ``?`` placeholders; the few places
where the dialects differ (row locks, claims with ``SKIP LOCKED``, ``LEAST``) are
class attributes and methods that :class:`PostgresStore` overrides.

Concurrency rule (what makes many worker processes safe on PostgreSQL): an
operation that changes a run's rows first locks that run's ``workflow_runs`` row
(``_lock_run``), so that a run's history, inbox and tasks change one transaction
at a time, and inbox ids are handed out in commit order. Claims take a task row
and its run's row together with ``FOR UPDATE ... SKIP LOCKED`` instead. On SQLite,
whose write lock already serializes every transaction, the locks are no-ops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from perdure._clock import Clock
from perdure._errors import (
    SchemaVersionError,
    WorkflowAlreadyStartedError,
    WorkflowNotFoundError,
)
from perdure._retry import RetryPolicy, next_attempt_at
from perdure.history import Failure, WorkflowStarted, encode_event
from perdure.store import _sql_children as _children
from perdure.store import _sql_cron as _cron
from perdure.store import _sql_reset as _reset
from perdure.store._base import ASYNC_COMPLETION_OWNER, StoreNotes, StoreNotifier, WorkflowStore
from perdure.store._liveness import LIVENESS_UPSERT
from perdure.store._records import (
    ActivityAttempt,
    ActivityDecision,
    ActivityOutcome,
    PendingActivityRecord,
    ResetRecord,
    RunRecord,
    RunSnapshot,
    StartWorkflowRecord,
    WorkflowTaskClaim,
    WorkflowTaskCompletion,
)
from perdure.store._schema import SCHEMA_VERSION

__all__ = ["Conn", "Op", "SqlRunStore", "lease_only"]

T = TypeVar("T")

Conn = Any
"""A DB-API connection with ``execute`` and ``executemany`` taking ``?`` placeholders."""

Op = Callable[[Conn, StoreNotes], T]
"""One store operation: runs inside a transaction the backend's writer owns."""


def lease_only(op: Op[T]) -> Op[T]:
    """Mark an operation whose writes are only leases and liveness: soft state that a
    database crash may lose harmlessly (an unleased task is claimed again, a worker
    heartbeats again). A batch of nothing else need not wait for its WAL to reach disk."""
    op.lease_only = True  # type: ignore[attr-defined]
    return op


_RUN_COLUMNS = (
    "workflow_id, run_id, workflow_type, task_queue, status, history_length, created_at, "
    "closed_at, result, failure, execution_timeout, parent_workflow_id, parent_run_id, "
    "next_run_id, memo, search_attributes, build_id"
)


def _run_record(row: Sequence[Any]) -> RunRecord:
    (workflow_id, run_id, workflow_type, task_queue, status, history_length, created_at,
     closed_at, result, failure, execution_timeout, parent_id, parent_run, next_run, memo,
     search_attributes, build_id) = row
    return RunRecord(
        workflow_id=workflow_id, run_id=run_id, workflow_type=workflow_type,
        task_queue=task_queue, status=status, history_length=history_length,
        created_at=created_at, closed_at=closed_at, result=result, failure=failure,
        execution_timeout=execution_timeout, parent_workflow_id=parent_id,
        parent_run_id=parent_run, next_run_id=next_run,
        memo=bytes(memo) if memo is not None else None,
        search_attributes=_json_bytes(search_attributes), build_id=build_id,
    )


def _json_text(data: bytes | None) -> str | None:
    return data.decode() if data is not None else None


def _json_bytes(value: Any) -> bytes | None:
    """A JSON column's value as JSON bytes (SQLite gives text, psycopg decoded jsonb)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return json.dumps(value).encode()


_failure_decoder = msgspec.json.Decoder(Failure)


@dataclasses.dataclass
class NewRun:
    """A run to insert: by a start, a child start, continue-as-new or a retry."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    input: bytes
    execution_timeout: float | None = None
    execution_deadline: float | None = None
    """Absolute; shared by every run of a chain (continue-as-new, retries)."""
    run_timeout: float | None = None
    attempt: int = 1
    retry_policy: bytes | None = None
    parent: tuple[str, str, int, str] | None = None
    """(workflow id, run id, seq, parent-close policy) of a child's parent."""
    memo: bytes | None = None
    search_attributes: bytes | None = None
    continued_from: str | None = None
    cron_schedule: str | None = None
    scheduled_at: float | None = None
    """When the first workflow task becomes visible (a cron tick, a retry); None: now."""
    last_completion_result: bytes | None = None
    last_failure: bytes | None = None
    """JSON Failure of the run before, handed to this one (cron, retries)."""

    def started_event(self, now: float) -> bytes:
        """The run's WorkflowStarted, as recorded."""
        parent_id, parent_run, parent_seq, _ = self.parent or (None, None, None, None)
        # an empty Raw is "none", and must not be written at all (it would be no JSON)
        optional: dict[str, Any] = {}
        if self.last_completion_result:
            optional["last_completion_result"] = msgspec.Raw(self.last_completion_result)
        return encode_event(WorkflowStarted(
            workflow_type=self.workflow_type, task_queue=self.task_queue,
            input=msgspec.Raw(self.input), started_at=now,
            execution_timeout=self.execution_timeout, parent_workflow_id=parent_id,
            parent_run_id=parent_run, parent_seq=parent_seq,
            continued_from_run_id=self.continued_from,
            memo=json.loads(self.memo) if self.memo else None,
            search_attributes=(json.loads(self.search_attributes)
                               if self.search_attributes else None),
            attempt=self.attempt, run_timeout=self.run_timeout,
            retry_policy=json.loads(self.retry_policy) if self.retry_policy else None,
            cron_schedule=self.cron_schedule,
            last_failure=(_failure_decoder.decode(self.last_failure)
                          if self.last_failure else None),
            **optional,
        ))


_SUCCESSOR_COLUMNS = (
    "r.workflow_type, r.task_queue, r.input, r.execution_timeout, t.fire_at, r.run_timeout, "
    "r.attempt, r.retry_policy, r.parent_workflow_id, r.parent_run_id, r.parent_seq, "
    "r.parent_close_policy, r.memo, r.search_attributes, r.cron_schedule, "
    "r.last_completion_result"
)



def _closed_before_update(workflow_id: str, status: str) -> bytes:
    return json.dumps({
        "type": "WorkflowClosedError", "kind": "application", "non_retryable": True,
        "message": f"workflow {workflow_id!r} closed ({status}) before the update completed",
    }).encode()


def _deadline(*candidates: float | None) -> float | None:
    values = [c for c in candidates if c is not None]
    return min(values) if values else None


class SqlRunStore(WorkflowStore):
    """The operations on runs, in SQL; a backend supplies the writer and the dialect."""

    clock: Clock
    notifier: StoreNotifier
    url: str

    # dialect ----------------------------------------------------------------------
    _LOCK = ""
    """Appended to a SELECT that must lock the rows it reads (PostgreSQL: FOR UPDATE)."""
    _LEAST = "min"
    """The scalar minimum of several values."""
    _INSERTION_ORDER = "rowid"
    """A column that orders the runs of one workflow id by creation."""
    _JSON = "?"
    """A parameter holding a JSON document (PostgreSQL: cast to jsonb)."""

    def _search_attribute_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        """SQL (and its parameters) true when search attribute ``key`` equals ``value``, or,
        for a keyword list, contains it (a list ``value``: contains each of its items)."""
        values = value if isinstance(value, list) else [value]
        # json_each walks a list's items, and gives a scalar as its only row
        clause = " AND ".join(
            ["EXISTS (SELECT 1 FROM json_each(search_attributes, ?) WHERE value = ?)"]
            * len(values)) or "1 = 1"
        params: list[Any] = []
        for item in values:
            params += [f'$."{key}"', int(item) if isinstance(item, bool) else item]
        return f"({clause})", params

    def _run(self, op: Op[T]) -> asyncio.Future[T]:
        raise NotImplementedError

    def _lock_run(self, conn: Conn, workflow_id: str, run_id: str) -> tuple[Any, ...] | None:
        """Lock a run's row (PostgreSQL) and read (status, history_length)."""
        row = conn.execute(
            "SELECT status, history_length FROM workflow_runs WHERE workflow_id = ? "
            f"AND run_id = ?{self._LOCK}",
            (workflow_id, run_id),
        ).fetchone()
        return tuple(row) if row is not None else None

    def _lock_run_only(self, conn: Conn, workflow_id: str, run_id: str) -> None:
        """Lock a run's row without reading it (PostgreSQL). The statements after it run
        once the lock is held, and (READ COMMITTED) see every change committed before;
        in a pipeline it costs no round trip of its own."""

    def _schema_table_exists(self, conn: Conn) -> bool:
        return conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='perdure_schema'"
        ).fetchone() is not None

    def _read_schema_version(self, conn: Conn) -> int:
        """The schema version in the database (0 when Perdure never migrated it)."""
        if not self._schema_table_exists(conn):
            return 0
        row = conn.execute("SELECT version FROM perdure_schema").fetchone()
        return int(row[0]) if row else 0

    def _upgrade_schema(self, conn: Conn, migrations: Sequence[str], where: str) -> None:
        """Apply the migrations the database lacks; refuse a schema newer than this code."""
        version = self._read_schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the database {where} has Perdure schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this version of Perdure knows; upgrade Perdure "
                "(pip install -U perdure) on this machine"
            )
        for index in range(version, SCHEMA_VERSION):
            for statement in migrations[index].split(";"):
                if statement.strip():
                    conn.execute(statement)
        if version == 0:
            conn.execute("INSERT INTO perdure_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            conn.execute("UPDATE perdure_schema SET version = ?", (SCHEMA_VERSION,))

    def _lock_workflow_id(self, conn: Conn, workflow_id: str) -> None:
        """Serialize starts of one workflow id (PostgreSQL: an advisory lock)."""

    def _claim_sql(self, table: str, key: str, set_clause: str, where: str, order: str,
                   returning: str) -> str:
        """UPDATE the first ready rows of ``table`` (identified by ``key``; ``where`` and
        ``order`` name its columns as ``c.``) and return them: a claim. Parameters: the
        SET clause's, the WHERE clause's, the limit."""
        del key  # SQLite: the rowid identifies a row
        return (
            f"UPDATE {table} SET {set_clause} WHERE rowid IN (SELECT c.rowid FROM {table} c "
            f"WHERE {where} ORDER BY {order} LIMIT ?) RETURNING {returning}"
        )

    # ---------------------------------------------------------------- helpers
    def _latest_run(self, conn: Conn, workflow_id: str) -> tuple[str, str] | None:
        row = conn.execute(
            # insertion order, not created_at: clocks of different hosts may disagree
            "SELECT run_id, status FROM workflow_runs WHERE workflow_id = ? "
            f"ORDER BY {self._INSERTION_ORDER} DESC LIMIT 1",
            (workflow_id,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def _running_run(self, conn: Conn, workflow_id: str, run_id: str | None) -> str:
        """The run that an inbound event or termination is for, locked; it must be running."""
        if run_id is None:
            # serialised with starts: a start may close the latest run and open another
            self._lock_workflow_id(conn, workflow_id)
            latest = self._latest_run(conn, workflow_id)
            if latest is None:
                raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
            run_id = latest[0]
        row = self._lock_run(conn, workflow_id, run_id)
        while row is not None and row[0] != "running":
            # a run that continued as new, or was retried: what is addressed to it goes
            # to the run that carries on
            (next_run,) = conn.execute(
                "SELECT next_run_id FROM workflow_runs WHERE workflow_id = ? AND run_id = ?",
                (workflow_id, run_id),
            ).fetchone()
            if next_run is None:
                break
            run_id = next_run
            row = self._lock_run(conn, workflow_id, run_id)
        if row is None:
            raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r} and run {run_id}")
        status = row[0]
        if status != "running":
            raise WorkflowNotFoundError(
                f"workflow {workflow_id!r} (run {run_id}) is {status}, not running; "
                "only running workflows accept signals, updates, cancellation and termination"
            )
        return run_id

    def _ensure_workflow_task(
        self, conn: Conn, workflow_id: str, run_id: str, now: float,
        notes: StoreNotes,
    ) -> None:
        conn.execute(
            "INSERT INTO workflow_tasks (workflow_id, run_id, task_queue, visible_at, "
            "sticky_worker, sticky_until) "
            "SELECT workflow_id, run_id, task_queue, ?, sticky_worker, ? + sticky_for "
            "FROM workflow_runs WHERE workflow_id = ? AND run_id = ? "
            "ON CONFLICT (workflow_id, run_id) DO NOTHING",
            (now, now, workflow_id, run_id),
        )
        notes.add("workflow_task")

    def _close_run(
        self, conn: Conn, workflow_id: str, run_id: str, status: str, now: float,
        result: bytes | None, failure: bytes | None, notes: StoreNotes, *,
        may_retry: bool = True,
    ) -> None:
        """Close a (locked) running run; a failed or run-timed-out run whose retry policy
        allows another attempt is followed by that attempt, a closed run of a cron chain
        by the chain's next run, and its parent hears nothing (``may_retry``: neither may
        follow, past the execution deadline)."""
        key = (workflow_id, run_id)
        parent = conn.execute(
            "UPDATE workflow_runs SET status = ?, result = ?, failure = ?, closed_at = ?, "
            "sticky_worker = NULL WHERE workflow_id = ? AND run_id = ? "
            "RETURNING parent_workflow_id, parent_run_id, parent_seq, retry_policy, attempt, "
            "cron_schedule, scheduled_at, last_completion_result",
            (status, result, failure, now, *key),
        ).fetchone()
        retry: tuple[NewRun, float] | None = None
        if may_retry and status in ("failed", "timed_out") and parent[3] is not None:
            retry = self._retry(conn, workflow_id, run_id, bytes(parent[3]), int(parent[4]),
                                failure, now)
        if retry is None and may_retry and status in _cron.CONTINUES and parent[5] is not None:
            retry = _cron.next_cron_run(self, conn, workflow_id, run_id, tuple(parent[5:8]),
                                        status, result, failure, now)
        conn.execute("DELETE FROM workflow_tasks WHERE workflow_id = ? AND run_id = ?", key)
        conn.execute("DELETE FROM timers WHERE workflow_id = ? AND run_id = ?", key)
        conn.execute("DELETE FROM inbox WHERE workflow_id = ? AND run_id = ?", key)
        # attempts left open for async completion go too: no worker will report them
        conn.execute(
            "DELETE FROM activity_tasks WHERE workflow_id = ? AND run_id = ? "
            "AND (lease_owner IS NULL OR lease_owner = ?)", (*key, ASYNC_COMPLETION_OWNER),
        )
        conn.execute(
            "UPDATE activity_tasks SET cancel_requested = 1 WHERE workflow_id = ? AND run_id = ?",
            key,
        )
        conn.execute(
            "UPDATE query_tasks SET done = 1, error = ? WHERE workflow_id = ? AND run_id = ? "
            "AND done = 0 AND lease_owner IS NULL",
            ("closed", *key),
        )
        outstanding = conn.execute(
            "UPDATE updates SET state = 'failed', failure = ? WHERE workflow_id = ? "
            "AND run_id = ? AND state IN ('requested', 'accepted') RETURNING update_id",
            (_closed_before_update(workflow_id, status), *key),
        ).fetchall()
        if outstanding:
            notes.add("update")
        # a run that another follows: result() waiters read where the chain went
        notes.run_closed(run_id, (status, result, failure) if retry is None else None)
        if retry is not None:
            successor, at = retry
            self._insert_run(conn, successor, now, notes)
            self._ensure_workflow_task(conn, workflow_id, successor.run_id, at, notes)
            notes.due_at(at)
        elif parent[0] is not None and status not in ("continued_as_new", "reset"):
            _children.notify_parent(self, conn, (parent[0], parent[1], int(parent[2])), status,
                                    result, failure, now, notes)
        _children.apply_parent_close_policies(self, conn, workflow_id, run_id, status, now,
                                              notes)

    def _retry(
        self, conn: Conn, workflow_id: str, run_id: str, policy: bytes, attempt: int,
        failure: bytes | None, now: float,
    ) -> tuple[NewRun, float] | None:
        """The next attempt of a failed run and when it starts, if its policy allows one
        before the execution deadline; marks the closing run as followed by it."""
        recorded = _failure_decoder.decode(failure) if failure else None
        deadline = conn.execute(
            "SELECT fire_at FROM timers WHERE workflow_id = ? AND run_id = ? AND seq = 0",
            (workflow_id, run_id),
        ).fetchone()
        at = next_attempt_at(
            RetryPolicy.from_dict(json.loads(policy)), attempt, now,
            error_type=recorded.type if recorded is not None else "",
            non_retryable=recorded is not None and recorded.non_retryable,
            deadline=deadline[0] if deadline is not None else None,
        )
        if at is None:
            return None
        self._lock_workflow_id(conn, workflow_id)  # one running run per workflow id
        successor = dataclasses.replace(
            self._successor(conn, workflow_id, run_id, str(uuid.uuid4())), attempt=attempt + 1,
            scheduled_at=at, last_failure=failure,
        )
        conn.execute(
            "UPDATE workflow_runs SET next_run_id = ? WHERE workflow_id = ? AND run_id = ?",
            (successor.run_id, workflow_id, run_id),
        )
        return successor, at

    def _insert_run(self, conn: Conn, run: NewRun, now: float, notes: StoreNotes,
                    started_event: bytes | None = None,
                    history: Sequence[tuple[str, bytes]] | None = None) -> None:
        """Insert a running run with its WorkflowStarted (or a whole ``history``, for a
        reset or fork) and its timeout timers (no task)."""
        if history is None:
            history = [("WorkflowStarted", started_event or run.started_event(now))]
        parent_id, parent_run, parent_seq, policy = run.parent or (None, None, None, None)
        scheduled = run.scheduled_at if run.scheduled_at is not None else now
        conn.execute(
            "INSERT INTO workflow_runs (workflow_id, run_id, workflow_type, task_queue, "
            "status, input, history_length, created_at, execution_timeout, run_timeout, "
            "attempt, retry_policy, parent_workflow_id, parent_run_id, parent_seq, "
            "parent_close_policy, memo, search_attributes, cron_schedule, scheduled_at, "
            "last_completion_result) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            f"{self._JSON}, ?, ?, ?)",
            (run.workflow_id, run.run_id, run.workflow_type, run.task_queue, run.input,
             len(history), now, run.execution_timeout, run.run_timeout, run.attempt,
             run.retry_policy, parent_id, parent_run, parent_seq, policy, run.memo,
             _json_text(run.search_attributes), run.cron_schedule, scheduled,
             run.last_completion_result),
        )
        self._append(conn, run.workflow_id, run.run_id, 1, history)
        # seq 0: the execution deadline (the whole chain); seq -1: this run's own timeout,
        # counted from its first task (a cron run waits for its tick first, as in Temporal)
        for seq, fire_at in ((0, run.execution_deadline),
                             (-1, scheduled + run.run_timeout if run.run_timeout else None)):
            if fire_at is not None:
                conn.execute(
                    "INSERT INTO timers (workflow_id, run_id, seq, fire_at) VALUES (?, ?, ?, ?)",
                    (run.workflow_id, run.run_id, seq, fire_at),
                )
                notes.due_at(fire_at)

    def _successor(self, conn: Conn, workflow_id: str, run_id: str, new_run_id: str) -> NewRun:
        """The next run of a chain, as a copy of ``run_id`` (read before it closes)."""
        (workflow_type, task_queue, input_, execution_timeout, deadline, run_timeout, attempt,
         retry_policy, parent_id, parent_run, parent_seq, policy, memo, search, cron,
         last_result) = conn.execute(
            f"SELECT {_SUCCESSOR_COLUMNS} FROM workflow_runs r LEFT JOIN timers t "
            "ON t.workflow_id = r.workflow_id AND t.run_id = r.run_id AND t.seq = 0 "
            "WHERE r.workflow_id = ? AND r.run_id = ?",
            (workflow_id, run_id),
        ).fetchone()
        return NewRun(
            workflow_id=workflow_id, run_id=new_run_id, workflow_type=workflow_type,
            task_queue=task_queue, input=bytes(input_) if input_ is not None else b"[]",
            execution_timeout=execution_timeout, execution_deadline=deadline,
            run_timeout=run_timeout, attempt=int(attempt),
            retry_policy=bytes(retry_policy) if retry_policy is not None else None,
            parent=(parent_id, parent_run, int(parent_seq), policy) if parent_id else None,
            memo=bytes(memo) if memo is not None else None,
            search_attributes=_json_bytes(search), continued_from=run_id, cron_schedule=cron,
            last_completion_result=bytes(last_result) if last_result is not None else None,
        )

    def _append(
        self, conn: Conn, workflow_id: str, run_id: str, start_seq: int,
        events: Sequence[tuple[str, bytes]],
    ) -> None:
        """Append events to a run's history: one statement per 1,000 events (the
        drivers' parameter limits allow 6,000 on SQLite and 13,000 on PostgreSQL)."""
        for first in range(0, len(events), 1000):
            chunk = events[first:first + 1000]
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            params: list[Any] = []
            for i, (kind, data) in enumerate(chunk, start_seq + first):
                params += (workflow_id, run_id, i, kind, data)
            conn.execute(
                "INSERT INTO history_events (workflow_id, run_id, seq, event_type, data) "
                f"VALUES {values}",
                params,
            )

    # ---------------------------------------------------------------- client side
    async def start_workflow(self, record: StartWorkflowRecord) -> str:
        def op(conn: Conn, notes: StoreNotes) -> str:
            self._lock_workflow_id(conn, record.workflow_id)
            if record.update_request is not None:
                asked = conn.execute(
                    "SELECT run_id FROM updates WHERE workflow_id = ? AND update_id = ?",
                    (record.workflow_id, record.update_request[0]),
                ).fetchone()
                if asked is not None:
                    return str(asked[0])  # this update-with-start, asked before (a retry)
            latest = self._latest_run(conn, record.workflow_id)
            if latest is not None:
                run_id, status = latest
                if run_id == record.run_id:
                    return run_id  # this very start, committed before a lost connection
                length = 0
                if status == "running":
                    locked = self._lock_run(conn, record.workflow_id, run_id)
                    status, length = locked if locked is not None else ("gone", 0)
                terminated = False
                if status == "running":
                    if record.signal_event is not None:
                        conn.execute(
                            "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
                            (record.workflow_id, run_id, record.signal_event),
                        )
                        self._ensure_workflow_task(conn, record.workflow_id, run_id, record.now,
                                                   notes)
                        return run_id
                    if record.id_conflict_policy == "use_existing":
                        if record.update_request is not None:
                            # again, now that the run is locked: a request_update of the
                            # same id may have committed in between
                            asked = conn.execute(
                                "SELECT run_id FROM updates WHERE workflow_id = ? "
                                "AND update_id = ?",
                                (record.workflow_id, record.update_request[0]),
                            ).fetchone()
                            if asked is not None:
                                return str(asked[0])
                            self._insert_update(conn, record.workflow_id, run_id,
                                                record.update_request, record.now, notes)
                        return run_id
                    if record.id_conflict_policy != "terminate_existing" \
                            or record.terminate_event is None:
                        raise WorkflowAlreadyStartedError(
                            f"workflow {record.workflow_id!r} is already running (run "
                            f"{run_id}); use get_workflow_handle() to reach it, pick another "
                            "id, or start with another id_conflict_policy",
                            workflow_id=record.workflow_id, run_id=run_id,
                        )
                    self._terminate_run(conn, record.workflow_id, run_id, int(length),
                                        record.terminate_event,
                                        record.terminate_failure or b"", notes)
                    terminated = True
                policy = record.id_reuse_policy
                # the reuse policy is about closed runs; one just terminated by this start
                # is the conflict policy's business
                if not terminated and (policy == "reject_duplicate" or (
                    policy == "allow_duplicate_failed_only" and status == "completed"
                )):
                    raise WorkflowAlreadyStartedError(
                        f"workflow id {record.workflow_id!r} was already used (last run {run_id} "
                        f"is {status}) and the id reuse policy is {policy}",
                        workflow_id=record.workflow_id, run_id=run_id,
                    )
            self._insert_run(conn, NewRun(
                workflow_id=record.workflow_id, run_id=record.run_id,
                workflow_type=record.workflow_type, task_queue=record.task_queue,
                input=record.input, execution_timeout=record.execution_timeout,
                execution_deadline=(record.now + record.execution_timeout
                                    if record.execution_timeout is not None else None),
                run_timeout=record.run_timeout, retry_policy=record.retry_policy,
                memo=record.memo, search_attributes=record.search_attributes,
                cron_schedule=record.cron_schedule, scheduled_at=record.first_task_at,
            ), record.now, notes, started_event=record.started_event)
            if record.signal_event is not None:
                conn.execute(
                    "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
                    (record.workflow_id, record.run_id, record.signal_event),
                )
            if record.update_request is not None:
                self._insert_update(conn, record.workflow_id, record.run_id,
                                    record.update_request, record.now, notes)
                return record.run_id
            if record.first_completion is not None and record.signal_event is None:
                self._apply_completion(conn, record.first_completion, record.now, notes,
                                       inbox_pending=False, task_row=False)
                return record.run_id
            if record.eager_worker is not None and record.signal_event is None:
                conn.execute(
                    "INSERT INTO workflow_tasks (workflow_id, run_id, task_queue, visible_at, "
                    "lease_owner, lease_expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (record.workflow_id, record.run_id, record.task_queue, record.now,
                     record.eager_worker, time.time() + record.eager_lease),
                )
                return record.run_id
            first = record.first_task_at if record.first_task_at is not None else record.now
            self._ensure_workflow_task(conn, record.workflow_id, record.run_id, first, notes)
            if record.first_task_at is not None:
                notes.due_at(first)
            return record.run_id

        return await self._run(op)

    async def deliver_event(self, workflow_id: str, run_id: str | None, event: bytes) -> str:
        def op(conn: Conn, notes: StoreNotes) -> str:
            rid = self._running_run(conn, workflow_id, run_id)
            conn.execute(
                "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
                (workflow_id, rid, event),
            )
            self._ensure_workflow_task(conn, workflow_id, rid, self.clock.now(), notes)
            return rid

        return await self._run(op)

    async def request_update(
        self, workflow_id: str, run_id: str | None, update_id: str, name: str, event: bytes
    ) -> str:
        def op(conn: Conn, notes: StoreNotes) -> str:
            select = "SELECT run_id FROM updates WHERE workflow_id = ? AND update_id = ?"
            existing = conn.execute(select, (workflow_id, update_id)).fetchone()
            if existing is not None:
                return str(existing[0])  # asked before (a retry): the same update
            rid = self._running_run(conn, workflow_id, run_id)
            existing = conn.execute(select, (workflow_id, update_id)).fetchone()
            if existing is not None:
                return str(existing[0])
            self._insert_update(conn, workflow_id, rid, (update_id, name, event),
                                self.clock.now(), notes)
            return rid

        return await self._run(op)

    def _insert_update(self, conn: Conn, workflow_id: str, run_id: str,
                       request: tuple[str, str, bytes], now: float, notes: StoreNotes) -> None:
        """A requested update: its row (how callers follow it) and its inbox event."""
        update_id, name, event = request
        conn.execute(
            "INSERT INTO updates (workflow_id, update_id, run_id, name, state, created_at) "
            "VALUES (?, ?, ?, ?, 'requested', ?)",
            (workflow_id, update_id, run_id, name, now),
        )
        conn.execute(
            "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
            (workflow_id, run_id, event),
        )
        self._ensure_workflow_task(conn, workflow_id, run_id, now, notes)

    def _lock_stream(self, conn: Conn, workflow_id: str) -> None:
        """Serialize appends to one workflow's stream, so that ids follow commit order
        (PostgreSQL: an advisory lock; SQLite serializes every transaction)."""

    def _append_stream(self, conn: Conn, events: Sequence[tuple[str, str, bytes]],
                       notes: StoreNotes) -> None:
        if not events:
            return
        for workflow_id in sorted({e[0] for e in events}):
            self._lock_stream(conn, workflow_id)
        now = self.clock.now()
        conn.executemany(
            "INSERT INTO stream_events (workflow_id, run_id, data, created_at) "
            "VALUES (?, ?, ?, ?)", [(w, r, d, now) for w, r, d in events],
        )
        notes.add("stream")

    async def acquire_permit(
        self, name: str, holder: str, *, concurrency: int | None, per_minute: int | None,
        tokens: int, lease: float,
    ) -> float | None:
        def op(conn: Conn, notes: StoreNotes) -> float | None:
            self._lock_stream(conn, "permit:" + name)  # one decision per limit at a time
            now = self.clock.now()
            conn.execute(
                "DELETE FROM rate_permits WHERE name = ? AND acquired_at < ? "
                "AND (released_at IS NOT NULL OR expires_at < ?)", (name, now - 60, now),
            )
            held, used, oldest = conn.execute(
                "SELECT count(*) FILTER (WHERE released_at IS NULL AND expires_at >= ? "
                "AND holder <> ?), coalesce(sum(tokens) FILTER (WHERE acquired_at >= ? "
                "AND holder <> ?), 0), min(acquired_at) FILTER (WHERE acquired_at >= ?) "
                "FROM rate_permits WHERE name = ?",
                (now, holder, now - 60, holder, now - 60, name),
            ).fetchone()
            if concurrency is not None and held >= concurrency:
                return 0.1  # a share frees when a call ends: ask again soon
            if per_minute is not None and used > 0 and used + tokens > per_minute:
                return max(0.05, (oldest or now) + 60 - now)
            conn.execute(
                "INSERT INTO rate_permits (name, holder, tokens, acquired_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name, holder) DO UPDATE SET "
                "tokens = excluded.tokens, expires_at = excluded.expires_at, "
                "released_at = NULL",
                (name, holder, tokens, now, now + lease),
            )
            return None

        return await self._run(op)

    async def release_permit(self, name: str, holder: str, tokens: int) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            conn.execute(
                "UPDATE rate_permits SET tokens = ?, released_at = ? WHERE name = ? "
                "AND holder = ?", (tokens, self.clock.now(), name, holder),
            )
            notes.add("permit")

        await self._run(op)

    async def append_stream(self, events: Sequence[tuple[str, str, bytes]]) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            self._append_stream(conn, events, notes)

        await self._run(lease_only(op))

    async def read_stream(self, workflow_id: str, after: int, limit: int,
                          ) -> list[tuple[int, str, bytes]]:
        def op(conn: Conn, notes: StoreNotes) -> list[tuple[int, str, bytes]]:
            rows = conn.execute(
                "SELECT id, run_id, data FROM stream_events WHERE workflow_id = ? AND id > ? "
                "ORDER BY id LIMIT ?", (workflow_id, after, limit),
            ).fetchall()
            return [(int(i), str(r), bytes(d)) for i, r, d in rows]

        return await self._run(op)

    async def put_payloads(self, workflow_id: str, payloads: Sequence[tuple[str, bytes]],
                           ) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            conn.executemany(
                "INSERT INTO payloads (workflow_id, hash, data, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (workflow_id, hash) DO NOTHING",
                [(workflow_id, h, data, self.clock.now()) for h, data in payloads],
            )

        await self._run(op)

    async def get_payloads(self, workflow_id: str, hashes: Sequence[str]) -> dict[str, bytes]:
        def op(conn: Conn, notes: StoreNotes) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            wanted = list(dict.fromkeys(hashes))
            for first in range(0, len(wanted), 500):
                chunk = wanted[first:first + 500]
                rows = conn.execute(
                    "SELECT hash, data FROM payloads WHERE workflow_id = ? AND hash IN "
                    f"({','.join('?' * len(chunk))})", (workflow_id, *chunk),
                ).fetchall()
                found.update((str(h), bytes(d)) for h, d in rows)
            return found

        return await self._run(op)

    async def reset_workflow(self, record: ResetRecord) -> str:
        def op(conn: Conn, notes: StoreNotes) -> str:
            return _reset.reset(self, conn, record, self.clock.now(), notes)

        return await self._run(op)

    async def get_update(
        self, workflow_id: str, update_id: str
    ) -> tuple[str, bytes | None, bytes | None] | None:
        def op(conn: Conn, notes: StoreNotes) -> tuple[str, bytes | None, bytes | None] | None:
            row = conn.execute(
                "SELECT state, result, failure FROM updates WHERE workflow_id = ? "
                "AND update_id = ?",
                (workflow_id, update_id),
            ).fetchone()
            if row is None:
                return None
            state, result, failure = row
            return (str(state), bytes(result) if result is not None else None,
                    bytes(failure) if failure is not None else None)

        return await self._run(op)

    async def terminate(
        self, workflow_id: str, run_id: str | None, event: bytes, failure: bytes
    ) -> str:
        def op(conn: Conn, notes: StoreNotes) -> str:
            rid = self._running_run(conn, workflow_id, run_id)
            (length,) = conn.execute(
                "SELECT history_length FROM workflow_runs WHERE workflow_id = ? AND run_id = ?",
                (workflow_id, rid),
            ).fetchone()
            self._terminate_run(conn, workflow_id, rid, length, event, failure, notes)
            return rid

        return await self._run(op)

    def _terminate_run(
        self, conn: Conn, workflow_id: str, run_id: str, length: int, event: bytes,
        failure: bytes, notes: StoreNotes,
    ) -> None:
        """Close a running (locked) run at once: ``WorkflowTerminated``, then closed."""
        self._append(conn, workflow_id, run_id, length + 1, [("WorkflowTerminated", event)])
        conn.execute(
            "UPDATE workflow_runs SET history_length = ? WHERE workflow_id = ? AND run_id = ?",
            (length + 1, workflow_id, run_id),
        )
        self._close_run(conn, workflow_id, run_id, "terminated", self.clock.now(), None, failure,
                        notes)

    async def get_run(self, workflow_id: str, run_id: str | None, *, detail: bool = False) -> RunRecord:
        def op(conn: Conn, notes: StoreNotes) -> RunRecord:
            rid = run_id
            if rid is None:
                latest = self._latest_run(conn, workflow_id)
                if latest is None:
                    raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
                rid = latest[0]
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE workflow_id = ? AND run_id = ?",
                (workflow_id, rid),
            ).fetchone()
            if row is None:
                raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r} and run {rid}")
            record = _run_record(row)
            if detail:
                key = (workflow_id, rid)
                record.pending_inbox = conn.execute(
                    "SELECT count(*) FROM inbox WHERE workflow_id = ? AND run_id = ?", key
                ).fetchone()[0]
                record.activities = [
                    PendingActivityRecord(
                        seq=int(r[0]), activity_type=r[1], task_queue=r[2], attempt=int(r[3]),
                        scheduled_at=r[4], visible_at=r[5], started_at=r[6], lease_owner=r[7],
                        heartbeat_at=r[8],
                        heartbeat_details=bytes(r[9]) if r[9] is not None else None,
                        last_failure=bytes(r[10]) if r[10] is not None else None,
                        cancel_requested=bool(r[11]))
                    for r in conn.execute(
                        "SELECT seq, activity_type, task_queue, attempt, scheduled_at, "
                        "visible_at, started_at, lease_owner, heartbeat_at, heartbeat_details, "
                        "last_failure, cancel_requested FROM activity_tasks "
                        "WHERE workflow_id = ? AND run_id = ? ORDER BY seq", key).fetchall()
                ]
                record.pending_activities = len(record.activities)
                record.pending_timers = conn.execute(
                    "SELECT count(*) FROM timers WHERE workflow_id = ? AND run_id = ? AND seq > 0",
                    key,
                ).fetchone()[0]
                task = conn.execute(
                    "SELECT attempt, last_failure FROM workflow_tasks "
                    "WHERE workflow_id = ? AND run_id = ?", key,
                ).fetchone()
                if task is not None:
                    record.workflow_task_attempt, record.workflow_task_failure = task
            return record

        return await self._run(op)

    async def get_history(
        self, workflow_id: str, run_id: str, *, after: int = 0
    ) -> list[tuple[int, str, bytes]]:
        def op(conn: Conn, notes: StoreNotes) -> list[tuple[int, str, bytes]]:
            rows = conn.execute(
                "SELECT seq, event_type, data FROM history_events "
                "WHERE workflow_id = ? AND run_id = ? AND seq > ? ORDER BY seq",
                (workflow_id, run_id, after),
            ).fetchall()
            return [(int(seq), str(kind), bytes(data)) for seq, kind, data in rows]

        return await self._run(op)

    async def read_snapshot(self, workflow_id: str, run_id: str, *,
                            history: bool) -> RunSnapshot:
        # ONE statement: under READ COMMITTED (PostgreSQL) each statement sees its own
        # snapshot, and a workflow task committing between two reads would move inbox
        # rows into the history unseen (or, read the other way round, seen twice)
        if history:
            sql = ("SELECT 0, seq, data FROM history_events WHERE workflow_id = ? AND run_id = ? "
                   "UNION ALL SELECT 1, id, data FROM inbox WHERE workflow_id = ? "
                   "AND run_id = ? ORDER BY 1, 2")
            params: tuple[Any, ...] = (workflow_id, run_id, workflow_id, run_id)
        else:
            sql = ("SELECT r.history_length, i.id, i.data FROM workflow_runs r LEFT JOIN inbox i "
                   "ON i.workflow_id = r.workflow_id AND i.run_id = r.run_id "
                   "WHERE r.workflow_id = ? AND r.run_id = ? ORDER BY i.id")
            params = (workflow_id, run_id)

        def op(conn: Conn, notes: StoreNotes) -> RunSnapshot:
            rows = conn.execute(sql, params).fetchall()
            if history:
                events = [bytes(data) for source, _, data in rows if source == 0]
                inbox = [(int(key), bytes(data)) for source, key, data in rows if source == 1]
                return RunSnapshot(len(events), inbox, events)
            if not rows:
                raise WorkflowNotFoundError(
                    f"no workflow with id {workflow_id!r} and run {run_id}")
            return RunSnapshot(int(rows[0][0]), [(int(key), bytes(data))
                                                 for _, key, data in rows if key is not None])

        return await self._run(op)

    async def list_runs(
        self, *, status: str | None, workflow_type: str | None, limit: int,
        started: tuple[float | None, float | None] = (None, None),
        closed: tuple[float | None, float | None] = (None, None),
        before: tuple[float, str, str] | None = None,
        parent: tuple[str, str | None] | None = None,
        search_attributes: dict[str, Any] | None = None,
    ) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        for key, value in (search_attributes or {}).items():
            clause, clause_params = self._search_attribute_match(key, value)
            where.append(clause)
            params.extend(clause_params)
        parent_id, parent_run = parent if parent is not None else (None, None)
        for column, value in (("status", status), ("workflow_type", workflow_type),
                              ("parent_workflow_id", parent_id), ("parent_run_id", parent_run)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        for column, (since, until) in (("created_at", started), ("closed_at", closed)):
            if since is not None:
                where.append(f"{column} >= ?")
                params.append(since)
            if until is not None:
                where.append(f"{column} < ?")
                params.append(until)
        if before is not None:
            where.append("(created_at, workflow_id, run_id) < (?, ?, ?)")
            params.extend(before)
        sql = f"SELECT {_RUN_COLUMNS} FROM workflow_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, workflow_id DESC, run_id DESC LIMIT ?"

        def op(conn: Conn, notes: StoreNotes) -> list[RunRecord]:
            return [_run_record(row) for row in conn.execute(sql, (*params, limit)).fetchall()]

        return await self._run(op)

    async def enqueue_query(self, workflow_id: str, run_id: str, task_queue: str, name: str,
                            args: bytes) -> int:
        def op(conn: Conn, notes: StoreNotes) -> int:
            row = conn.execute(
                "INSERT INTO query_tasks (workflow_id, run_id, task_queue, name, args, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (workflow_id, run_id, task_queue, name, args, self.clock.now()),
            ).fetchone()
            notes.add("query")
            return int(row[0])

        return await self._run(op)

    async def take_query_answer(self, query_id: int, *, give_up: bool) -> tuple[bool, bytes | None, str | None]:
        def op(conn: Conn, notes: StoreNotes) -> tuple[bool, bytes | None, str | None]:
            row = conn.execute(
                "SELECT done, answer, error FROM query_tasks WHERE id = ?", (query_id,)
            ).fetchone()
            if row is None:
                return True, None, "query task vanished"
            if row[0] or give_up:
                conn.execute("DELETE FROM query_tasks WHERE id = ?", (query_id,))
            return bool(row[0]), row[1], row[2]

        return await self._run(op)

    async def workflow_type_interface(self, workflow_type: str) -> tuple[set[str], set[str]] | None:
        def op(conn: Conn, notes: StoreNotes) -> tuple[set[str], set[str]] | None:
            rows = conn.execute(
                "SELECT signals, queries FROM workflow_types WHERE workflow_type = ?",
                (workflow_type,),
            ).fetchall()
            if not rows:
                return None
            signals: set[str] = set()
            queries: set[str] = set()
            for s, q in rows:
                signals.update(json.loads(s))
                queries.update(json.loads(q))
            return signals, queries

        return await self._run(op)

    # ---------------------------------------------------------------- workers
    async def register_worker(
        self, worker_id: str, task_queues: Sequence[str], build_id: str,
        workflow_types: Sequence[tuple[str, list[str], list[str]]],
    ) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            now = self.clock.now()
            conn.execute(
                "INSERT INTO workers (worker_id, task_queues, heartbeat_at, started_at, build_id, "
                "host, pid) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (worker_id) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at",
                (worker_id, json.dumps(list(task_queues)), time.time(), now, build_id,
                 socket.gethostname(), os.getpid()),
            )
            for name, signals, queries in workflow_types:
                for task_queue in task_queues:
                    conn.execute(
                        "INSERT INTO workflow_types (workflow_type, task_queue, signals, queries, "
                        "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (workflow_type, task_queue)"
                        " DO UPDATE SET signals = excluded.signals, queries = excluded.queries, "
                        "updated_at = excluded.updated_at",
                        (name, task_queue, json.dumps(sorted(signals)),
                         json.dumps(sorted(queries)), now),
                    )

        await self._run(op)

    async def worker_heartbeat(self, worker_id: str) -> list[tuple[str, str, int]]:
        def op(conn: Conn, notes: StoreNotes) -> list[tuple[str, str, int]]:
            now = time.time()
            conn.execute(LIVENESS_UPSERT, (worker_id, now, now))
            rows = conn.execute(
                "SELECT workflow_id, run_id, seq FROM activity_tasks "
                "WHERE lease_owner = ? AND cancel_requested = 1",
                (worker_id,),
            ).fetchall()
            return [(str(w), str(r), int(q)) for w, r, q in rows]

        return await self._run(lease_only(op))

    def _lock_runs_held_by(self, conn: Conn, worker_id: str) -> None:
        """Lock (PostgreSQL), in one order, the rows of every run with a task leased to
        ``worker_id`` or sticky to it: the run before its tasks, as everywhere."""

    def _release_worker_tasks(self, conn: Conn, worker_id: str) -> None:
        """A worker leaves (or died): its workflow and query tasks and its sticky runs go free."""
        self._lock_runs_held_by(conn, worker_id)
        conn.execute(
            "UPDATE workflow_tasks SET lease_owner = NULL, lease_expires_at = NULL, "
            "sticky_worker = NULL WHERE lease_owner = ? OR sticky_worker = ?",
            (worker_id, worker_id),
        )
        conn.execute(
            "UPDATE workflow_runs SET sticky_worker = NULL WHERE sticky_worker = ?",
            (worker_id,),
        )
        conn.execute(
            "UPDATE query_tasks SET lease_owner = NULL WHERE lease_owner = ? AND done = 0",
            (worker_id,),
        )

    async def remove_worker(self, worker_id: str) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            self._release_worker_tasks(conn, worker_id)
            # attempts still leased to us were not finished: hand them back unused
            conn.execute(
                "UPDATE activity_tasks SET lease_owner = NULL, started_at = NULL, visible_at = ?, "
                "deadline = CASE WHEN schedule_to_close_timeout IS NULL THEN NULL "
                "ELSE scheduled_at + schedule_to_close_timeout END WHERE lease_owner = ?",
                (self.clock.now(), worker_id),
            )
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
            notes.update(("workflow_task", "query", "activity_task"))

        await self._run(op)

    # ---------------------------------------------------------------- workflow tasks
    def _read_claim(
        self, conn: Conn, workflow_id: str, run_id: str, attempt: int
    ) -> WorkflowTaskClaim | None:
        row = conn.execute(
            "SELECT workflow_type, task_queue, history_length, status FROM workflow_runs "
            "WHERE workflow_id = ? AND run_id = ?",
            (workflow_id, run_id),
        ).fetchone()
        if row is None or row[3] != "running":
            conn.execute("DELETE FROM workflow_tasks WHERE workflow_id = ? AND run_id = ?",
                         (workflow_id, run_id))
            return None
        inbox = conn.execute(
            "SELECT id, data FROM inbox WHERE workflow_id = ? AND run_id = ? ORDER BY id",
            (workflow_id, run_id),
        ).fetchall()
        history = None
        if row[2] == 1:  # a run's first task: hand over WorkflowStarted, saving a round trip
            history = conn.execute(
                "SELECT seq, event_type, data FROM history_events "
                "WHERE workflow_id = ? AND run_id = ? ORDER BY seq",
                (workflow_id, run_id),
            ).fetchall()
        return WorkflowTaskClaim(
            workflow_id=workflow_id, run_id=run_id, workflow_type=row[0], task_queue=row[1],
            attempt=attempt, history_length=row[2], inbox=inbox, history=history,
        )

    async def claim_workflow_tasks(
        self, worker_id: str, task_queues: Sequence[str], limit: int, lease: float
    ) -> list[WorkflowTaskClaim]:
        marks = ",".join("?" * len(task_queues))

        def op(conn: Conn, notes: StoreNotes) -> list[WorkflowTaskClaim]:
            now, real = self.clock.now(), time.time()
            rows = conn.execute(
                self._claim_sql(
                    "workflow_tasks", "workflow_id, run_id",
                    "lease_owner = ?, lease_expires_at = ?",
                    f"c.task_queue IN ({marks}) AND c.visible_at <= ? "
                    "AND (c.lease_owner IS NULL OR c.lease_expires_at < ?) "
                    "AND (c.sticky_worker IS NULL OR c.sticky_worker = ? "
                    "OR c.sticky_until < ?)",
                    "c.visible_at", "workflow_id, run_id, attempt",
                ),
                (worker_id, real + lease, *task_queues, now, real, worker_id, now, limit),
            ).fetchall()
            claims = []
            for workflow_id, run_id, attempt in rows:
                claim = self._read_claim(conn, workflow_id, run_id, attempt)
                if claim is not None:
                    claims.append(claim)
            return claims

        return await self._run(lease_only(op))

    async def complete_workflow_task(self, completion: WorkflowTaskCompletion) -> bool:
        def op(conn: Conn, notes: StoreNotes) -> bool:
            c = completion
            self._lock_run_only(conn, c.workflow_id, c.run_id)
            row = conn.execute(
                "SELECT r.history_length, r.status, t.lease_owner, EXISTS (SELECT 1 FROM inbox i "
                "WHERE i.workflow_id = r.workflow_id AND i.run_id = r.run_id AND i.id > ?) "
                "FROM workflow_runs r JOIN workflow_tasks t ON t.workflow_id = r.workflow_id "
                "AND t.run_id = r.run_id WHERE r.workflow_id = ? AND r.run_id = ?",
                (c.inbox_upto, c.workflow_id, c.run_id),
            ).fetchone()
            if row is None or row[2] != c.worker_id:
                return False
            newer_inbound = bool(row[3])
            if row[0] != c.expected_history_length or row[1] != "running" or (
                newer_inbound and c.close_status is not None
            ):
                # the run moved on without us, or an event arrived that closing the run
                # would drop (a signal): hand the task back at once, to run again with it
                conn.execute(
                    "UPDATE workflow_tasks SET lease_owner = NULL, lease_expires_at = NULL "
                    "WHERE workflow_id = ? AND run_id = ? AND lease_owner = ?",
                    (c.workflow_id, c.run_id, c.worker_id),
                )
                notes.add("workflow_task")
                return False
            self._apply_completion(conn, c, self.clock.now(), notes, inbox_pending=newer_inbound)
            return True

        return await self._run(op)

    async def complete_activity_and_workflow_task(
        self, seq: int, attempt: int, event: bytes, completion: WorkflowTaskCompletion
    ) -> str:
        def op(conn: Conn, notes: StoreNotes) -> str:
            c = completion
            key = (c.workflow_id, c.run_id, seq)
            self._lock_run_only(conn, c.workflow_id, c.run_id)
            # one read for every decision: the attempt, the run, its task, its inbox
            row = conn.execute(
                f"SELECT {self._ATTEMPT_COLUMNS}, r.history_length, t.lease_owner, "
                "t.lease_expires_at, t.workflow_id IS NOT NULL, EXISTS (SELECT 1 FROM inbox i "
                "WHERE i.workflow_id = r.workflow_id AND i.run_id = r.run_id) "
                "FROM activity_tasks a JOIN workflow_runs r "
                "ON r.workflow_id = a.workflow_id AND r.run_id = a.run_id "
                "LEFT JOIN workflow_tasks t ON t.workflow_id = r.workflow_id "
                "AND t.run_id = r.run_id "
                "WHERE a.workflow_id = ? AND a.run_id = ? AND a.seq = ? AND a.attempt = ? "
                "AND a.lease_owner = ?",
                (*key, attempt, c.worker_id),
            ).fetchone()
            if row is None:
                return "rejected"
            now = self.clock.now()
            history_length, task_owner, task_expires, has_task, pending_inbound = row[7:12]
            # a task leased by this very worker is a claim still waiting for the run's
            # activation gate: this commit makes it stale, and the worker skips it
            task_busy = (task_owner is not None and task_expires >= time.time()
                         and task_owner != c.worker_id)
            if row[5] or row[6] != "running" or history_length != c.expected_history_length \
                    or task_busy or (pending_inbound and c.close_status is not None):
                # not ours to advance: record the completion the ordinary way
                self._apply_outcome(conn, key, lambda _state: ActivityOutcome(None, event),
                                    tuple(row[:7]), now, notes)
                return "accepted"
            conn.execute(
                "DELETE FROM activity_tasks WHERE workflow_id = ? AND run_id = ? AND seq = ?", key
            )
            self._apply_completion(conn, c, now, notes, inbox_pending=bool(pending_inbound),
                                   task_row=bool(has_task))
            return "fused"

        return await self._run(op)

    def _apply_completion(
        self, conn: Conn, c: WorkflowTaskCompletion, now: float, notes: StoreNotes,
        *, inbox_pending: bool | None = None, task_row: bool = True,
    ) -> None:
        """Write one activation: events, new tasks and timers, the run's new state.

        ``inbox_pending`` and ``task_row`` spare queries whose answer the caller knows.
        """
        key = (c.workflow_id, c.run_id)
        self._append(conn, c.workflow_id, c.run_id, c.expected_history_length + 1, c.events)
        new_length = c.expected_history_length + len(c.events)
        if c.inbox_upto:
            conn.execute(
                "DELETE FROM inbox WHERE workflow_id = ? AND run_id = ? AND id <= ?",
                (*key, c.inbox_upto),
            )
        for task in c.new_activities:
            eager = task.eager_owner is not None
            s2s = (
                now + task.schedule_to_start_timeout
                if task.schedule_to_start_timeout and not eager else None
            )
            s2c = now + task.schedule_to_close_timeout if task.schedule_to_close_timeout else None
            if eager:
                deadline = _deadline(
                    now + task.start_to_close_timeout if task.start_to_close_timeout else None,
                    now + task.heartbeat_timeout if task.heartbeat_timeout else None,
                    s2c,
                )
            else:
                deadline = _deadline(s2s, s2c)
            conn.execute(
                "INSERT INTO activity_tasks (workflow_id, run_id, seq, activity_type, "
                "task_queue, input, scheduled_at, visible_at, lease_owner, started_at, "
                "deadline, start_to_close_timeout, schedule_to_close_timeout, "
                "schedule_to_start_timeout, heartbeat_timeout, retry_policy) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, task.seq, task.activity_type, task.task_queue, task.input, now, now,
                 task.eager_owner, now if eager else None, deadline,
                 task.start_to_close_timeout, task.schedule_to_close_timeout,
                 task.schedule_to_start_timeout, task.heartbeat_timeout, task.retry_policy),
            )
            if not eager:
                notes.add("activity_task")
            notes.due_at(deadline)
        for seq in c.cancel_activities:
            conn.execute(
                "DELETE FROM activity_tasks WHERE workflow_id = ? AND run_id = ? AND seq = ? "
                "AND lease_owner IS NULL", (*key, seq),
            )
            conn.execute(
                "UPDATE activity_tasks SET cancel_requested = 1 "
                "WHERE workflow_id = ? AND run_id = ? AND seq = ?", (*key, seq),
            )
        if c.new_timers:
            conn.executemany(
                "INSERT INTO timers (workflow_id, run_id, seq, fire_at) VALUES (?, ?, ?, ?)",
                [(*key, seq, fire_at) for seq, fire_at in c.new_timers],
            )
            notes.due_at(min(fire_at for _, fire_at in c.new_timers))
        for seq in c.cancel_timers:
            conn.execute(
                "DELETE FROM timers WHERE workflow_id = ? AND run_id = ? AND seq = ?",
                (*key, seq),
            )
        # links to other runs; their answers (started, delivered) come back as inbound
        # events of this run, handled by its next task
        answers = [
            _children.start_child(self, conn, *key, child, now, notes)
            for child in c.new_children
        ]
        for seq in c.cancel_children:
            _children.request_child_cancel(self, conn, *key, seq, now, notes)
        answers += [
            _children.deliver_external_signal(self, conn, signal, now, notes)
            for signal in c.external_signals
        ]
        if answers and c.close_status is None:
            conn.executemany(
                "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
                [(*key, answer) for answer in answers],
            )
        if c.upsert_memo or c.upsert_search_attributes:
            self._upsert_attributes(conn, key, c.upsert_memo, c.upsert_search_attributes)
        if c.stream_events:
            self._append_stream(conn, c.stream_events, notes)
        if c.update_outcomes:
            conn.executemany(
                "UPDATE updates SET state = ?, result = ?, failure = ? "
                "WHERE workflow_id = ? AND update_id = ?",
                [(u.state, u.result, u.failure, c.workflow_id, u.update_id)
                 for u in c.update_outcomes],
            )
            notes.add("update")
        conn.execute(
            "UPDATE workflow_runs SET history_length = ?, sticky_worker = ?, sticky_for = ?, "
            "build_id = ? WHERE workflow_id = ? AND run_id = ?",
            (new_length, c.worker_id if c.sticky_for > 0 else None, c.sticky_for,
             c.build_id or None, *key),
        )
        if c.continue_as_new is not None:
            self._continue_as_new(conn, c, now, notes)
            return
        if c.close_status is not None:
            self._close_run(conn, c.workflow_id, c.run_id, c.close_status, now,
                            c.close_result, c.close_failure, notes)
            return
        more = True if answers else inbox_pending
        if more is None:
            more = conn.execute(
                "SELECT 1 FROM inbox WHERE workflow_id = ? AND run_id = ? LIMIT 1", key
            ).fetchone() is not None
        if more and not task_row:
            self._ensure_workflow_task(conn, *key, now, notes)
        elif more:
            conn.execute(
                "UPDATE workflow_tasks SET lease_owner = NULL, lease_expires_at = NULL, "
                "attempt = 1, last_failure = NULL, visible_at = ?, sticky_worker = ?, "
                "sticky_until = ? WHERE workflow_id = ? AND run_id = ?",
                (now, c.worker_id if c.sticky_for > 0 else None, now + c.sticky_for, *key),
            )
            notes.add("workflow_task")
        elif task_row:
            conn.execute(
                "DELETE FROM workflow_tasks WHERE workflow_id = ? AND run_id = ?", key
            )

    def _upsert_attributes(
        self, conn: Conn, key: tuple[str, str], memo: dict[str, Any] | None,
        search_attributes: dict[str, Any] | None,
    ) -> None:
        """Merge into a run's memo and search attributes; None values remove keys."""
        row = conn.execute(
            "SELECT memo, search_attributes FROM workflow_runs WHERE workflow_id = ? "
            "AND run_id = ?", key,
        ).fetchone()
        merged: list[bytes | None] = []
        for current, changes in ((row[0], memo), (_json_bytes(row[1]), search_attributes)):
            if not changes:
                merged.append(bytes(current) if current is not None else None)
                continue
            values = json.loads(current) if current else {}
            for name, value in changes.items():
                if value is None:
                    values.pop(name, None)
                else:
                    values[name] = value
            merged.append(json.dumps(values).encode() if values else None)
        conn.execute(
            f"UPDATE workflow_runs SET memo = ?, search_attributes = {self._JSON} "
            "WHERE workflow_id = ? AND run_id = ?",
            (merged[0], _json_text(merged[1]), *key),
        )

    def _continue_as_new(
        self, conn: Conn, c: WorkflowTaskCompletion, now: float, notes: StoreNotes
    ) -> None:
        """Close the run as continued-as-new and start its successor: same workflow id,
        same parent, same execution deadline, a fresh history."""
        new = c.continue_as_new
        assert new is not None
        # serialised with starts of this id (one running run per workflow id)
        self._lock_workflow_id(conn, c.workflow_id)
        successor = dataclasses.replace(
            self._successor(conn, c.workflow_id, c.run_id, new.run_id),
            workflow_type=new.workflow_type, task_queue=new.task_queue, input=new.input,
            attempt=1, last_completion_result=None,
        )
        conn.execute(
            "UPDATE workflow_runs SET next_run_id = ? WHERE workflow_id = ? AND run_id = ?",
            (new.run_id, c.workflow_id, c.run_id),
        )
        self._close_run(conn, c.workflow_id, c.run_id, "continued_as_new", now, None, None,
                        notes)
        self._insert_run(conn, successor, now, notes)
        self._ensure_workflow_task(conn, c.workflow_id, new.run_id, now, notes)

    async def fail_workflow_task(
        self, workflow_id: str, run_id: str, worker_id: str, error: str, retry_at: float
    ) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            # the run row first, as every operation that changes a run locks it; only the
            # task's holder may take its stickiness away
            conn.execute(
                "UPDATE workflow_runs SET sticky_worker = NULL WHERE workflow_id = ? "
                "AND run_id = ? AND EXISTS (SELECT 1 FROM workflow_tasks t WHERE "
                "t.workflow_id = workflow_runs.workflow_id AND t.run_id = workflow_runs.run_id "
                "AND t.lease_owner = ?)",
                (workflow_id, run_id, worker_id),
            )
            conn.execute(
                "UPDATE workflow_tasks SET lease_owner = NULL, lease_expires_at = NULL, "
                "attempt = attempt + 1, last_failure = ?, visible_at = ?, sticky_worker = NULL "
                "WHERE workflow_id = ? AND run_id = ? AND lease_owner = ?",
                (error, retry_at, workflow_id, run_id, worker_id),
            )
            notes.due_at(retry_at)

        await self._run(op)

    def _apply_outcome(
        self, conn: Conn, key: tuple[str, str, int], decide: ActivityDecision,
        row: tuple[Any, ...], now: float, notes: StoreNotes,
    ) -> bool:
        """Apply the engine's decision for an ended attempt; True if an event was delivered."""
        attempt, retry_policy, scheduled_at, s2c, s2s, cancel_requested, status = row
        if cancel_requested or status != "running":
            conn.execute(
                "DELETE FROM activity_tasks WHERE workflow_id = ? AND run_id = ? AND seq = ?", key
            )
            return False
        outcome = decide(ActivityAttempt(attempt, retry_policy, scheduled_at, s2c))
        if outcome.retry_at is not None:
            conn.execute(
                "UPDATE activity_tasks SET lease_owner = NULL, started_at = NULL, "
                "attempt = attempt + 1, visible_at = ?, last_failure = ?, deadline = ? "
                "WHERE workflow_id = ? AND run_id = ? AND seq = ?",
                (outcome.retry_at, outcome.last_failure,
                 _deadline(outcome.retry_at + s2s if s2s else None,
                           scheduled_at + s2c if s2c else None), *key),
            )
            notes.add("activity_task")
            notes.due_at(outcome.retry_at)
            return False
        conn.execute(
            "DELETE FROM activity_tasks WHERE workflow_id = ? AND run_id = ? AND seq = ?", key
        )
        assert outcome.event is not None
        conn.execute(
            "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
            (key[0], key[1], outcome.event),
        )
        self._ensure_workflow_task(conn, key[0], key[1], now, notes)
        return True

    _ATTEMPT_COLUMNS = (
        "a.attempt, a.retry_policy, a.scheduled_at, a.schedule_to_close_timeout, "
        "a.schedule_to_start_timeout, a.cancel_requested, r.status"
    )
