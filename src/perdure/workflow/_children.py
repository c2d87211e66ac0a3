"""Child workflows and signals to other workflows, from inside workflow code."""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Callable, Generator
from datetime import timedelta
from typing import Any, Generic, TypeVar

from perdure._arguments import check_enum, check_retry_policy, check_seconds
from perdure._cron import CronSchedule
from perdure._errors import InvalidArgumentError, UnknownHandlerError, UnknownWorkflowTypeError
from perdure._identifiers import check_name, check_optional_name, shown
from perdure._retry import RetryPolicy
from perdure.workflow import _context
from perdure.workflow._definition import get_workflow_definition, handler_name
from perdure.workflow._instance import PendingChild, WorkflowInstance

__all__ = [
    "ChildWorkflowCancellationType",
    "ChildWorkflowHandle",
    "ExternalWorkflowHandle",
    "ParentClosePolicy",
    "execute_child_workflow",
    "get_external_workflow_handle",
    "start_child_workflow",
]

T = TypeVar("T")


class ParentClosePolicy(enum.StrEnum):
    """What happens to a running child when its parent's run closes (for any reason)."""

    TERMINATE = "terminate"
    """End the child at once, without running its code (the default)."""
    REQUEST_CANCEL = "request_cancel"
    """Deliver a cancellation to the child, which may clean up and end as it sees fit."""
    ABANDON = "abandon"
    """Leave the child running on its own."""


class ChildWorkflowCancellationType(enum.StrEnum):
    """What cancelling the parent's wait on a child does to the child."""

    WAIT_CANCELLATION_COMPLETED = "wait_cancellation_completed"
    """Ask the child to cancel, and wait until it has closed before raising
    ``CancelledError`` (the default: the child's clean-up runs before the parent's)."""
    TRY_CANCEL = "try_cancel"
    """Ask the child to cancel, and raise ``CancelledError`` at once."""
    ABANDON = "abandon"
    """Do not tell the child; raise ``CancelledError`` at once."""


def _seconds(value: timedelta | float | None, what: str) -> float | None:
    return check_seconds(value, what)


def _signal_name(signal: Callable[..., Any] | str) -> str:
    if isinstance(signal, str):
        return check_name(signal, "signal name")
    name = handler_name(signal, "signal")
    if name is None:
        raise UnknownHandlerError(
            f"{shown(getattr(signal, '__qualname__', signal))} is not a signal handler; pass a "
            "@workflow.signal method or the signal's name"
        )
    return name


class ChildWorkflowHandle(Generic[T]):
    """A started child workflow: await it (or :meth:`result`) for its result.

    The child has its own history, task queue and timeouts. Its failure,
    timeout, cancellation or termination raises :class:`ChildWorkflowError` in
    the parent, with the child's own error as ``__cause__``.
    """

    def __init__(self, instance: WorkflowInstance, child: PendingChild,
                 cancellation_type: ChildWorkflowCancellationType) -> None:
        self._instance = instance
        self._child = child
        self._cancellation_type = cancellation_type

    @property
    def id(self) -> str:
        """The child's workflow id."""
        return self._child.workflow_id

    @property
    def run_id(self) -> str:
        """The run id of the child's first run."""
        return self._child.run_id

    async def result(self) -> T:
        """Wait for the child to close; its result, or :class:`ChildWorkflowError`."""
        value: T = await _wait(self._instance, self._child, self._child.result,
                               self._cancellation_type)
        return value

    def __await__(self) -> Generator[Any, None, T]:
        return self.result().__await__()

    def done(self) -> bool:
        """Whether the child has closed (as far as this run has seen)."""
        return self._child.result.done()

    def cancel(self) -> None:
        """Ask the child to cancel; awaiting the handle then raises
        :class:`ChildWorkflowError` (status ``canceled``) unless the child ends otherwise."""
        self._instance.cancel_child(self._child)

    async def signal(self, signal: Callable[..., Any] | str, *args: Any) -> None:
        """Signal the child; returns once delivered (:class:`WorkflowNotFoundError` if it
        has closed)."""
        name = _signal_name(signal)
        await self._instance.signal_external(self._child.workflow_id, self._child.run_id or None,
                                             name, args)


class ExternalWorkflowHandle:
    """Another workflow, addressed by id, that this workflow can signal or cancel."""

    def __init__(self, workflow_id: str, run_id: str | None) -> None:
        self.id = workflow_id
        self.run_id = run_id

    async def signal(self, signal: Callable[..., Any] | str, *args: Any) -> None:
        """Deliver a signal; returns once delivered (:class:`WorkflowNotFoundError` if the
        workflow is not running). Durable: recorded in this workflow's history."""
        await _context.current().signal_external(self.id, self.run_id, _signal_name(signal), args)

    async def cancel(self, reason: str = "") -> None:
        """Request its cancellation (it sees ``CancelledError`` at its awaits); returns once
        delivered (:class:`WorkflowNotFoundError` if it is not running). Durable: recorded
        in this workflow's history."""
        await _context.current().cancel_external(self.id, self.run_id, reason)


def get_external_workflow_handle(workflow_id: str, *, run_id: str | None = None
                                 ) -> ExternalWorkflowHandle:
    """A handle to signal another workflow (its latest run, unless ``run_id`` is given)."""
    _context.current()
    return ExternalWorkflowHandle(check_name(workflow_id, "external workflow id"),
                                  check_optional_name(run_id, "external run id"))


