"""Completing an activity from outside its worker (Temporal's asynchronous activity
completion): an activity that calls ``activity.raise_complete_async()`` hands its task
token to another system (a CI job, a payment webhook, a person with a tool), which later
completes, fails or heartbeats it through an :class:`AsyncActivityHandle`, from any
process that can reach the database.

Each outcome commits as a worker's report of an attempt's end does, in one transaction
(a retry, or the event in the workflow's inbox and a workflow task), and only for the
attempt that is current: a late or second outcome raises :class:`ActivityNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from perdure._arguments import check_whole_number
from perdure._errors import (
    ActivityNotFoundError,
    AsyncActivityCancelledError,
    InvalidArgumentError,
)
from perdure._failure import failure_from_exception
from perdure._identifiers import check_name, check_optional_name, shown
from perdure._task_token import decode_task_token, encode_task_token
from perdure.engine import activity_completed_outcome, activity_failed_outcome
from perdure.history import Failure
from perdure.store._records import ActivityDecision

if TYPE_CHECKING:
    from perdure.client._client import Client

__all__ = ["AsyncActivityHandle", "async_activity_handle"]

_MAX_SEQ = 2**31 - 1
"""Activity ids and attempt numbers are 32-bit columns on PostgreSQL."""


class AsyncActivityHandle:
    """An activity attempt to complete, fail or heartbeat from outside its worker.

    Get one with ``Client.get_async_activity_handle(task_token=...)`` (one attempt), or
    by ``workflow_id=``, ``run_id=`` (default: the latest run) and ``activity_id=``
    (whichever attempt is current).
    """

    def __init__(self, client: Client, *, workflow_id: str, run_id: str | None, seq: int,
                 attempt: int | None) -> None:
        self._client = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.activity_id = str(seq)
        self._seq = seq
        self.attempt = attempt
        """The attempt the handle names (None: whichever is current)."""

    @property
    def task_token(self) -> bytes | None:
        """The token of the attempt this handle names (None when made by id alone)."""
        if self.run_id is None or self.attempt is None:
            return None
        return encode_task_token(self.workflow_id, self.run_id, self._seq, self.attempt)

    async def heartbeat(self, *details: Any) -> None:
        """Record progress: pushes the activity's heartbeat timeout back, and ``details``
        go to its next attempt (``activity.heartbeat_details()``). Raises
        :class:`AsyncActivityCancelledError` once its cancellation was requested (the
        heartbeat is recorded all the same)."""
        converter = self._client.converter
        data = converter.encode(list(details), what="heartbeat details") if details else None
        state = await self._client.store.heartbeat_async_activity(
            self.workflow_id, self.run_id, self._seq, self.attempt, data)
        if state is None:
            raise self._not_found("heartbeat")
        if state == "cancelled":
            raise AsyncActivityCancelledError(
                f"activity {self.activity_id} of workflow {self.workflow_id!r} was "
                "cancelled (its workflow cancelled it); stop its work and call "
                "report_cancellation()"
            )

    async def complete(self, result: Any = None) -> None:
        """Complete the activity with ``result`` (decoded in the workflow by the
        activity's return annotation)."""
        data = self._client.converter.encode(
            result, what=f"result of activity {self.activity_id} of {self.workflow_id!r}")
        seq = self._seq
        await self._resolve("complete",
                            lambda attempt: activity_completed_outcome(seq, attempt, data))

    async def fail(self, error: BaseException) -> None:
        """Fail the attempt with ``error``; the activity's retry policy decides, as for any
        failure, whether another attempt runs (``ApplicationError(non_retryable=True)``
        stops it)."""
        if not isinstance(error, BaseException):
            raise InvalidArgumentError(f"fail() takes an exception, not {shown(error)}")
        failure = failure_from_exception(error)
        await self._resolve_failure("fail", failure)

    async def report_cancellation(self, *details: Any) -> None:
        """Tell that the activity stopped because it was cancelled. After a requested
        cancellation this only ends the attempt (its workflow moved on already); without
        one, the activity ends as cancelled, with no retry."""
        failure = Failure(type="CancelledFailure", message="the activity reported its "
                          "cancellation", kind="cancelled", non_retryable=True)
        if details:
            raw = self._client.converter.encode(list(details), what="cancellation details")
            failure = msgspec.structs.replace(failure, details=msgspec.Raw(raw))
        await self._resolve_failure("report_cancellation", failure)

    async def _resolve_failure(self, verb: str, failure: Failure) -> None:
        store, seq = self._client.store, self._seq
        await self._resolve(verb, lambda _attempt: activity_failed_outcome(
            seq, failure, store.clock.now()))

    async def _resolve(self, verb: str, decide: Callable[[int], ActivityDecision]) -> None:
        if not await self._client.store.resolve_async_activity(
                self.workflow_id, self.run_id, self._seq, self.attempt, decide):
            raise self._not_found(verb)

    def _not_found(self, verb: str) -> ActivityNotFoundError:
        attempt = f", attempt {self.attempt}" if self.attempt is not None else ""
        run = f"run {self.run_id}" if self.run_id is not None else "latest run"
        return ActivityNotFoundError(
            f"cannot {verb} activity {self.activity_id} of workflow {self.workflow_id!r} "
            f"({run}{attempt}): no such attempt is running. It has completed, failed or "
            "timed out already (a task token names one attempt: after a retry, use the new "
            "attempt's token), or its workflow run has closed"
        )


def async_activity_handle(
    client: Client, *, task_token: bytes | None, workflow_id: str | None,
    run_id: str | None, activity_id: str | None,
) -> AsyncActivityHandle:
    """The handle ``Client.get_async_activity_handle`` returns (arguments checked)."""
    if task_token is not None:
        if workflow_id is not None or run_id is not None or activity_id is not None:
            raise InvalidArgumentError(
                "give either task_token, or workflow_id and activity_id (and optionally "
                "run_id), not both")
        if not isinstance(task_token, bytes | bytearray | memoryview | str):
            raise InvalidArgumentError(
                f"task_token must be bytes (activity.info().task_token), not "
                f"{type(task_token).__name__}")
        token_workflow, token_run, seq, attempt = decode_task_token(task_token)
        try:
            check_name(token_workflow, "the task token's workflow id")
            check_name(token_run, "the task token's run id")
            check_whole_number(seq, "the task token's activity id", minimum=1,
                               maximum=_MAX_SEQ)
            check_whole_number(attempt, "the task token's attempt", minimum=1,
                               maximum=_MAX_SEQ)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"the task token is not one Perdure made ({exc}); pass the bytes of "
                "activity.info().task_token unchanged") from None
        return AsyncActivityHandle(client, workflow_id=token_workflow, run_id=token_run,
                                   seq=seq, attempt=attempt)
    if workflow_id is None or activity_id is None:
        raise InvalidArgumentError(
            "get_async_activity_handle needs task_token, or workflow_id and activity_id")
    check_name(workflow_id, "workflow_id")
    check_optional_name(run_id, "run_id")
    if not isinstance(activity_id, str) or not activity_id.isascii() \
            or not activity_id.isdigit() or not 1 <= int(activity_id) <= _MAX_SEQ:
        raise InvalidArgumentError(
            f"activity_id {shown(activity_id)} is not an activity id of Perdure's (a number, "
            "as activity.info().activity_id and ActivityHandle.activity_id give)")
    return AsyncActivityHandle(client, workflow_id=workflow_id, run_id=run_id,
                               seq=int(activity_id), attempt=None)
