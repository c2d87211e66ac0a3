"""The client: how applications start and talk to workflows."""

from perdure.client._async_activity import AsyncActivityHandle
from perdure.client._client import Client
from perdure.client._handle import WorkflowHandle
from perdure.client._types import (
    IdConflictPolicy,
    IdReusePolicy,
    PendingActivity,
    PendingActivityState,
    StreamEvent,
    WorkflowDescription,
    WorkflowHistory,
    WorkflowPage,
    WorkflowStatus,
)
from perdure.client._update import (
    WithStartWorkflowOperation,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)

WorkflowExecutionStatus = WorkflowStatus
"""Temporal's name for :class:`WorkflowStatus`."""

__all__ = [
    "AsyncActivityHandle",
    "Client",
    "IdConflictPolicy",
    "IdReusePolicy",
    "PendingActivity",
    "PendingActivityState",
    "StreamEvent",
    "WithStartWorkflowOperation",
    "WorkflowDescription",
    "WorkflowExecutionStatus",
    "WorkflowHandle",
    "WorkflowHistory",
    "WorkflowPage",
    "WorkflowStatus",
    "WorkflowUpdateHandle",
    "WorkflowUpdateStage",
]
