"""Perdure's error hierarchy.

Every error Perdure raises on purpose derives from :class:`PerdureError`::

    PerdureError
    ├── ConfigurationError            bad setup: database URL, options
    │   └── InvalidDatabaseURLError   also: a URL naming another application's database
    ├── DatabaseUnavailableError      the database cannot be reached, or cannot take writes
    ├── SchemaVersionError            database schema newer than this code
    ├── PayloadError                  a value that cannot cross the durable boundary
    │   ├── PayloadEncodingError      not JSON: a wrong type, NaN or infinity, too deep
    │   ├── PayloadDecodingError      stored payload does not match the type hint
    │   └── PayloadTooLargeError
    ├── InvalidArgumentError          arguments that do not fit: type, id rule, timeout
    ├── WorkflowAlreadyStartedError   id reuse policy refused a start
    ├── WorkflowNotFoundError
    ├── UnknownWorkflowTypeError      no definition registered under that name
    ├── UnknownActivityTypeError
    ├── ActivityNotFoundError         client side: no current attempt matches a completion
    ├── AsyncActivityCancelledError   client side: an async-completed activity was cancelled
    ├── UnknownHandlerError           signal/query name the workflow does not define
    ├── NotInWorkflowError            workflow API called outside workflow code
    ├── NotInActivityError            activity API called outside an activity
    ├── NondeterminismError           replay produced other commands than history
    ├── QueryError
    │   ├── QueryRejectedError        the query handler raised
    │   └── QueryTimeoutError         no worker answered in time
    ├── WorkflowFailureError          client side: the workflow did not complete
    ├── UpdateFailedError             client side: the update's handler raised, or the run closed
    │   └── UpdateRejectedError       the validator refused it; history has no trace of it
    └── FailureError                  failures that cross the durable boundary
        ├── ApplicationError          raised by user code; may be non-retryable
        ├── ActivityError             an activity failed, as seen by its workflow
        ├── ChildWorkflowError        a child workflow did not complete, as seen by its parent
        ├── TimeoutFailure            an activity/workflow timeout fired
        ├── CancelledFailure          cancellation, as recorded in history
        └── TerminatedFailure         the workflow was terminated

Internal control flow (evicting a cached workflow) uses ``BaseException``
subclasses so that ``except Exception`` in user code cannot swallow it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

__all__ = [
    "ActivityError",
    "ActivityNotFoundError",
    "ApplicationError",
    "AsyncActivityCancelledError",
    "CancelledFailure",
    "ChildWorkflowError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "FailureError",
    "InvalidArgumentError",
    "InvalidDatabaseURLError",
    "NondeterminismError",
    "NotInActivityError",
    "NotInWorkflowError",
    "PayloadDecodingError",
    "PayloadEncodingError",
    "PayloadError",
    "PayloadTooLargeError",
    "PerdureError",
    "QueryError",
    "QueryRejectedError",
    "QueryTimeoutError",
    "SchemaVersionError",
    "TerminatedFailure",
    "TimeoutFailure",
    "UnknownActivityTypeError",
    "UnknownHandlerError",
    "UnknownWorkflowTypeError",
    "UpdateFailedError",
    "UpdateRejectedError",
    "WorkflowAlreadyStartedError",
    "WorkflowFailureError",
    "WorkflowNotFoundError",
]


class PerdureError(Exception):
    """Root of every error Perdure raises on purpose."""


class ConfigurationError(PerdureError):
    """Perdure was set up with options it cannot use."""


class InvalidDatabaseURLError(ConfigurationError):
    """A database URL that Perdure cannot parse or does not support."""


class DatabaseUnavailableError(PerdureError):
    """The database cannot be reached (server down, wrong host, port, database or user),
    or cannot take a write (SQLite: a full disk, a lock held too long, an I/O error, a
    read-only or corrupt file, a file deleted or replaced while open).

    A PostgreSQL store raises it when it first connects; once connected, it rides out
    an outage by reconnecting with back-off instead. Nothing of the call was committed.
    """


class SchemaVersionError(PerdureError):
    """The database schema is newer than this version of Perdure understands."""


class PayloadError(PerdureError):
    """A value could not cross the durable boundary (JSON in history)."""


class PayloadEncodingError(PayloadError):
    """A value could not be serialized to JSON: a type JSON has no form for, a NaN or an
    infinity (never written as ``null``), a lone surrogate, nesting too deep."""


class PayloadDecodingError(PayloadError):
    """A stored payload could not be decoded into the expected type."""


class PayloadTooLargeError(PayloadError):
    """A payload exceeds the configured maximum size."""


class InvalidArgumentError(PerdureError, ValueError):
    """A call's arguments do not fit the function it names (count, kind), or what both
    backends store: an id or name with a NUL, a lone surrogate or over 1,000 bytes, a NaN
    or negative timeout, an unknown enum value. The message names the argument."""


class WorkflowAlreadyStartedError(PerdureError):
    """A workflow with this id is running (or the id reuse policy refuses reuse)."""

    def __init__(self, message: str, *, workflow_id: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.run_id = run_id


class WorkflowNotFoundError(PerdureError):
    """No workflow run exists with the given id."""


class UnknownWorkflowTypeError(PerdureError):
    """No workflow definition is registered under that name."""


class UnknownActivityTypeError(PerdureError):
    """No activity definition is registered under that name."""


class ActivityNotFoundError(PerdureError):
    """No current attempt of the activity matches what an :class:`AsyncActivityHandle`
    completes, fails or heartbeats: the attempt already ended (completed, failed, timed
    out, or was retried: a task token names one attempt), or its workflow run closed.
    Completing it again is refused: at most one outcome per attempt reaches the workflow.
    """


class AsyncActivityCancelledError(PerdureError):
    """Raised by ``AsyncActivityHandle.heartbeat``: the activity's cancellation was
    requested (its workflow cancelled it). Stop the work, then call
    ``report_cancellation()``."""


class UnknownHandlerError(PerdureError):
    """A signal or query name that the workflow does not define."""


class NotInWorkflowError(PerdureError):
    """A ``perdure.workflow`` function was called outside workflow code."""


class NotInActivityError(PerdureError):
    """A ``perdure.activity`` function was called outside an activity."""


class NondeterminismError(PerdureError):
    """Replaying a history produced commands other than the recorded ones.

    The workflow task is retried later (after a fix is deployed); the workflow
    never silently diverges from its history. For a replay mismatch, ``event_seq``
    is the recorded event (or the one after which the code produced more),
    ``recorded`` and ``produced`` describe both sides, ``location`` is the workflow
    code's file and line. A determinism guard's error names the call instead.
    """

    def __init__(
        self, message: str, *, event_seq: int | None = None, recorded: str = "",
        produced: str = "", location: str = "",
    ) -> None:
        super().__init__(message)
        self.event_seq = event_seq
        self.recorded = recorded
        self.produced = produced
        self.location = location


class QueryError(PerdureError):
    """A query could not be answered."""


class QueryRejectedError(QueryError):
    """The query handler raised an exception."""


class QueryTimeoutError(QueryError):
    """No worker answered the query in time."""


class WorkflowFailureError(PerdureError):
    """The workflow ended without a result (failed, cancelled, terminated, timed out).

    ``cause`` holds the reconstructed failure chain: an :class:`ApplicationError`,
    :class:`ActivityError`, :class:`CancelledFailure`, :class:`TerminatedFailure` or
    :class:`TimeoutFailure`, with ``__cause__`` set along the original chain.
    """

    def __init__(self, message: str, *, status: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause
        self.__cause__ = cause


class UpdateFailedError(PerdureError):
    """An update did not return a value: its handler raised, or the run closed first.

    ``cause`` (also ``__cause__``) is the reconstructed error from the workflow side.
    """

    def __init__(self, message: str, *, update_id: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.update_id = update_id
        self.cause = cause
        self.__cause__ = cause


class UpdateRejectedError(UpdateFailedError):
    """The update's validator (or the workflow: unknown name, closed run) refused it; it
    left no trace in the workflow's history."""


