"""The client: how applications start and talk to workflows."""

from perdure.client._client import (
    Client,
    IdReusePolicy,
    WorkflowDescription,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowStatus,
)

__all__ = [
    "Client",
    "IdReusePolicy",
    "WorkflowDescription",
    "WorkflowHandle",
    "WorkflowHistory",
    "WorkflowStatus",
]
