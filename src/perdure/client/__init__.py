"""The client: how applications start and talk to workflows."""

from perdure.client._client import (
    Client,
    IdConflictPolicy,
    IdReusePolicy,
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
    "WorkflowDescription",
    "WorkflowHandle",
    "WorkflowHistory",
    "WorkflowPage",
    "WorkflowStatus",
]
