"""Perdure: durable execution for AI agents, in plain async Python.

Layout (dependencies point down; see DESIGN.md):

- ``perdure.workflow``  the deterministic runtime workflow code runs on (pure, no I/O)
- ``perdure.activity``  the API activity code uses (info, heartbeats, cancellation)
- ``perdure.engine``    pure state machines: commands to store changes
- ``perdure.store``     the only place that speaks SQL (SQLite embedded)
- ``perdure.worker``    processes that run workflow tasks and activities
- ``perdure.client``    start, signal, query, cancel, terminate, describe
- ``perdure.testing``   a test environment with time skipping
"""

from perdure import activity, exceptions, workflow
from perdure._converter import PayloadConverter
from perdure._errors import (
    ActivityError,
    ActivityNotFoundError,
    ApplicationError,
    AsyncActivityCancelledError,
    CancelledFailure,
    ChildWorkflowError,
    ConfigurationError,
    DatabaseUnavailableError,
    FailureError,
    InvalidArgumentError,
    InvalidDatabaseURLError,
    NondeterminismError,
    NotInActivityError,
    NotInWorkflowError,
    PayloadDecodingError,
    PayloadEncodingError,
    PayloadError,
    PayloadTooLargeError,
    PerdureError,
    QueryError,
    QueryRejectedError,
    QueryTimeoutError,
    SchemaVersionError,
    TerminatedFailure,
    TimeoutFailure,
    UnknownActivityTypeError,
    UnknownHandlerError,
    UnknownWorkflowTypeError,
    UpdateFailedError,
    UpdateRejectedError,
    WorkflowAlreadyStartedError,
    WorkflowFailureError,
    WorkflowNotFoundError,
)
from perdure._retry import RetryPolicy
from perdure.client import (
    AsyncActivityHandle,
    Client,
    IdConflictPolicy,
    IdReusePolicy,
    StreamEvent,
    WithStartWorkflowOperation,
    WorkflowDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowPage,
    WorkflowStatus,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)
from perdure.worker import Worker, WorkerOptions

__version__ = "0.1.0"

__all__ = [
    "ActivityError",
    "ActivityNotFoundError",
    "ApplicationError",
    "AsyncActivityCancelledError",
    "AsyncActivityHandle",
    "CancelledFailure",
    "ChildWorkflowError",
    "Client",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "FailureError",
    "IdConflictPolicy",
    "IdReusePolicy",
    "InvalidArgumentError",
    "InvalidDatabaseURLError",
    "NondeterminismError",
    "NotInActivityError",
    "NotInWorkflowError",
    "PayloadConverter",
    "PayloadDecodingError",
    "PayloadEncodingError",
    "PayloadError",
    "PayloadTooLargeError",
    "PerdureError",
    "QueryError",
    "QueryRejectedError",
    "QueryTimeoutError",
    "RetryPolicy",
    "SchemaVersionError",
    "StreamEvent",
    "TerminatedFailure",
    "TimeoutFailure",
    "UnknownActivityTypeError",
    "UnknownHandlerError",
    "UnknownWorkflowTypeError",
    "UpdateFailedError",
    "UpdateRejectedError",
    "WithStartWorkflowOperation",
    "Worker",
    "WorkerOptions",
    "WorkflowAlreadyStartedError",
    "WorkflowDescription",
    "WorkflowExecutionStatus",
    "WorkflowFailureError",
    "WorkflowHandle",
    "WorkflowHistory",
    "WorkflowNotFoundError",
    "WorkflowPage",
    "WorkflowStatus",
    "WorkflowUpdateHandle",
    "WorkflowUpdateStage",
    "activity",
    "exceptions",
    "workflow",
]
