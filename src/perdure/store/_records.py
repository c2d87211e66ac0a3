"""Plain records that cross the engine/store boundary (no SQL, no I/O)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = [
    "ActivityAttempt",
    "ActivityOutcome",
    "ActivityTaskClaim",
    "ContinuedRun",
    "ExternalSignal",
    "NewActivityTask",
    "NewChildWorkflow",
    "PendingActivityRecord",
    "QueryTaskClaim",
    "ResetRecord",
    "RunRecord",
    "RunSnapshot",
    "StartWorkflowRecord",
    "UpdateOutcome",
    "WorkflowTaskClaim",
    "WorkflowTaskCompletion",
]


@dataclasses.dataclass
class StartWorkflowRecord:
    """A new run and its first event, written in one transaction."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    input: bytes
    started_event: bytes
    execution_timeout: float | None
    id_reuse_policy: str
    now: float
    signal_event: bytes | None = None
    update_request: tuple[str, str, bytes] | None = None
    """Update-with-start: (update id, name, ``UpdateRequested`` event) for the run that
    the start finds running (``use_existing``) or starts."""
    """With signal-with-start: a SignalReceived event delivered with the start."""
    eager_worker: str | None = None
    """Eager start: lease the first workflow task to this in-process worker at once."""
    eager_lease: float = 60.0
    id_conflict_policy: str = "fail"
    """What to do if the id runs: ``fail``, ``use_existing`` or ``terminate_existing``."""
    terminate_event: bytes | None = None
    """With ``terminate_existing``: the WorkflowTerminated event for the running run."""
    terminate_failure: bytes | None = None
    first_completion: WorkflowTaskCompletion | None = None
    """Eager start, fused: the first activation, already run by an in-process worker,
    committed with the start itself (no workflow task row at all)."""
    memo: bytes | None = None
    """JSON object, or None."""
    search_attributes: bytes | None = None
    """JSON object of scalars, or None."""
    run_timeout: float | None = None
    retry_policy: bytes | None = None
    """JSON RetryPolicy: a failed (or run-timed-out) run is followed by another attempt."""
    cron_schedule: str | None = None
    """A cron chain: each closed run is followed by the next, at the schedule's next tick."""
    first_task_at: float | None = None
    """When the first workflow task becomes visible (a cron chain's first tick); None: now."""


@dataclasses.dataclass
class PendingActivityRecord:
    """An activity of a running run that has not ended: its row, for ``describe()``."""

    seq: int
    activity_type: str
    task_queue: str
    attempt: int
    scheduled_at: float
    visible_at: float
    """When the current attempt may start (later than now while a retry waits)."""
    started_at: float | None
    lease_owner: str | None
    heartbeat_at: float | None
    heartbeat_details: bytes | None
    last_failure: bytes | None
    cancel_requested: bool


@dataclasses.dataclass
class RunRecord:
    """One row of ``workflow_runs``: the run's current state."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    status: str
    history_length: int
    created_at: float
    closed_at: float | None
    result: bytes | None
    failure: bytes | None
    execution_timeout: float | None
    pending_inbox: int = 0
    pending_activities: int = 0
    activities: list[PendingActivityRecord] = dataclasses.field(default_factory=list)
    """With ``detail``: every pending activity's row."""
    pending_timers: int = 0
    workflow_task_attempt: int | None = None
    workflow_task_failure: str | None = None
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    next_run_id: str | None = None
    """For a run closed by continue-as-new: the run that continues it."""
    memo: bytes | None = None
    search_attributes: bytes | None = None
    build_id: str | None = None
    """The build of the worker that ran the last workflow task."""


@dataclasses.dataclass
class RunSnapshot:
    """A run as a query sees it: its history (when asked for) and the inbound events
    waiting in its inbox, read at one instant, so that nothing is missed or seen twice
    while a workflow task moves events from the inbox into the history."""

    history_length: int
    inbox: list[tuple[int, bytes]]
    """(id, event) rows, in order."""
    history: list[bytes] | None = None
    """Every event of the history, in order, when asked for."""


