"""Every operation of the SQL stores, shared by SQLite and PostgreSQL.

Every store method is one *operation*: a function of a DB-API connection that a
backend's writer runs in a transaction, possibly shared with other operations (group
commit). ``_sql_runs`` holds the operations on runs and the dialect hooks; this module
adds activity attempts, the due-work sweeps, queries, time skipping and retention.
The concurrency rule (lock a run's row before changing it) is ``_sql_runs``'s.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from perdure._errors import InvalidArgumentError
from perdure.store._base import ASYNC_COMPLETION_OWNER, StoreNotes, TimeoutDecider
from perdure.store._liveness import LivenessThread
from perdure.store._records import (
    ActivityDecision,
    ActivityTaskClaim,
    QueryTaskClaim,
    WorkflowTaskClaim,
)
from perdure.store._sql_runs import Conn, Op, SqlRunStore, lease_only

__all__ = ["Conn", "Op", "SqlStore", "lease_only"]


def _queue_filter(task_queues: Sequence[str] | None) -> str:
    """``AND task_queue IN (?, ...)``; no queues match nothing (PostgreSQL rejects
    ``IN ()``), None matches every queue."""
    if task_queues is None:
        return ""
    if not task_queues:
        return " AND 1 = 0"
    return f" AND task_queue IN ({','.join('?' * len(task_queues))})"


def _check_retention(closed_before: float, limit: int) -> None:
    """Refuse a cutoff that is not a time: NaN compares above every number in PostgreSQL
    (``closed_at < 'NaN'`` holds for every run: all would go) and below none in SQLite."""
    if (isinstance(closed_before, bool) or not isinstance(closed_before, int | float)
            or not math.isfinite(closed_before) or closed_before < 0):
        raise InvalidArgumentError(
            f"delete_closed_runs: closed_before must be a finite time (seconds since the "
            f"epoch, >= 0), not {closed_before!r}"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(
            f"delete_closed_runs: limit must be a whole number >= 1, not {limit!r}"
        )


class SqlStore(SqlRunStore):
    """Every store operation, in SQL; a backend supplies the writer and the dialect."""

    _liveness: LivenessThread | None = None

    # ---------------------------------------------------------------- liveness
    def _liveness_connection(self) -> Any:
        """A new connection of the backend's for the liveness thread (``?`` placeholders,
        each statement committed by itself)."""
        raise NotImplementedError

    def keep_alive(self, worker_id: str, interval: float, alive: Callable[[], bool]) -> None:
        if self._liveness is None:
            self._liveness = LivenessThread(self._liveness_connection, "perdure-liveness")
        self._liveness.add(worker_id, interval, alive)

    async def stop_keeping_alive(self, worker_id: str) -> None:
        if self._liveness is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._liveness.remove,
                                                             worker_id)

    async def _stop_liveness(self) -> None:
        """On close: the liveness thread ends (and its connection closes)."""
        liveness, self._liveness = self._liveness, None
        if liveness is not None:
            await asyncio.get_running_loop().run_in_executor(None, liveness.stop)

    # ---------------------------------------------------------------- retention
    async def delete_closed_runs(self, closed_before: float, limit: int) -> int:
        _check_retention(closed_before, limit)

        def op(conn: Conn, notes: StoreNotes) -> int:
            rows = conn.execute(
                "SELECT workflow_id, run_id FROM workflow_runs WHERE status <> 'running' "
                "AND closed_at < ? ORDER BY closed_at LIMIT ?",
                (closed_before, limit),
            ).fetchall()
            for workflow_id, run_id in rows:
                key = (workflow_id, run_id)
                # everything of the run: a closed run may still hold attempts whose worker
                # never reported back, which would otherwise outlive it
                for table in ("history_events", "query_tasks", "activity_tasks", "timers",
                              "inbox", "workflow_tasks", "updates"):
                    conn.execute(f"DELETE FROM {table} WHERE workflow_id = ? AND run_id = ?",
                                 key)
                conn.execute(
                    "DELETE FROM workflow_runs WHERE workflow_id = ? AND run_id = ? "
                    "AND status <> 'running'", key,
                )
                # payloads belong to the workflow id: they go with its last run
                for table in ("payloads", "stream_events"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE workflow_id = ? AND NOT EXISTS (SELECT 1 "
                        "FROM workflow_runs r WHERE r.workflow_id = ?)",
                        (workflow_id, workflow_id),
                    )
            return len(rows)

        return await self._run(op)

    # ---------------------------------------------------------------- activity tasks
    async def claim_activity_tasks(
        self, worker_id: str, task_queues: Sequence[str], limit: int
    ) -> list[ActivityTaskClaim]:
        marks = ",".join("?" * len(task_queues))

        def op(conn: Conn, notes: StoreNotes) -> list[ActivityTaskClaim]:
            now = self.clock.now()
            rows = conn.execute(
                self._claim_sql(
                    "activity_tasks", "workflow_id, run_id, seq",
                    f"lease_owner = ?, started_at = ?, deadline = NULLIF({self._LEAST}("
                    "coalesce(? + start_to_close_timeout, 1e18), "
                    "coalesce(? + heartbeat_timeout, 1e18), "
                    "coalesce(scheduled_at + schedule_to_close_timeout, 1e18)), 1e18)",
                    f"c.task_queue IN ({marks}) AND c.lease_owner IS NULL "
                    "AND c.visible_at <= ?",
                    "c.visible_at",
                    "workflow_id, run_id, seq, activity_type, task_queue, input, attempt, "
                    "scheduled_at, start_to_close_timeout, schedule_to_close_timeout, "
                    "heartbeat_timeout, heartbeat_details, retry_policy, deadline",
                ),
                (worker_id, now, now, now, *task_queues, now, limit),
            ).fetchall()
            for r in rows:
                notes.due_at(r[13])
            claims = []
            for r in rows:
                wf_type = conn.execute(
                    "SELECT workflow_type FROM workflow_runs WHERE workflow_id = ? AND run_id = ?",
                    (r[0], r[1]),
                ).fetchone()
                claims.append(
                    ActivityTaskClaim(
                        workflow_id=r[0], run_id=r[1], seq=r[2], activity_type=r[3],
                        task_queue=r[4], workflow_type=wf_type[0] if wf_type else "",
                        input=r[5], attempt=r[6], scheduled_at=r[7],
                        start_to_close_timeout=r[8], schedule_to_close_timeout=r[9],
                        heartbeat_timeout=r[10], heartbeat_details=r[11], retry_policy=r[12],
                    )
                )
            return claims

        return await self._run(lease_only(op))

    async def finish_activity_attempt(
        self,
        workflow_id: str,
        run_id: str,
        seq: int,
        attempt: int,
        worker_id: str,
        decide: ActivityDecision,
        *,
        claim_workflow_task: bool,
        lease: float,
    ) -> tuple[bool, WorkflowTaskClaim | None]:
        def op(conn: Conn, notes: StoreNotes) -> tuple[bool, WorkflowTaskClaim | None]:
            key = (workflow_id, run_id, seq)
            self._lock_run_only(conn, workflow_id, run_id)
            row = conn.execute(
                f"SELECT {self._ATTEMPT_COLUMNS} FROM activity_tasks a JOIN workflow_runs r "
                "ON r.workflow_id = a.workflow_id AND r.run_id = a.run_id "
                "WHERE a.workflow_id = ? AND a.run_id = ? AND a.seq = ? AND a.attempt = ? "
                "AND a.lease_owner = ?",
                (*key, attempt, worker_id),
            ).fetchone()
            if row is None:
                return False, None
            now = self.clock.now()
            delivered = self._apply_outcome(conn, key, decide, row, now, notes)
            if not (delivered and claim_workflow_task):
                return True, None
            claimed = conn.execute(
                "UPDATE workflow_tasks SET lease_owner = ?, lease_expires_at = ? "
                "WHERE workflow_id = ? AND run_id = ? AND visible_at <= ? AND "
                "(lease_owner IS NULL OR lease_expires_at < ?) RETURNING attempt",
                (worker_id, time.time() + lease, workflow_id, run_id, now, time.time()),
            ).fetchone()
            if claimed is None:
                return True, None
            return True, self._read_claim(conn, workflow_id, run_id, claimed[0])

        return await self._run(op)

    async def heartbeat_activity(
        self, workflow_id: str, run_id: str, seq: int, attempt: int, worker_id: str,
        details: bytes | None,
    ) -> bool:
        def op(conn: Conn, notes: StoreNotes) -> bool:
            # the run first, as every operation that locks a task row does
            self._lock_run_only(conn, workflow_id, run_id)
            now = self.clock.now()
            row = conn.execute(
                "UPDATE activity_tasks SET heartbeat_at = ?, heartbeat_details = ?, "
                f"deadline = NULLIF({self._LEAST}(coalesce(started_at + start_to_close_timeout, "
                "1e18), "
                "coalesce(? + heartbeat_timeout, 1e18), "
                "coalesce(scheduled_at + schedule_to_close_timeout, 1e18)), 1e18) "
                "WHERE workflow_id = ? AND run_id = ? AND seq = ? AND attempt = ? "
                "AND lease_owner = ? RETURNING cancel_requested",
                (now, details, now, workflow_id, run_id, seq, attempt, worker_id),
            ).fetchone()
            # a heartbeat only pushes the deadline later: nothing new to wake for
            return row is None or bool(row[0])

        return await self._run(op)

    async def release_activity(
        self, workflow_id: str, run_id: str, seq: int, attempt: int, worker_id: str
    ) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            self._lock_run_only(conn, workflow_id, run_id)
            conn.execute(
                "UPDATE activity_tasks SET lease_owner = NULL, started_at = NULL, visible_at = ?, "
                "deadline = CASE WHEN schedule_to_close_timeout IS NULL THEN NULL "
                "ELSE scheduled_at + schedule_to_close_timeout END "
                "WHERE workflow_id = ? AND run_id = ? AND seq = ? AND attempt = ? "
                "AND lease_owner = ?",
                (self.clock.now(), workflow_id, run_id, seq, attempt, worker_id),
            )
            notes.add("activity_task")

        await self._run(op)

    # ---------------------------------------------------------------- async completion
    async def await_async_completion(
        self, workflow_id: str, run_id: str, seq: int, attempt: int, worker_id: str
    ) -> bool:
        def op(conn: Conn, notes: StoreNotes) -> bool:
            self._lock_run_only(conn, workflow_id, run_id)
            row = conn.execute(
                "UPDATE activity_tasks SET lease_owner = ? WHERE workflow_id = ? AND "
                "run_id = ? AND seq = ? AND attempt = ? AND lease_owner = ? RETURNING seq",
                (ASYNC_COMPLETION_OWNER, workflow_id, run_id, seq, attempt, worker_id),
            ).fetchone()
            return row is not None

        return await self._run(op)

    def _started_attempt(self, conn: Conn, workflow_id: str, run_id: str | None,
                         ) -> str | None:
        """The run an async completion addresses (the latest, when not named), locked."""
        if run_id is None:
            latest = self._latest_run(conn, workflow_id)
            if latest is None:
                return None
            run_id = latest[0]
        self._lock_run_only(conn, workflow_id, run_id)
        return run_id

    async def resolve_async_activity(
        self, workflow_id: str, run_id: str | None, seq: int, attempt: int | None,
        decide: Callable[[int], ActivityDecision],
    ) -> bool:
        def op(conn: Conn, notes: StoreNotes) -> bool:
            run = self._started_attempt(conn, workflow_id, run_id)
            if run is None:
                return False
            key = (workflow_id, run, seq)
            # started: leased to a worker (the token may come back before the worker has
            # left the attempt open) or left open; never one waiting for its retry
            where, params = "", [*key]
            if attempt is not None:
                where, params = " AND a.attempt = ?", [*key, attempt]
            row = conn.execute(
                f"SELECT {self._ATTEMPT_COLUMNS} FROM activity_tasks a JOIN workflow_runs r "
                "ON r.workflow_id = a.workflow_id AND r.run_id = a.run_id "
                "WHERE a.workflow_id = ? AND a.run_id = ? AND a.seq = ? "
                f"AND a.lease_owner IS NOT NULL{where}",
                params,
            ).fetchone()
            if row is None:
                return False
            self._apply_outcome(conn, key, decide(int(row[0])), tuple(row), self.clock.now(),
                                notes)
            return True

        return await self._run(op)

    async def heartbeat_async_activity(
        self, workflow_id: str, run_id: str | None, seq: int, attempt: int | None,
        details: bytes | None,
    ) -> str | None:
        def op(conn: Conn, notes: StoreNotes) -> str | None:
            run = self._started_attempt(conn, workflow_id, run_id)
            if run is None:
                return None
            now = self.clock.now()
            where, params = "", [now, details, now, workflow_id, run, seq]
            if attempt is not None:
                where, params = " AND attempt = ?", [*params, attempt]
            row = conn.execute(
                "UPDATE activity_tasks SET heartbeat_at = ?, heartbeat_details = ?, "
                f"deadline = NULLIF({self._LEAST}(coalesce(started_at + start_to_close_timeout, "
                "1e18), coalesce(? + heartbeat_timeout, 1e18), "
                "coalesce(scheduled_at + schedule_to_close_timeout, 1e18)), 1e18) "
                "WHERE workflow_id = ? AND run_id = ? AND seq = ? AND lease_owner IS NOT NULL"
                f"{where} RETURNING cancel_requested",
                params,
            ).fetchone()
            if row is None:
                return None
            return "cancelled" if row[0] else "ok"

        return await self._run(op)

    # ---------------------------------------------------------------- due work
    async def fire_due_timers(self, limit: int) -> int:
        def op(conn: Conn, notes: StoreNotes) -> int:
            from perdure.history import Failure, TimerFired, WorkflowTimedOut, encode_event

            now = self.clock.now()
            rows = conn.execute(
                "SELECT workflow_id, run_id, seq FROM timers WHERE fire_at <= ? "
                "ORDER BY fire_at LIMIT ?",
                (now, limit),
            ).fetchall()
            for workflow_id, run_id, seq in rows:
                locked = self._lock_run(conn, workflow_id, run_id)
                deleted = conn.execute(
                    "DELETE FROM timers WHERE workflow_id = ? AND run_id = ? AND seq = ? "
                    "RETURNING seq",
                    (workflow_id, run_id, seq),
                ).fetchone()
                if deleted is None or locked is None or locked[0] != "running":
                    continue  # fired by another process meanwhile, or the run is over
                if seq <= 0:  # 0: the execution deadline; -1: this run's timeout
                    kind = "execution" if seq == 0 else "run"
                    run = conn.execute(
                        f"SELECT history_length, {kind}_timeout FROM workflow_runs "
                        "WHERE workflow_id = ? AND run_id = ?", (workflow_id, run_id),
                    ).fetchone()
                    self._append(conn, workflow_id, run_id, run[0] + 1, [
                        ("WorkflowTimedOut", encode_event(WorkflowTimedOut(timeout=run[1])))
                    ])
                    conn.execute(
                        "UPDATE workflow_runs SET history_length = ? WHERE workflow_id = ? "
                        "AND run_id = ?", (run[0] + 1, workflow_id, run_id),
                    )
                    failure = json.dumps(msgspec.to_builtins(Failure(
                        type="TimeoutFailure", kind="timeout",
                        message=f"workflow {kind} timeout ({run[1]:g}s) passed",
                        attributes={"timeout_type": kind},
                    ))).encode()
                    # past the execution deadline no retry may follow; past a run's may
                    self._close_run(conn, workflow_id, run_id, "timed_out", now, None, failure,
                                    notes, may_retry=seq == -1)
                    continue
                conn.execute(
                    "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
                    (workflow_id, run_id, encode_event(TimerFired(seq=seq))),
                )
                self._ensure_workflow_task(conn, workflow_id, run_id, now, notes)
            return len(rows)

        return await self._run(op)

    def _locked_attempt(
        self, conn: Conn, workflow_id: str, run_id: str, seq: int, columns: str, where: str,
        params: Sequence[Any],
    ) -> tuple[Any, ...] | None:
        """Lock the run, then read one of its activity tasks if it still matches ``where``
        (another process may have finished it between a sweep's scan and this lock)."""
        self._lock_run_only(conn, workflow_id, run_id)
        row = conn.execute(
            f"SELECT {columns}, {self._ATTEMPT_COLUMNS} FROM activity_tasks a "
            "JOIN workflow_runs r ON r.workflow_id = a.workflow_id AND r.run_id = a.run_id "
            f"WHERE a.workflow_id = ? AND a.run_id = ? AND a.seq = ? AND {where}",
            (workflow_id, run_id, seq, *params),
        ).fetchone()
        return tuple(row) if row is not None else None

    async def expire_activities(self, limit: int, decider: TimeoutDecider) -> int:
        def op(conn: Conn, notes: StoreNotes) -> int:
            now = self.clock.now()
            due = conn.execute(
                "SELECT workflow_id, run_id, seq FROM activity_tasks WHERE deadline <= ? "
                "ORDER BY deadline LIMIT ?",
                (now, limit),
            ).fetchall()
            for workflow_id, run_id, seq in due:
                row = self._locked_attempt(
                    conn, workflow_id, run_id, seq,
                    "a.started_at, a.heartbeat_timeout, a.heartbeat_at, a.last_failure",
                    "a.deadline <= ?", (now,),
                )
                if row is None:
                    continue
                started_at, hb, hb_at, last_failure = row[:4]
                attempt_row = row[4:]
                scheduled_at, s2c = attempt_row[2], attempt_row[3]
                if s2c is not None and scheduled_at + s2c <= now:
                    kind = "schedule_to_close"
                elif started_at is None:
                    kind = "schedule_to_start"
                elif hb is not None and (hb_at or started_at) + hb <= now:
                    kind = "heartbeat"
                else:
                    kind = "start_to_close"
                self._apply_outcome(conn, (workflow_id, run_id, seq),
                                    decider(seq, kind, last_failure), attempt_row, now, notes)
            return len(due)

        return await self._run(op)

    def _may_reclaim(self, dead_after: float) -> bool:
        """Whether liveness rows can be trusted now (PostgreSQL: not just after an outage,
        when every worker's heartbeat looks old until it gets through again)."""
        del dead_after
        return True

    def _reclaim_leases(self, conn: Conn, owner_where: str, params: Sequence[Any],
                        decider: TimeoutDecider, now: float, notes: StoreNotes) -> int:
        keys = conn.execute(
            f"SELECT workflow_id, run_id, seq, lease_owner FROM activity_tasks WHERE {owner_where}",
            params,
        ).fetchall()
        for workflow_id, run_id, seq, owner in keys:
            row = self._locked_attempt(conn, workflow_id, run_id, seq, "a.last_failure",
                                       "a.lease_owner = ?", (owner,))
            if row is not None:
                self._apply_outcome(conn, (workflow_id, run_id, seq),
                                    decider(seq, "worker_lost", row[0]), row[1:], now, notes)
        return len(keys)

    async def reclaim_dead_workers(self, dead_after: float, decider: TimeoutDecider) -> int:
        def op(conn: Conn, notes: StoreNotes) -> int:
            if not self._may_reclaim(dead_after):
                return 0
            now = self.clock.now()
            # deleting the row first makes one process the reclaimer of each dead worker
            dead = [
                r[0] for r in conn.execute(
                    "DELETE FROM workers WHERE heartbeat_at < ? RETURNING worker_id",
                    (time.time() - dead_after,),
                ).fetchall()
            ]
            for worker_id in dead:
                self._release_worker_tasks(conn, worker_id)
                self._reclaim_leases(conn, "lease_owner = ?", (worker_id,), decider, now, notes)
                notes.update(("workflow_task", "query"))
            # leases whose owner has no liveness row at all (removed, or never registered)
            # (an attempt left open for async completion has no worker: it is no orphan)
            orphans = self._reclaim_leases(
                conn, "lease_owner IS NOT NULL AND lease_owner <> ? AND lease_owner NOT IN "
                "(SELECT worker_id FROM workers)", (ASYNC_COMPLETION_OWNER,), decider, now,
                notes,
            )
            return len(dead) + orphans

        return await self._run(op)

    # ---------------------------------------------------------------- queries
    async def claim_query_tasks(
        self, worker_id: str, task_queues: Sequence[str], limit: int
    ) -> list[QueryTaskClaim]:
        marks = ",".join("?" * len(task_queues))

        def op(conn: Conn, notes: StoreNotes) -> list[QueryTaskClaim]:
            now = time.time()
            rows = conn.execute(
                self._claim_sql(
                    "query_tasks", "id", "lease_owner = ?, lease_expires_at = ?",
                    f"c.task_queue IN ({marks}) AND c.done = 0 "
                    "AND (c.lease_owner IS NULL OR c.lease_expires_at < ?)",
                    "c.id", "id, workflow_id, run_id, name, args",
                ),
                (worker_id, now + 30, *task_queues, now, limit),
            ).fetchall()
            return [QueryTaskClaim(*r) for r in rows]

        return await self._run(lease_only(op))

    async def answer_query(self, query_id: int, answer: bytes | None, error: str | None) -> None:
        def op(conn: Conn, notes: StoreNotes) -> None:
            conn.execute(
                "UPDATE query_tasks SET done = 1, answer = ?, error = ? WHERE id = ?",
                (answer, error, query_id),
            )
            notes.add("query_answer")

        await self._run(op)

    # ---------------------------------------------------------------- time skipping
    async def next_due_time(self, task_queues: Sequence[str] | None = None, *,
                            after: float | None = None,
                            running_on: Sequence[str] = ()) -> float | None:
        queues = _queue_filter(task_queues)
        queue_params = list(task_queues) if task_queues is not None else []

        def later(column: str) -> tuple[str, list[Any]]:
            return ("", []) if after is None else (f" AND {column} > ?", [after])

        parts: list[tuple[str, list[Any]]] = []
        sql, params = later("fire_at")
        parts.append((f"SELECT min(fire_at) AS t FROM timers WHERE 1 = 1{sql}", params))
        sql, params = later("deadline")
        if running_on:
            # deadlines of attempts running on ``running_on`` (a test environment's
            # workers) pass with the real time those attempts take, not by a jump
            sql += (" AND NOT (started_at IS NOT NULL AND lease_owner IN "
                    f"({','.join('?' * len(running_on))}))")
            params = [*params, *running_on]
        parts.append((f"SELECT min(deadline) FROM activity_tasks WHERE 1 = 1{sql}", params))
        for table in ("activity_tasks", "workflow_tasks"):
            sql, params = later("visible_at")
            parts.append((f"SELECT min(visible_at) FROM {table} WHERE lease_owner IS NULL"
                          f"{queues}{sql}", [*queue_params, *params]))
        statement = ("SELECT min(t) FROM (" + " UNION ALL ".join(p[0] for p in parts)
                     + ") AS due")
        arguments = [value for _, values in parts for value in values]

        def op(conn: Conn, notes: StoreNotes) -> float | None:
            row = conn.execute(statement, arguments).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        return await self._run(op)

    async def count_ready_tasks(self, task_queues: Sequence[str] | None = None) -> int:
        queues = _queue_filter(task_queues)
        params = [] if task_queues is None else list(task_queues)

        def op(conn: Conn, notes: StoreNotes) -> int:
            now = self.clock.now()
            wf = conn.execute(
                "SELECT count(*) FROM workflow_tasks WHERE visible_at <= ? AND "
                f"(lease_owner IS NULL OR lease_expires_at < ?){queues}",
                (now, time.time(), *params),
            ).fetchone()[0]
            act = conn.execute(
                "SELECT count(*) FROM activity_tasks WHERE lease_owner IS NULL AND visible_at <= ?"
                f"{queues}",
                (now, *params),
            ).fetchone()[0]
            return int(wf) + int(act)

        return await self._run(op)
