"""Links between runs: child workflows, parent-close policies, signals between workflows.

These run inside another operation's transaction (a parent's workflow task, a
child's close), so a child starts in the same commit as the command that asked
for it, and its outcome reaches the parent in the same commit as its close.

Lock order: a run's own row first (its operation locked it), then the other
run's row. A parent's activation locks parent then child; a child's close locks
child then parent. When both happen at once on PostgreSQL, one transaction gets
a deadlock error and its batch runs again (see ``_postgres_writer``); SQLite
serializes every transaction, so it never sees one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from perdure._cron import CronSchedule
from perdure._errors import WorkflowNotFoundError
from perdure.history import (
    CancelRequested,
    ChildWorkflowCanceled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowStarted,
    ChildWorkflowStartFailed,
    ExternalCancelDelivered,
    ExternalSignalDelivered,
    Failure,
    WorkflowTerminated,
    encode_event,
)
from perdure.store._base import StoreNotes
from perdure.store._records import ExternalSignal, NewChildWorkflow

if TYPE_CHECKING:
    from perdure.store._sql_runs import Conn, SqlRunStore

from perdure.store import _sql_runs

__all__ = [
    "apply_parent_close_policies",
    "deliver_external_signal",
    "notify_parent",
    "request_child_cancel",
    "start_child",
]

PARENT_CLOSE_POLICIES = ("terminate", "request_cancel", "abandon")


def _to_inbox(store: SqlRunStore, conn: Conn, workflow_id: str, run_id: str, event: bytes,
              now: float, notes: StoreNotes) -> None:
    conn.execute(
        "INSERT INTO inbox (workflow_id, run_id, data) VALUES (?, ?, ?)",
        (workflow_id, run_id, event),
    )
    store._ensure_workflow_task(conn, workflow_id, run_id, now, notes)


def start_child(
    store: SqlRunStore, conn: Conn, parent_id: str, parent_run: str, child: NewChildWorkflow,
    now: float, notes: StoreNotes,
) -> bytes:
    """Start ``child`` (or find its id taken); return the event for the parent's inbox."""
    store._lock_workflow_id(conn, child.workflow_id)
    latest = store._latest_run(conn, child.workflow_id)
    if latest is not None and latest[1] == "running":
        return encode_event(
            ChildWorkflowStartFailed(seq=child.seq, cause="already_running", run_id=latest[0])
        )
    # a cron child's code first runs at its schedule's first tick
    first = now if child.cron_schedule is None else CronSchedule(child.cron_schedule).first_time(now)
    store._insert_run(conn, _sql_runs.NewRun(
        workflow_id=child.workflow_id, run_id=child.run_id, workflow_type=child.workflow_type,
        task_queue=child.task_queue, input=child.input,
        execution_timeout=child.execution_timeout,
        execution_deadline=(now + child.execution_timeout
                            if child.execution_timeout is not None else None),
        run_timeout=child.run_timeout, retry_policy=child.retry_policy,
        parent=(parent_id, parent_run, child.seq, child.parent_close_policy),
        memo=child.memo, search_attributes=child.search_attributes,
        cron_schedule=child.cron_schedule, scheduled_at=first,
    ), now, notes, started_event=child.started_event)
    store._ensure_workflow_task(conn, child.workflow_id, child.run_id, first, notes)
    notes.due_at(first if child.cron_schedule is not None else None)
    return encode_event(ChildWorkflowStarted(seq=child.seq, run_id=child.run_id))


def request_child_cancel(
    store: SqlRunStore, conn: Conn, parent_id: str, parent_run: str, seq: int, now: float,
    notes: StoreNotes,
) -> None:
    """Deliver CancelRequested to the child that command ``seq`` of the parent started."""
    row = conn.execute(
        "SELECT workflow_id, run_id FROM workflow_runs WHERE parent_workflow_id = ? "
        f"AND parent_run_id = ? AND parent_seq = ? ORDER BY {store._INSERTION_ORDER} DESC "
        "LIMIT 1",
        (parent_id, parent_run, seq),
    ).fetchone()
    if row is None:
        return  # the start failed (id already running): nothing of ours to cancel
    locked = store._lock_run(conn, row[0], row[1])
    if locked is None or locked[0] != "running":
        return
    event = encode_event(CancelRequested(reason=f"cancelled by parent workflow {parent_id!r}"))
    _to_inbox(store, conn, row[0], row[1], event, now, notes)


def deliver_external_signal(
    store: SqlRunStore, conn: Conn, signal: ExternalSignal, now: float, notes: StoreNotes
) -> bytes:
    """Deliver a signal from one workflow to another; return the sender's inbox event."""
    answer = ExternalCancelDelivered if signal.cancel else ExternalSignalDelivered
    try:
        run_id = store._running_run(conn, signal.workflow_id, signal.run_id)
    except WorkflowNotFoundError as exc:
        return encode_event(answer(seq=signal.seq, error=str(exc)))
    _to_inbox(store, conn, signal.workflow_id, run_id, signal.event, now, notes)
    return encode_event(answer(seq=signal.seq))


def notify_parent(
    store: SqlRunStore, conn: Conn, parent: tuple[str, str, int], status: str,
    result: bytes | None, failure: bytes | None, now: float, notes: StoreNotes,
) -> None:
    """A child run closed: tell its parent, if the parent still runs."""
    parent_id, parent_run, seq = parent
    locked = store._lock_run(conn, parent_id, parent_run)
    if locked is None or locked[0] != "running":
        return
    _to_inbox(store, conn, parent_id, parent_run, outcome_event(seq, status, result, failure),
              now, notes)


def outcome_event(seq: int, status: str, result: bytes | None, failure: bytes | None) -> bytes:
    """The parent's inbound event for a child run that closed with ``status``."""
    event: ChildWorkflowCompleted | ChildWorkflowCanceled | ChildWorkflowFailed
    if status == "completed":
        event = ChildWorkflowCompleted(seq=seq, result=msgspec.Raw(result or b"null"))
    elif status == "canceled":
        event = ChildWorkflowCanceled(seq=seq)
    else:
        recorded = (
            msgspec.json.decode(failure, type=Failure) if failure
            else Failure(type="ChildWorkflowFailure", message=f"child workflow {status}")
        )
        event = ChildWorkflowFailed(seq=seq, status=status, failure=recorded)
    return encode_event(event)


def apply_parent_close_policies(
    store: SqlRunStore, conn: Conn, workflow_id: str, run_id: str, status: str, now: float,
    notes: StoreNotes,
) -> None:
    """A run closed: terminate or cancel its running children, as each child's policy says."""
    children = conn.execute(
        "SELECT workflow_id, run_id, parent_close_policy FROM workflow_runs "
        "WHERE parent_workflow_id = ? AND parent_run_id = ? AND status = 'running'",
        (workflow_id, run_id),
    ).fetchall()
    why = f"parent workflow {workflow_id!r} (run {run_id}) closed: {status}"
    for child_id, child_run, policy in children:
        if policy == "abandon":
            continue
        locked = store._lock_run(conn, child_id, child_run)
        if locked is None or locked[0] != "running":
            continue
        if policy == "request_cancel":
            _to_inbox(store, conn, child_id, child_run,
                      encode_event(CancelRequested(reason=why)), now, notes)
            continue
        store._terminate_run(
            conn, child_id, child_run, int(locked[1]),
            encode_event(WorkflowTerminated(reason=why)),
            msgspec.json.encode(Failure(type="TerminatedFailure", kind="terminated",
                                        message=why)),
            notes,
        )