@dataclasses.dataclass
class WorkflowTaskClaim:
    """A claimed workflow task: the run, its history length and new inbound events."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    attempt: int
    history_length: int
    inbox: list[tuple[int, bytes]]
    history: list[tuple[int, str, bytes]] | None = None
    """The whole history, when the store read it anyway (a run's first task)."""


@dataclasses.dataclass
class NewActivityTask:
    """An activity task to insert; ``eager_owner`` leases it to that worker at once."""

    seq: int
    activity_type: str
    task_queue: str
    input: bytes
    start_to_close_timeout: float | None
    schedule_to_close_timeout: float | None
    schedule_to_start_timeout: float | None
    heartbeat_timeout: float | None
    retry_policy: bytes
    eager_owner: str | None = None


@dataclasses.dataclass
class NewChildWorkflow:
    """A child run to start with the parent's activation, in the same transaction."""

    seq: int
    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    input: bytes
    started_event: bytes
    execution_timeout: float | None
    parent_close_policy: str
    memo: bytes | None = None
    search_attributes: bytes | None = None
    run_timeout: float | None = None
    retry_policy: bytes | None = None
    cron_schedule: str | None = None


@dataclasses.dataclass
class ContinuedRun:
    """The run that continue-as-new starts, with the same workflow id and a fresh history."""

    run_id: str
    workflow_type: str
    task_queue: str
    input: bytes


@dataclasses.dataclass
class ResetRecord:
    """A reset (same workflow id; the source run ends) or a fork (a new workflow id; the
    source is untouched): a new run whose history is a prefix of the source's."""

    source_workflow_id: str
    source_run_id: str
    source_length: int
    """The source history's length when it was read: it must not have moved since."""
    workflow_id: str
    run_id: str
    to_event: int
    events: list[tuple[str, bytes]]
    activities: list[NewActivityTask]
    timers: list[tuple[int, float]]
    inbox: list[bytes]
    open_children: list[int]
    needs_task: bool
    reset_event: bytes | None
    """Reset: the WorkflowReset event appended to the source run (None for a fork)."""
    task_queue: str | None = None
    reapply_signals: bool = True
    """Signals waiting in the source run's inbox (not yet in its history) go along too."""


@dataclasses.dataclass
class UpdateOutcome:
    """What an activation decided about an update: accepted, rejected or completed."""

    update_id: str
    state: str
    result: bytes | None = None
    failure: bytes | None = None


@dataclasses.dataclass
class ExternalSignal:
    """A signal one workflow sends another; the sender learns the outcome in its inbox."""

    seq: int
    workflow_id: str
    run_id: str | None
    event: bytes
    cancel: bool = False
    """A cancellation (CancelRequested) rather than a signal."""


@dataclasses.dataclass
class WorkflowTaskCompletion:
    """Everything one workflow task changes, committed in one transaction (invariant 1)."""

    workflow_id: str
    run_id: str
    worker_id: str
    expected_history_length: int
    inbox_upto: int
    """Inbox rows with id <= this were consumed (their events are in ``events``)."""
    events: list[tuple[str, bytes]]
    new_activities: list[NewActivityTask]
    cancel_activities: list[int]
    new_timers: list[tuple[int, float]]
    cancel_timers: list[int]
    close_status: str | None = None
    close_result: bytes | None = None
    close_failure: bytes | None = None
    sticky_for: float = 0.0
    """Keep the next task of this run for this worker for so many seconds."""
    new_children: list[NewChildWorkflow] = dataclasses.field(default_factory=list)
    cancel_children: list[int] = dataclasses.field(default_factory=list)
    """Seqs of children whose cancellation this activation requested."""
    external_signals: list[ExternalSignal] = dataclasses.field(default_factory=list)
    continue_as_new: ContinuedRun | None = None
    """With ``close_status == "continued_as_new"``: the run that takes over."""
    update_outcomes: list[UpdateOutcome] = dataclasses.field(default_factory=list)
    build_id: str = ""
    """The build of the worker that ran this activation."""
    stream_events: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)
    """(workflow id, run id, JSON) the activation published for followers (not history)."""
    upsert_memo: dict[str, Any] | None = None
    upsert_search_attributes: dict[str, Any] | None = None
    """Merged into the run's memo / search attributes (None values remove keys)."""


@dataclasses.dataclass
class ActivityTaskClaim:
    """A claimed activity attempt."""

    workflow_id: str
    run_id: str
    seq: int
    activity_type: str
    task_queue: str
    workflow_type: str
    input: bytes
    attempt: int
    scheduled_at: float
    start_to_close_timeout: float | None
    schedule_to_close_timeout: float | None
    heartbeat_timeout: float | None
    heartbeat_details: bytes | None
    retry_policy: bytes


@dataclasses.dataclass
class ActivityAttempt:
    """The state the engine needs to decide what a failed attempt leads to."""

    attempt: int
    retry_policy: bytes
    scheduled_at: float
    schedule_to_close_timeout: float | None


@dataclasses.dataclass
class ActivityOutcome:
    """What to do with an activity task after an attempt ended.

    ``retry_at`` set: the task stays, next attempt visible then. Otherwise the
    task is deleted and ``event`` (ActivityCompleted/Failed/TimedOut) goes to
    the workflow's inbox.
    """

    retry_at: float | None
    event: bytes | None
    last_failure: bytes | None = None


ActivityDecision = Callable[[ActivityAttempt], ActivityOutcome]


@dataclasses.dataclass
class QueryTaskClaim:
    """A query a worker must answer."""

    id: int
    workflow_id: str
    run_id: str
    name: str
    args: bytes
