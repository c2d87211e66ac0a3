"""History events: the append-only record that makes a workflow durable.

Event type names and field names are persisted compatibility data: they
outlive the Python classes (tests pin them). Events are msgspec Structs
encoded as JSON objects tagged by ``type``; user payloads inside them
(``input``, ``result``, ``args``) are embedded JSON, so a history reads as
plain JSON.

A history is a sequence of *activations*. Each one is: the inbound events the
workflow reacted to (WorkflowStarted, ActivityCompleted, TimerFired,
SignalReceived, ...), then one ``WorkflowTaskCompleted``, then the command
events the workflow code produced in reaction (ActivityScheduled,
TimerStarted, WorkflowCompleted, ...). Replay walks the activations in order.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "COMMAND_EVENT_TYPES",
    "TERMINAL_EVENT_TYPES",
    "ActivityCancelRequested",
    "ActivityCompleted",
    "ActivityFailed",
    "ActivityScheduled",
    "ActivityTimedOut",
    "CancelRequested",
    "ChildWorkflowCancelRequested",
    "ChildWorkflowCanceled",
    "ChildWorkflowCompleted",
    "ChildWorkflowFailed",
    "ChildWorkflowScheduled",
    "ChildWorkflowStartFailed",
    "ChildWorkflowStarted",
    "ExternalCancelDelivered",
    "ExternalCancelSent",
    "ExternalSignalDelivered",
    "ExternalSignalSent",
    "Failure",
    "HistoryEvent",
    "MarkerRecorded",
    "MemoUpserted",
    "SearchAttributesUpserted",
    "SignalReceived",
    "TimerCanceled",
    "TimerFired",
    "TimerStarted",
    "UpdateAccepted",
    "UpdateCompleted",
    "UpdateRequested",
    "WorkflowCanceled",
    "WorkflowCompleted",
    "WorkflowContinuedAsNew",
    "WorkflowFailed",
    "WorkflowReset",
    "WorkflowStarted",
    "WorkflowTaskCompleted",
    "WorkflowTerminated",
    "WorkflowTimedOut",
    "decode_event",
    "encode_event",
]

Raw = msgspec.Raw


class Failure(msgspec.Struct, omit_defaults=True):
    """An exception as recorded in history: type, message, stack and cause chain."""

    type: str
    message: str
    stack: str = ""
    kind: str = "application"
    """application | activity | child_workflow | timeout | cancelled | terminated"""
    non_retryable: bool = False
    details: Raw = msgspec.Raw(b"")
    """JSON array of the error's details; empty if none (msgspec cannot decode ``Raw | None``)."""
    cause: Failure | None = None
    attributes: dict[str, Any] | None = None
    """Kind-specific fields: activity_type, activity_id, attempt, timeout_type."""