async def _wait(instance: WorkflowInstance, child: PendingChild, future: asyncio.Future[Any],
                cancellation_type: ChildWorkflowCancellationType) -> Any:
    try:
        # shielded: cancelling this wait must not cancel the future the events resolve
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if cancellation_type != ChildWorkflowCancellationType.ABANDON:
            instance.cancel_child(child)
        if cancellation_type == ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED:
            try:
                await asyncio.shield(child.result)
            except (Exception, asyncio.CancelledError):
                # the child's own outcome, or a second cancellation: either way, done
                # (not GeneratorExit: a dropped instance's coroutine must close quietly)
                pass
        raise


def _resolve(workflow: Any, args: tuple[Any, ...], result_type: Any) -> tuple[str, Any]:
    if isinstance(workflow, str):
        return check_name(workflow, "child workflow type"), result_type
    definition = get_workflow_definition(workflow)
    if definition is None:
        raise UnknownWorkflowTypeError(
            f"{shown(getattr(workflow, '__qualname__', workflow))} is not a workflow: pass a "
            "@workflow.defn class, its @workflow.run method, or a workflow type name"
        )
    try:
        inspect.signature(definition.run_method).bind(None, *args)
    except TypeError as exc:
        raise InvalidArgumentError(
            f"arguments do not fit child workflow {definition.name!r} "
            f"({definition.run_method.__qualname__}"
            f"{inspect.signature(definition.run_method)}): {exc}"
        ) from None
    return definition.name, result_type if result_type is not None else definition.run_return_hint


async def start_child_workflow(
    workflow: Callable[..., Any] | type | str,
    *args: Any,
    id: str | None = None,
    task_queue: str | None = None,
    execution_timeout: timedelta | float | None = None,
    parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE,
    cancellation_type: ChildWorkflowCancellationType = (
        ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED
    ),
    result_type: Any = None,
    memo: dict[str, Any] | None = None,
    search_attributes: dict[str, Any] | None = None,
    run_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    cron_schedule: str | None = None,
) -> ChildWorkflowHandle[Any]:
    """Start a child workflow and return its handle once it has started.

    The child gets its own history, in the same transaction as this command.
    ``id`` defaults to one derived from this run; if ``id`` already has a running
    run, raises :class:`WorkflowAlreadyStartedError`. ``task_queue`` defaults to
    this workflow's. ``parent_close_policy`` says what happens to the child if this
    run closes first; ``cancellation_type`` what cancelling the wait on it does.
    ``memo`` and ``search_attributes`` are the child's own (see ``Client.start_workflow``).
    ``execution_timeout`` bounds the child with all its retries and continuations;
    ``run_timeout`` each of its runs. With ``retry_policy``, a child run that fails (or
    passes its run timeout) is followed by another attempt, and the parent hears only
    of the last. With ``cron_schedule`` the child is a cron chain (see
    ``Client.start_workflow``): the parent hears of it only when the chain ends
    (terminated, cancelled, or past its execution timeout), as in Temporal.
    """
    from perdure._attributes import check_memo, check_search_attributes

    instance = _context.current()
    # everything is checked before the command exists: a child the store could not
    # insert would fail this workflow task on every retry
    workflow_type, hint = _resolve(workflow, args, result_type)
    if cron_schedule is not None:
        CronSchedule(cron_schedule)  # InvalidArgumentError here, not when the task commits
    check_optional_name(id, "child workflow id")
    check_optional_name(task_queue, "child workflow task_queue")
    policy = check_enum(ParentClosePolicy, parent_close_policy, "parent_close_policy")
    cancel_type = check_enum(ChildWorkflowCancellationType, cancellation_type,
                             "cancellation_type")
    cap = instance.converter.max_payload_bytes
    child = instance.start_child(
        workflow_type, args, workflow_id=id, task_queue=task_queue,
        execution_timeout=_seconds(execution_timeout, "execution_timeout"),
        parent_close_policy=str(policy), result_hint=hint,
        memo=check_memo(memo, converter=instance.converter),
        search_attributes=check_search_attributes(search_attributes, max_bytes=cap),
        run_timeout=_seconds(run_timeout, "run_timeout"),
        retry_policy=check_retry_policy(retry_policy).to_dict()
        if retry_policy is not None else None,
        cron_schedule=cron_schedule,
    )
    await _wait(instance, child, child.started, cancel_type)
    return ChildWorkflowHandle(instance, child, cancel_type)


async def execute_child_workflow(
    workflow: Callable[..., Any] | type | str,
    *args: Any,
    id: str | None = None,
    task_queue: str | None = None,
    execution_timeout: timedelta | float | None = None,
    parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE,
    cancellation_type: ChildWorkflowCancellationType = (
        ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED
    ),
    result_type: Any = None,
    memo: dict[str, Any] | None = None,
    search_attributes: dict[str, Any] | None = None,
    run_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    cron_schedule: str | None = None,
) -> Any:
    """Run a child workflow to its end and return its result (see :func:`start_child_workflow`).

    A child that fails, times out, is cancelled or terminated raises
    :class:`ChildWorkflowError`; cancelling this call cancels the child.
    """
    handle = await start_child_workflow(
        workflow, *args, id=id, task_queue=task_queue, execution_timeout=execution_timeout,
        parent_close_policy=parent_close_policy, cancellation_type=cancellation_type,
        result_type=result_type, memo=memo, search_attributes=search_attributes,
        run_timeout=run_timeout, retry_policy=retry_policy, cron_schedule=cron_schedule,
    )
    return await handle.result()