class FailureError(PerdureError):
    """An error that is recorded in history and reconstructed on the other side.

    ``type`` names the original exception type; ``stack`` holds its formatted
    traceback from the process where it was raised.
    """

    def __init__(
        self,
        message: str,
        *details: Any,
        type: str | None = None,
        non_retryable: bool = False,
        stack: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.type = type or self.__class__.__name__
        self.non_retryable = non_retryable
        self.stack = stack

    def __str__(self) -> str:
        return self.message


class ApplicationError(FailureError):
    """Raise from an activity or workflow to fail it with a typed, chosen error.

    ``non_retryable=True`` stops activity retries at once, whatever the retry policy.
    ``next_retry_delay`` sets when the next attempt runs, instead of the policy's
    back-off (a rate limit's ``Retry-After``); the policy's attempt and time limits hold.
    """

    def __init__(
        self,
        message: str,
        *details: Any,
        type: str | None = None,
        non_retryable: bool = False,
        next_retry_delay: timedelta | float | None = None,
        stack: str = "",
    ) -> None:
        super().__init__(message, *details, type=type, non_retryable=non_retryable, stack=stack)
        if isinstance(next_retry_delay, timedelta):
            next_retry_delay = next_retry_delay.total_seconds()
        self.next_retry_delay: float | None = next_retry_delay


class ActivityError(FailureError):
    """An activity failed after its retries; ``__cause__`` says why."""

    def __init__(
        self,
        message: str,
        *,
        activity_type: str,
        activity_id: str,
        attempt: int,
        stack: str = "",
    ) -> None:
        super().__init__(message, type="ActivityError", stack=stack)
        self.activity_type = activity_type
        self.activity_id = activity_id
        self.attempt = attempt


class ChildWorkflowError(FailureError):
    """A child workflow failed, timed out, was cancelled or terminated; ``__cause__`` says why.

    ``status`` is how the child's run closed: failed, timed_out, canceled or terminated.
    """

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str,
        run_id: str,
        workflow_type: str,
        status: str,
        stack: str = "",
    ) -> None:
        super().__init__(message, type="ChildWorkflowError", stack=stack)
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_type = workflow_type
        self.status = status


class TimeoutFailure(FailureError):
    """A timeout fired; ``timeout_type`` is one of start_to_close, schedule_to_close,
    schedule_to_start, heartbeat, execution."""

    def __init__(self, message: str, *, timeout_type: str, stack: str = "") -> None:
        super().__init__(message, type="TimeoutFailure", stack=stack)
        self.timeout_type = timeout_type


class CancelledFailure(FailureError):
    """The workflow or activity was cancelled."""


class TerminatedFailure(FailureError):
    """The workflow was terminated without running its code."""
