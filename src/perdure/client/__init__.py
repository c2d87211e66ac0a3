"""The client: how applications start and talk to workflows."""

from perdure.client._async_activity import AsyncActivityHandle
from perdure.client._client import Client
from perdure.client._handle import WorkflowHandle
from perdure.client._types import (
    IdConflictPolicy,
    IdReusePolicy,
    StreamEvent,
    WorkflowDescription,
    WorkflowHistory,
    WorkflowPage,
    WorkflowStatus,
)

__all__ = [
    "AsyncActivityHandle",
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
