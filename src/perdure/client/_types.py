"""What the client hands out and takes: statuses, policies, descriptions, histories."""

from __future__ import annotations

import base64
import dataclasses
import enum
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from perdure._arguments import check_seconds
from perdure._converter import PayloadConverter
from perdure._errors import InvalidArgumentError, PayloadDecodingError
from perdure._failure import exception_from_failure
from perdure._identifiers import name_problem, shown
from perdure.history import Failure, HistoryEvent, WorkflowStarted, WorkflowTaskCompleted
from perdure.store._records import PendingActivityRecord, RunRecord

__all__ = [
    "IdConflictPolicy",
    "IdReusePolicy",
    "PendingActivity",
    "PendingActivityState",
    "StreamEvent",
    "WorkflowDescription",
    "WorkflowHistory",
    "WorkflowPage",
    "WorkflowStatus",
    "decode_page_token",
    "encode_fitting",
    "encode_page_token",
    "epoch",
    "seconds",
]


class WorkflowStatus(enum.StrEnum):
    """Where a workflow run is in its life; the values are stored in the database."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    TIMED_OUT = "timed_out"
    CONTINUED_AS_NEW = "continued_as_new"
    """Closed by ``workflow.continue_as_new``: a new run of the same id carries on."""
    RESET = "reset"
    """Ended by ``reset()``: a new run, from a prefix of this one's history, carries on."""


class IdReusePolicy(enum.StrEnum):
    """Whether a workflow id may be used again once its last run closed.

    A *running* id is never reused: starting it again raises
    :class:`WorkflowAlreadyStartedError`.
    """

    ALLOW_DUPLICATE = "allow_duplicate"
    ALLOW_DUPLICATE_FAILED_ONLY = "allow_duplicate_failed_only"
    REJECT_DUPLICATE = "reject_duplicate"


class WorkflowPage(list["WorkflowDescription"]):
    """A page of :meth:`Client.list_workflows`: a list, plus the token of the next page
    (None on the last)."""

    next_page_token: str | None = None


def epoch(when: datetime | float | None, what: str = "time") -> float | None:
    """A time filter as epoch seconds: an aware datetime or a finite number."""
    if when is None:
        return None
    if isinstance(when, int | float) and not isinstance(when, bool):
        if not math.isfinite(when):
            raise InvalidArgumentError(
                f"{what} must be finite epoch seconds, not {shown(when)}")
        return float(when)
    if not isinstance(when, datetime):
        raise InvalidArgumentError(
            f"{what} must be an aware datetime or epoch seconds, not "
            f"{type(when).__name__} ({shown(when)})")
    if when.tzinfo is None:
        raise InvalidArgumentError(
            f"{what} {when!r} has no time zone; pass an aware datetime (tzinfo=UTC) or epoch "
            "seconds"
        )
    return when.timestamp()


