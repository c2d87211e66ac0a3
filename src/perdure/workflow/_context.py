"""Which workflow instance is running right now (set only during an activation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from perdure._errors import NotInWorkflowError

if TYPE_CHECKING:
    from perdure.workflow._instance import WorkflowInstance

_current: WorkflowInstance | None = None


def set_current(instance: WorkflowInstance | None) -> WorkflowInstance | None:
    """Make ``instance`` current; return the previous one to restore later."""
    global _current
    previous, _current = _current, instance
    return previous


def current() -> WorkflowInstance:
    """The running workflow instance, or :class:`NotInWorkflowError`."""
    if _current is None:
        raise NotInWorkflowError(
            "this perdure.workflow function can only be called from workflow code "
            "(a @workflow.run method, a signal or query handler, or a task they create)"
        )
    return _current


def maybe_current() -> WorkflowInstance | None:
    """The running workflow instance, or ``None`` outside workflow code."""
    return _current