class _Event(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


# --- inbound events: things that happened to the workflow -----------------


class WorkflowStarted(_Event, tag="WorkflowStarted"):
    workflow_type: str
    task_queue: str
    input: Raw
    started_at: float
    execution_timeout: float | None = None
    parent_workflow_id: str | None = None
    """For a child workflow: its parent's workflow id, run id and the command's seq."""
    parent_run_id: str | None = None
    parent_seq: int | None = None
    continued_from_run_id: str | None = None
    """For a run started by continue-as-new: the run it continues."""
    memo: dict[str, Any] | None = None
    search_attributes: dict[str, Any] | None = None
    attempt: int = 1
    """Which attempt of the workflow this run is (retry policy); 1 for the first."""
    run_timeout: float | None = None
    retry_policy: dict[str, Any] | None = None
    cron_schedule: str | None = None
    """For a run of a cron chain: the schedule (``workflow.info().cron_schedule``)."""
    last_completion_result: Raw = msgspec.Raw(b"")
    """The result of the chain's last completed run (cron, retries); empty if none."""
    last_failure: Failure | None = None
    """How the run before this one failed, when it did (cron, retries)."""


class ActivityCompleted(_Event, tag="ActivityCompleted"):
    seq: int
    result: Raw
    attempt: int


class ActivityFailed(_Event, tag="ActivityFailed"):
    seq: int
    failure: Failure
    attempt: int


class ActivityTimedOut(_Event, tag="ActivityTimedOut"):
    seq: int
    timeout_type: str
    attempt: int
    last_failure: Failure | None = None


class TimerFired(_Event, tag="TimerFired"):
    seq: int


class SignalReceived(_Event, tag="SignalReceived"):
    name: str
    args: Raw


class CancelRequested(_Event, tag="CancelRequested"):
    reason: str = ""


class ChildWorkflowStarted(_Event, tag="ChildWorkflowStarted"):
    seq: int
    run_id: str


class ChildWorkflowStartFailed(_Event, tag="ChildWorkflowStartFailed"):
    seq: int
    cause: str
    """``already_running``: the child's workflow id has a running run."""
    run_id: str = ""


class ChildWorkflowCompleted(_Event, tag="ChildWorkflowCompleted"):
    seq: int
    result: Raw


class ChildWorkflowFailed(_Event, tag="ChildWorkflowFailed"):
    seq: int
    status: str
    """How the child's run closed: failed, timed_out or terminated."""
    failure: Failure


class ChildWorkflowCanceled(_Event, tag="ChildWorkflowCanceled"):
    seq: int


class UpdateRequested(_Event, tag="UpdateRequested"):
    """An update waiting in the run's inbox. Never in history: the worker validates it
    and records :class:`UpdateAccepted` in its place, or rejects it without a trace."""

    update_id: str
    name: str
    args: Raw


class UpdateAccepted(_Event, tag="UpdateAccepted"):
    update_id: str
    name: str
    args: Raw


class ExternalSignalDelivered(_Event, tag="ExternalSignalDelivered"):
    seq: int
    error: str = ""
    """Empty if the signal reached a running run; otherwise why it did not."""


class ExternalCancelDelivered(_Event, tag="ExternalCancelDelivered"):
    seq: int
    error: str = ""
    """Empty if the cancellation reached a running run; otherwise why it did not."""


# --- the activation boundary -------------------------------------------------


class WorkflowTaskCompleted(_Event, tag="WorkflowTaskCompleted"):
    time: float
    """The workflow's notion of now during this activation (seconds since epoch)."""
    worker: str = ""
    build_id: str = ""
    continue_as_new_suggested: bool = False
    """What ``workflow.info()`` told this activation (the worker's size limits are not
    in history, so replay reads the answer from here)."""


# --- command events: what the workflow code decided ---------------------------


class ActivityScheduled(_Event, tag="ActivityScheduled"):
    seq: int
    activity_type: str
    task_queue: str
    input: Raw
    activity_id: str
    start_to_close_timeout: float | None = None
    schedule_to_close_timeout: float | None = None
    schedule_to_start_timeout: float | None = None
    heartbeat_timeout: float | None = None
    retry_policy: dict[str, Any] | None = None


class ActivityCancelRequested(_Event, tag="ActivityCancelRequested"):
    seq: int


class TimerStarted(_Event, tag="TimerStarted"):
    seq: int
    duration: float
    fire_at: float


class TimerCanceled(_Event, tag="TimerCanceled"):
    seq: int


class MarkerRecorded(_Event, tag="MarkerRecorded"):
    seq: int
    name: str
    value: Raw


class ChildWorkflowScheduled(_Event, tag="ChildWorkflowScheduled"):
    seq: int
    workflow_type: str
    workflow_id: str
    task_queue: str
    input: Raw
    parent_close_policy: str
    """terminate | request_cancel | abandon: what happens to the child when this run closes."""
    execution_timeout: float | None = None
    memo: dict[str, Any] | None = None
    search_attributes: dict[str, Any] | None = None
    run_timeout: float | None = None
    retry_policy: dict[str, Any] | None = None
    cron_schedule: str | None = None
    """The child is a cron chain; the parent hears of it when the chain ends."""


class UpdateCompleted(_Event, tag="UpdateCompleted"):
    update_id: str
    result: Raw
    """The handler's return value (JSON ``null`` when it failed)."""
    failure: Failure | None = None


class SearchAttributesUpserted(_Event, tag="SearchAttributesUpserted"):
    attributes: dict[str, Any]
    """Merged into the run's search attributes; a ``null`` value removes the key."""


class MemoUpserted(_Event, tag="MemoUpserted"):
    memo: dict[str, Any]
    """Merged into the run's memo; a ``null`` value removes the key."""


class ChildWorkflowCancelRequested(_Event, tag="ChildWorkflowCancelRequested"):
    seq: int


class ExternalSignalSent(_Event, tag="ExternalSignalSent"):
    seq: int
    workflow_id: str
    name: str
    args: Raw
    run_id: str | None = None
    """None: the workflow id's latest run."""


class ExternalCancelSent(_Event, tag="ExternalCancelSent"):
    seq: int
    workflow_id: str
    reason: str = ""
    run_id: str | None = None


class WorkflowCompleted(_Event, tag="WorkflowCompleted"):
    result: Raw


class WorkflowFailed(_Event, tag="WorkflowFailed"):
    failure: Failure


class WorkflowCanceled(_Event, tag="WorkflowCanceled"):
    reason: str = ""


class WorkflowContinuedAsNew(_Event, tag="WorkflowContinuedAsNew"):
    workflow_type: str
    task_queue: str
    input: Raw
    """The new run's arguments; it starts with a fresh history and the same workflow id."""


# --- events appended by the engine without a workflow task ---------------------


class WorkflowTerminated(_Event, tag="WorkflowTerminated"):
    reason: str = ""


class WorkflowTimedOut(_Event, tag="WorkflowTimedOut"):
    timeout: float


class WorkflowReset(_Event, tag="WorkflowReset"):
    """The run was reset: a new run (``new_run_id``) continues from event ``to_event``."""

    to_event: int
    new_run_id: str
    reason: str = ""


HistoryEvent = (
    WorkflowStarted
    | ActivityCompleted
    | ActivityFailed
    | ActivityTimedOut
    | TimerFired
    | SignalReceived
    | CancelRequested
    | ChildWorkflowStarted
    | ChildWorkflowStartFailed
    | ChildWorkflowCompleted
    | ChildWorkflowFailed
    | ChildWorkflowCanceled
    | ExternalSignalDelivered
    | ExternalCancelDelivered
    | UpdateRequested
    | UpdateAccepted
    | WorkflowTaskCompleted
    | ActivityScheduled
    | ActivityCancelRequested
    | TimerStarted
    | TimerCanceled
    | MarkerRecorded
    | ChildWorkflowScheduled
    | ChildWorkflowCancelRequested
    | ExternalSignalSent
    | ExternalCancelSent
    | UpdateCompleted
    | SearchAttributesUpserted
    | MemoUpserted
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCanceled
    | WorkflowContinuedAsNew
    | WorkflowTerminated
    | WorkflowTimedOut
    | WorkflowReset
)

COMMAND_EVENT_TYPES: tuple[type[_Event], ...] = (
    ActivityScheduled,
    ActivityCancelRequested,
    TimerStarted,
    TimerCanceled,
    MarkerRecorded,
    ChildWorkflowScheduled,
    ChildWorkflowCancelRequested,
    ExternalSignalSent,
    ExternalCancelSent,
    UpdateCompleted,
    SearchAttributesUpserted,
    MemoUpserted,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCanceled,
    WorkflowContinuedAsNew,
)
"""Events produced by workflow code; replay must reproduce them exactly."""

TERMINAL_EVENT_TYPES: tuple[type[_Event], ...] = (
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCanceled,
    WorkflowContinuedAsNew,
    WorkflowTerminated,
    WorkflowTimedOut,
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(HistoryEvent)


def encode_event(event: HistoryEvent) -> bytes:
    """Encode one event as a JSON object."""
    return _encoder.encode(event)


def decode_event(data: bytes | memoryview) -> HistoryEvent:
    """Decode one event from its JSON form."""
    return _decoder.decode(data)


def event_type_name(event: HistoryEvent) -> str:
    """The persisted type tag of ``event``."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]
