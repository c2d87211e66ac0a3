"""Failure types under the names Temporal users know (``temporalio.exceptions``).

Each name is Perdure's own class (``CancelledError`` *is* :class:`CancelledFailure`), so
``except perdure.exceptions.CancelledError`` and ``except perdure.CancelledFailure`` catch
the same errors. What crosses the durable boundary (recorded in history, rebuilt on the
other side) is a :class:`FailureError`; the tree of every Perdure error is in
``perdure._errors``' docstring and ``docs/errors.md``.
"""

from __future__ import annotations

import asyncio

from perdure._errors import (
    ActivityError,
    ApplicationError,
    CancelledFailure,
    ChildWorkflowError,
    FailureError,
    PerdureError,
    TerminatedFailure,
    TimeoutFailure,
    WorkflowAlreadyStartedError,
)

__all__ = [
    "ActivityError",
    "ApplicationError",
    "CancelledError",
    "ChildWorkflowError",
    "FailureError",
    "PerdureError",
    "TerminatedError",
    "TimeoutError",
    "WorkflowAlreadyStartedError",
    "is_cancelled_exception",
]

CancelledError = CancelledFailure
"""Temporal's ``CancelledError``: a cancellation, as recorded (the cause of a cancelled
workflow's ``WorkflowFailureError``, of an activity's ``ActivityError``; raised by
``activity.heartbeat()`` in a cancelled thread-pool activity)."""

TerminatedError = TerminatedFailure
"""Temporal's ``TerminatedError``: the workflow was terminated."""

TimeoutError = TimeoutFailure  # Temporal's name; it shadows the builtin only in here
"""Temporal's ``TimeoutError``: a workflow or activity timeout fired (``timeout_type``)."""


def is_cancelled_exception(exception: BaseException) -> bool:
    """Whether ``exception`` means "cancelled": ``asyncio.CancelledError``, a
    :class:`CancelledFailure`, or an activity or child workflow error caused by one
    (as Temporal's helper of the same name)."""
    if isinstance(exception, asyncio.CancelledError | CancelledFailure):
        return True
    return isinstance(exception, ActivityError | ChildWorkflowError) and isinstance(
        exception.__cause__, CancelledFailure)
