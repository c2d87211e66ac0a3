"""The client: how applications start and talk to workflows."""

from perdure.client._client import (
    Client,
    IdConflictPolicy,
    IdReusePolicy,
    WorkflowDescription,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowStatus,
)

__all__ = [
    "Client",
    "IdConflictPolicy",
    "IdReusePolicy",
    "WorkflowDescription",
    "WorkflowHandle",
    "WorkflowHistory",
    "WorkflowStatus",
]
