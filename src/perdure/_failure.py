"""Exceptions to recorded failures and back, keeping type, message, stack and cause."""

from __future__ import annotations

import asyncio
import traceback

import msgspec

from perdure._converter import PayloadConverter
from perdure._errors import (
    ActivityError,
    ApplicationError,
    CancelledFailure,
    ChildWorkflowError,
    FailureError,
    PayloadError,
    TerminatedFailure,
    TimeoutFailure,
)
from perdure.history import Failure

__all__ = ["exception_from_failure", "failure_from_exception"]

_MAX_DEPTH = 20
_NO_DETAILS = Failure(type="", message="").details
_details = PayloadConverter(max_payload_bytes=2**62)
"""Failure details are encoded as payloads are (no NaN), but never refused for size."""


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ in ("builtins", "asyncio.exceptions"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _utf8(text: str) -> str:
    """``text``, with lone surrogates escaped: a failure's message must encode."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def failure_from_exception(exc: BaseException, *, depth: int = 0) -> Failure:
    """Record ``exc`` (and its cause chain) as a :class:`Failure`; text that is not
    valid UTF-8 (a lone surrogate in a message) is escaped, so that it always encodes."""
    failure = _record(exc, depth)
    fixed = {name: _utf8(getattr(failure, name)) for name in ("type", "message", "stack")}
    if any(fixed[name] is not getattr(failure, name) for name in fixed):
        failure = msgspec.structs.replace(failure, **fixed)
    return failure


def _record(exc: BaseException, depth: int) -> Failure:
    stack = exc.stack if isinstance(exc, FailureError) and exc.stack else ""
    if not stack and exc.__traceback__ is not None:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
    cause_exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    cause = (
        failure_from_exception(cause_exc, depth=depth + 1)
        if cause_exc is not None and depth < _MAX_DEPTH
        else None
    )
    if isinstance(exc, ActivityError):
        return Failure(
            type="ActivityError",
            message=exc.message,
            stack=stack,
            kind="activity",
            cause=cause,
            attributes={
                "activity_type": exc.activity_type,
                "activity_id": exc.activity_id,
                "attempt": exc.attempt,
            },
        )
    if isinstance(exc, ChildWorkflowError):
        return Failure(
            type="ChildWorkflowError",
            message=exc.message,
            stack=stack,
            kind="child_workflow",
            cause=cause,
            attributes={
                "workflow_id": exc.workflow_id,
                "run_id": exc.run_id,
                "workflow_type": exc.workflow_type,
                "status": exc.status,
            },
        )
    if isinstance(exc, TimeoutFailure):
        return Failure(
            type="TimeoutFailure",
            message=exc.message,
            stack=stack,
            kind="timeout",
            cause=cause,
            attributes={"timeout_type": exc.timeout_type},
        )
    if isinstance(exc, CancelledFailure | asyncio.CancelledError):
        return Failure(type="CancelledFailure", message=str(exc) or "cancelled", stack=stack,
                       kind="cancelled", cause=cause)
    if isinstance(exc, TerminatedFailure):
        return Failure(type="TerminatedFailure", message=exc.message, kind="terminated")
    if isinstance(exc, FailureError):
        # the field's own default object: omit_defaults drops it by identity, while
        # another empty Raw would be encoded as `"details":` (invalid JSON)
        details = _NO_DETAILS
        if exc.details:
            try:
                details = msgspec.Raw(_details.encode(list(exc.details),
                                                      what="the failure's details"))
            except PayloadError:  # not JSON (or a NaN in it): kept as their reprs instead
                details = msgspec.Raw(msgspec.json.encode(
                    [_utf8(repr(d)) for d in exc.details]))
        delay = getattr(exc, "next_retry_delay", None)
        return Failure(
            type=exc.type,
            message=exc.message,
            stack=stack,
            non_retryable=exc.non_retryable,
            details=details,
            cause=cause,
            attributes={"next_retry_delay": delay} if delay is not None else None,
        )
    return Failure(type=_type_name(exc), message=str(exc), stack=stack, cause=cause)


def exception_from_failure(failure: Failure) -> FailureError:
    """Rebuild a typed exception (with ``__cause__`` chain) from a recorded failure."""
    attrs = failure.attributes or {}
    exc: FailureError
    if failure.kind == "activity":
        exc = ActivityError(
            failure.message,
            activity_type=str(attrs.get("activity_type", "")),
            activity_id=str(attrs.get("activity_id", "")),
            attempt=int(attrs.get("attempt", 0)),
            stack=failure.stack,
        )
    elif failure.kind == "child_workflow":
        exc = ChildWorkflowError(
            failure.message,
            workflow_id=str(attrs.get("workflow_id", "")),
            run_id=str(attrs.get("run_id", "")),
            workflow_type=str(attrs.get("workflow_type", "")),
            status=str(attrs.get("status", "")),
            stack=failure.stack,
        )
    elif failure.kind == "timeout":
        exc = TimeoutFailure(
            failure.message, timeout_type=str(attrs.get("timeout_type", "")), stack=failure.stack
        )
    elif failure.kind == "cancelled":
        exc = CancelledFailure(failure.message, stack=failure.stack)
    elif failure.kind == "terminated":
        exc = TerminatedFailure(failure.message)
    else:
        details: tuple[object, ...] = ()
        if failure.details:
            details = tuple(msgspec.json.decode(failure.details))
        delay = attrs.get("next_retry_delay")
        exc = ApplicationError(
            failure.message,
            *details,
            type=failure.type,
            non_retryable=failure.non_retryable,
            next_retry_delay=float(delay) if delay is not None else None,
            stack=failure.stack,
        )
    if failure.cause is not None:
        exc.__cause__ = exception_from_failure(failure.cause)
    return exc