def encode_page_token(key: tuple[float, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_page_token(token: str) -> tuple[float, str, str]:
    problem = f"page_token {shown(token)} is not one that list_workflows returned"
    if not isinstance(token, str):
        raise InvalidArgumentError(problem)
    try:
        created, workflow_id, run_id = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
        raise InvalidArgumentError(problem) from exc
    if not (isinstance(created, int | float) and not isinstance(created, bool)
            and math.isfinite(created) and isinstance(workflow_id, str)
            and isinstance(run_id, str) and name_problem(workflow_id) is None
            and name_problem(run_id) is None):
        raise InvalidArgumentError(problem)
    return float(created), workflow_id, run_id


class IdConflictPolicy(enum.StrEnum):
    """What a start does when a run with its workflow id is *running*."""

    FAIL = "fail"
    """Raise :class:`WorkflowAlreadyStartedError` (the default)."""
    USE_EXISTING = "use_existing"
    """Return a handle to the running run; start nothing."""
    TERMINATE_EXISTING = "terminate_existing"
    """Terminate the running run, then start a new one, in one transaction."""


class PendingActivityState(enum.StrEnum):
    """Where a pending activity is (Temporal's ``PendingActivityState``)."""

    SCHEDULED = "scheduled"
    """Waiting for a worker (or for its next attempt's back-off to pass)."""
    STARTED = "started"
    """An attempt is running on a worker."""
    CANCEL_REQUESTED = "cancel_requested"
    """The workflow asked it to stop; the running attempt has not ended yet."""


def _datetime(epoch_seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC) if epoch_seconds is not None else None


@dataclasses.dataclass(frozen=True)
class PendingActivity:
    """An activity a run scheduled that has not ended, from ``describe()``."""

    activity_id: str
    activity_type: str
    task_queue: str
    state: PendingActivityState
    attempt: int
    """The current (or next) attempt: 1 for the first."""
    scheduled_time: datetime
    last_started_time: datetime | None
    """When the current attempt started (None while it waits for a worker)."""
    next_attempt_time: datetime | None
    """While a retry waits out its back-off: when it may start."""
    last_heartbeat_time: datetime | None
    heartbeat_details: list[Any]
    """What the attempt last reported with ``activity.heartbeat(...)`` (plain JSON)."""
    last_failure: BaseException | None
    """Why the previous attempt failed (rebuilt as an exception), if one did."""
    last_worker_identity: str | None
    """The worker running the current attempt."""

    @classmethod
    def from_record(cls, record: PendingActivityRecord) -> PendingActivity:
        if record.cancel_requested:
            state = PendingActivityState.CANCEL_REQUESTED
        elif record.started_at is not None:
            state = PendingActivityState.STARTED
        else:
            state = PendingActivityState.SCHEDULED
        details = msgspec.json.decode(record.heartbeat_details) if record.heartbeat_details \
            else []
        failure = (exception_from_failure(msgspec.json.decode(record.last_failure, type=Failure))
                   if record.last_failure else None)
        waiting = record.started_at is None and record.visible_at > record.scheduled_at
        return cls(
            activity_id=str(record.seq), activity_type=record.activity_type,
            task_queue=record.task_queue, state=state, attempt=record.attempt,
            scheduled_time=datetime.fromtimestamp(record.scheduled_at, tz=UTC),
            last_started_time=_datetime(record.started_at),
            next_attempt_time=_datetime(record.visible_at) if waiting else None,
            last_heartbeat_time=_datetime(record.heartbeat_at),
            heartbeat_details=details if isinstance(details, list) else [details],
            last_failure=failure, last_worker_identity=record.lease_owner,
        )


@dataclasses.dataclass(frozen=True)
class WorkflowDescription:
    """A workflow run's state, from ``handle.describe()`` or ``list_workflows``."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    status: WorkflowStatus
    start_time: datetime
    close_time: datetime | None
    history_length: int
    execution_timeout: timedelta | None
    pending_activities: list[PendingActivity] = dataclasses.field(default_factory=list)
    """Each activity scheduled and not yet ended, with its attempt, last failure and last
    heartbeat (Temporal's ``pending_activities``); filled by ``describe()``, empty in
    ``list_workflows`` pages."""
    pending_timers: int = 0
    pending_events: int = 0
    """Signals, completions and other inbound events not yet processed by workflow code."""
    workflow_task_attempt: int | None = None
    last_workflow_task_failure: str | None = None
    """Why the last workflow task failed (non-determinism, unknown type, a bug), if it did."""
    parent_workflow_id: str | None = None
    """For a child workflow: the workflow id and run id of the parent that started it."""
    parent_run_id: str | None = None
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)
    search_attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    """As set at start and upserted by the workflow since."""
    last_build_id: str | None = None
    """The build id of the worker that ran the last workflow task (the history's
    ``WorkflowTaskCompleted`` events name the build of each)."""

    @classmethod
    def from_record(cls, record: RunRecord) -> WorkflowDescription:
        return cls(
            workflow_id=record.workflow_id,
            run_id=record.run_id,
            workflow_type=record.workflow_type,
            task_queue=record.task_queue,
            status=WorkflowStatus(record.status),
            start_time=datetime.fromtimestamp(record.created_at, tz=UTC),
            close_time=(
                datetime.fromtimestamp(record.closed_at, tz=UTC) if record.closed_at else None
            ),
            history_length=record.history_length,
            execution_timeout=(
                timedelta(seconds=record.execution_timeout) if record.execution_timeout else None
            ),
            pending_activities=[PendingActivity.from_record(a) for a in record.activities],
            pending_timers=record.pending_timers,
            pending_events=record.pending_inbox,
            workflow_task_attempt=record.workflow_task_attempt,
            last_workflow_task_failure=record.workflow_task_failure,
            parent_workflow_id=record.parent_workflow_id,
            parent_run_id=record.parent_run_id,
            memo=json.loads(record.memo) if record.memo else {},
            search_attributes=(
                json.loads(record.search_attributes) if record.search_attributes else {}
            ),
            last_build_id=record.build_id,
        )


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """One event of a workflow's stream: its id (increasing), the publishing run, the
    event itself (decoded JSON)."""

    id: int
    run_id: str
    data: Any


@dataclasses.dataclass(frozen=True)
class WorkflowHistory:
    """A run's recorded events, in order (event ``i`` has sequence number ``i + 1``)."""

    workflow_id: str
    run_id: str
    events: list[HistoryEvent]

    def to_json(self) -> bytes:
        """The history as a JSON document (format version 1, see docs/history-format.md)."""
        return msgspec.json.encode(
            {"format": "perdure-history", "version": 1, "workflow_id": self.workflow_id,
             "run_id": self.run_id, "events": self.events}
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str = "the document") -> WorkflowHistory:
        """Read a history that :meth:`to_json` (or ``perdure workflow export``) wrote."""
        try:
            document = msgspec.json.decode(data, type=_HistoryDocument)
        except msgspec.ValidationError as exc:
            raise InvalidArgumentError(
                f"{source} is not a Perdure history export: {exc}"
            ) from None
        except msgspec.DecodeError as exc:
            raise InvalidArgumentError(f"{source} is not valid JSON: {exc}") from None
        if document.format != "perdure-history":
            raise InvalidArgumentError(
                f"{source} is a {document.format!r} document, not a 'perdure-history' export"
            )
        if document.version != 1:
            raise InvalidArgumentError(
                f"{source} is history format version {document.version}; this Perdure reads "
                "version 1: upgrade Perdure"
            )
        return cls(document.workflow_id, document.run_id, document.events)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkflowHistory:
        """Read an exported history file."""
        with open(path, "rb") as f:
            return cls.from_json(f.read(), source=str(path))

    @property
    def workflow_type(self) -> str:
        """The workflow type, from the first event."""
        first = self.events[0] if self.events else None
        return first.workflow_type if isinstance(first, WorkflowStarted) else ""

    @property
    def build_ids(self) -> list[str]:
        """The build ids of the workers that ran this history's workflow tasks, in order."""
        seen: dict[str, None] = {}
        for event in self.events:
            if isinstance(event, WorkflowTaskCompleted) and event.build_id:
                seen.setdefault(event.build_id)
        return list(seen)


class _HistoryDocument(msgspec.Struct):
    format: str
    version: int
    workflow_id: str
    run_id: str
    events: list[HistoryEvent]



def seconds(value: timedelta | float | None, what: str = "timeout", *,
            zero: bool = False) -> float | None:
    """A duration argument as seconds: finite and positive (``zero``: or 0), else
    :class:`InvalidArgumentError` naming ``what``."""
    return check_seconds(value, what, zero=zero)


def encode_fitting(converter: PayloadConverter, args: Sequence[Any], method: Callable[..., Any],
                   hints: Sequence[Any], *, what: str) -> bytes:
    """Encode ``args`` for ``method`` (a handler or run method, unbound: ``self`` first),
    refusing at the caller what would not fit it on the worker: a wrong count, or values
    that do not decode into the parameters' types. Refused here, nothing is stored; let
    through, a malformed signal could only be dropped, and a malformed start only fail."""
    try:
        inspect.signature(method).bind(None, *args)  # None stands for self
    except TypeError as exc:  # Python's words name the missing parameter
        raise InvalidArgumentError(
            f"arguments do not fit {what} ({method.__qualname__}"
            f"{inspect.signature(method)}): {exc}") from None
    data = converter.encode_args(args, what=what)
    try:
        converter.decode_args(data, hints, what=what)
    except PayloadDecodingError as exc:
        raise InvalidArgumentError(
            f"arguments do not fit {what} ({method.__qualname__}"
            f"{inspect.signature(method)}): {exc}") from None
    return data
