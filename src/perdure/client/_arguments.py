"""What the client's calls take, checked before anything is read or written.

Every check raises :class:`InvalidArgumentError` (or a :class:`PayloadError`) that names
the argument; a call that raised changed nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from perdure._arguments import check_enum, check_whole_number
from perdure._attributes import check_search_attributes
from perdure._errors import InvalidArgumentError
from perdure._identifiers import check_optional_name, shown
from perdure.client._types import WorkflowStatus, decode_page_token, epoch

__all__ = ["MAX_PAGE_SIZE", "check_args", "list_filters"]

MAX_PAGE_SIZE = 2**31 - 2
"""The largest ``limit`` of ``list_workflows`` (one more row is read to see if a next
page exists)."""


def check_args(value: Any, what: str) -> tuple[Any, ...]:
    """Positional arguments given as one sequence (``start_signal_args``): a tuple or
    list, not a string or a single value."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidArgumentError(
            f"{what} must be a tuple or list of arguments, not {type(value).__name__} "
            f"({shown(value)})")
    return tuple(value)


def list_filters(
    *, status: WorkflowStatus | str | None, workflow_type: str | None,
    started_after: datetime | float | None, started_before: datetime | float | None,
    closed_after: datetime | float | None, closed_before: datetime | float | None,
    parent_workflow_id: str | None, parent_run_id: str | None,
    search_attributes: dict[str, Any] | None, limit: int, page_token: str | None,
) -> dict[str, Any]:
    """``list_workflows``' filters as the store's ``list_runs`` takes them (its ``limit``
    one more than asked, to see whether another page follows)."""
    check_whole_number(limit, "limit", minimum=1, maximum=MAX_PAGE_SIZE)
    if parent_run_id is not None and parent_workflow_id is None:
        raise InvalidArgumentError("parent_run_id needs parent_workflow_id as well")
    if status is not None:
        status = check_enum(WorkflowStatus, status, "status")
    parent_id = check_optional_name(parent_workflow_id, "parent_workflow_id")
    return {
        "status": str(status) if status is not None else None,
        "workflow_type": check_optional_name(workflow_type, "workflow_type"),
        "limit": limit + 1,
        "started": (epoch(started_after, "started_after"),
                    epoch(started_before, "started_before")),
        "closed": (epoch(closed_after, "closed_after"), epoch(closed_before, "closed_before")),
        "before": decode_page_token(page_token) if page_token is not None else None,
        "parent": (parent_id, check_optional_name(parent_run_id, "parent_run_id"))
        if parent_id is not None else None,
        "search_attributes": check_search_attributes(search_attributes),
    }
