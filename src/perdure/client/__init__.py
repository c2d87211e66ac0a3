"""The client: how applications start and talk to workflows."""

from perdure.client._client import (
    Client,
    IdConflictPolicy,
    IdReusePolicy,
    StreamEvent,
    WorkflowDescription,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowPage,
    WorkflowStatus,
)

__all__ = [
    "Client",
    "IdConflictPolicy",
    "IdReusePolicy",
    "StreamEvent",
    "WorkflowDescription",
    "WorkflowHandle",
    "WorkflowHistory",
    "WorkflowPage",
    "WorkflowStatus",
]
