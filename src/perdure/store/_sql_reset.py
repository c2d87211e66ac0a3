"""Reset and fork in the store: one transaction writes the new run and ends the old one."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import msgspec

from perdure._errors import (
    InvalidArgumentError,
    WorkflowAlreadyStartedError,
    WorkflowNotFoundError,
)
from perdure.history import (
    ChildWorkflowCanceled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowStarted,
    ChildWorkflowStartFailed,
    ExternalCancelDelivered,
    ExternalSignalDelivered,
    Failure,
    SignalReceived,
    decode_event,
)
from perdure.store._base import StoreNotes
from perdure.store._records import ResetRecord

if TYPE_CHECKING:
    from perdure.store._sql_runs import Conn, SqlRunStore

from perdure.store import _sql_children

__all__ = ["reset"]


_WORLD_EVENTS = (ChildWorkflowStarted, ChildWorkflowStartFailed, ChildWorkflowCompleted,
                 ChildWorkflowFailed, ChildWorkflowCanceled, ExternalSignalDelivered,
                 ExternalCancelDelivered)
"""Outcomes of what the run set going; the new run cannot cause them again."""


class HistoryMovedError(InvalidArgumentError):
    """The source run's history grew between reading it and resetting it."""


def reset(store: SqlRunStore, conn: Conn, record: ResetRecord, now: float,
          notes: StoreNotes) -> str:
    """Write the new run (see :class:`ResetRecord`); return its run id."""
    r = record
    forking = r.reset_event is None
    locked = store._lock_run(conn, r.source_workflow_id, r.source_run_id)
    if locked is None:
        raise WorkflowNotFoundError(
            f"no workflow with id {r.source_workflow_id!r} and run {r.source_run_id}")
    status, length = locked[0], int(locked[1])
    if length != r.source_length:
        raise HistoryMovedError(
            f"workflow {r.source_workflow_id!r} (run {r.source_run_id}) moved on while it was "
            "being reset; read its history and try again")
    store._lock_workflow_id(conn, r.workflow_id)
    latest = store._latest_run(conn, r.workflow_id)
    if not forking and (latest is None or latest[0] != r.source_run_id):
        raise InvalidArgumentError(
            f"run {r.source_run_id} is not the latest run of workflow {r.source_workflow_id!r}"
            f" ({latest[0] if latest else 'none'} is): reset the latest run")
    if forking and latest is not None and latest[1] == "running":
        raise WorkflowAlreadyStartedError(
            f"workflow {r.workflow_id!r} is already running (run {latest[0]}); fork into "
            "another id", workflow_id=r.workflow_id, run_id=latest[0])
    successor = store._successor(conn, r.source_workflow_id, r.source_run_id, r.run_id)
    successor = dataclasses.replace(
        successor, workflow_id=r.workflow_id,
        task_queue=r.task_queue or successor.task_queue,
        execution_deadline=(now + successor.execution_timeout
                            if successor.execution_timeout else None),
        attempt=1, continued_from=None,
        parent=None if forking else successor.parent,
    )
    inbox = list(r.inbox)
    # what the source run was sent but never handled (its inbox, not yet history): the
    # world's events (signals, child outcomes, signal deliveries) go to the new run too
    for (data,) in conn.execute(
        "SELECT data FROM inbox WHERE workflow_id = ? AND run_id = ? ORDER BY id",
        (r.source_workflow_id, r.source_run_id),
    ).fetchall():
        event = decode_event(bytes(data))
        if isinstance(event, SignalReceived):
            if r.reapply_signals:
                inbox.append(bytes(data))
        elif isinstance(event, _WORLD_EVENTS):
            inbox.append(bytes(data))
    # children the prefix started and whose end its history lacks
    for seq in r.open_children:
        child = conn.execute(
            "SELECT workflow_id, run_id, status, result, failure FROM workflow_runs "
            "WHERE parent_workflow_id = ? AND parent_run_id = ? AND parent_seq = ? "
            f"ORDER BY {store._INSERTION_ORDER} DESC LIMIT 1",
            (r.source_workflow_id, r.source_run_id, seq),
        ).fetchone()
        if child is None:
            continue
        if child[2] == "running":
            if forking:
                raise InvalidArgumentError(
                    f"child workflow {child[0]!r} started before event {r.to_event} is still "
                    "running, and a fork cannot share it: fork from before it started, or "
                    "once it has closed")
            # a reset takes the running child along: its end goes to the new run
            conn.execute(
                "UPDATE workflow_runs SET parent_run_id = ? WHERE workflow_id = ? "
                "AND run_id = ?", (r.run_id, child[0], child[1]),
            )
            continue
        inbox.append(_sql_children.outcome_event(
            seq, child[2], bytes(child[3]) if child[3] is not None else None,
            bytes(child[4]) if child[4] is not None else None))
    if not forking:
        # the old run ends first: one running run per workflow id
        assert r.reset_event is not None
        store._append(conn, r.source_workflow_id, r.source_run_id, length + 1,
                      [("WorkflowReset", r.reset_event)])
        conn.execute(
            "UPDATE workflow_runs SET history_length = ?, next_run_id = ? "
            "WHERE workflow_id = ? AND run_id = ?",
            (length + 1, r.run_id, r.source_workflow_id, r.source_run_id),
        )
        if status == "running":
            store._close_run(conn, r.source_workflow_id, r.source_run_id, "reset", now, None,
                             msgspec.json.encode(Failure(
                                 type="ResetFailure", kind="terminated",
                                 message=f"reset to event {r.to_event}: run {r.run_id} "
                                         "carries on")),
                             notes, may_retry=False)
    if forking:
        # the fork's history refers to the original's stored payloads (an agent's
        # conversation): they belong to a workflow id, so copy them to the new one
        conn.execute(
            "INSERT INTO payloads (workflow_id, hash, data, created_at) "
            "SELECT ?, hash, data, created_at FROM payloads WHERE workflow_id = ? "
            "ON CONFLICT (workflow_id, hash) DO NOTHING",
            (r.workflow_id, r.source_workflow_id),
        )
    store._insert_run(conn, successor, now, notes, history=r.events)
    key = (r.workflow_id, r.run_id)
    for task in r.activities:
        conn.execute(
            "INSERT INTO activity_tasks (workflow_id, run_id, seq, activity_type, task_queue, "
            "input, scheduled_at, visible_at, deadline, start_to_close_timeout, "
            "schedule_to_close_timeout, schedule_to_start_timeout, heartbeat_timeout, "
            "retry_policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, task.seq, task.activity_type, task.task_queue, task.input, now, now,
             now + task.schedule_to_close_timeout if task.schedule_to_close_timeout else None,
             task.start_to_close_timeout, task.schedule_to_close_timeout,
             task.schedule_to_start_timeout, task.heartbeat_timeout, task.retry_policy),
        )
        notes.add("activity_task")
    for seq, fire_at in r.timers:
        conn.execute("INSERT INTO timers (workflow_id, run_id, seq, fire_at) VALUES (?, ?, ?, ?)",
                     (*key, seq, fire_at))
        notes.due_at(fire_at)
    if inbox:
        conn.executemany("INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
                         [(*key, data) for data in inbox])
    if inbox or r.needs_task:
        store._ensure_workflow_task(conn, *key, now, notes)
    return r.run_id
