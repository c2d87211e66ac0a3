"""The functions workflow code calls: activities, timers, time, randomness, info."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping
from datetime import datetime, timedelta
from typing import Any, Generic, NoReturn, TypeVar

import msgspec

from perdure._arguments import check_retry_policy, check_seconds
from perdure._failure import exception_from_failure
from perdure._identifiers import check_name, check_optional_name, shown
from perdure._retry import RetryPolicy
from perdure.activity._definition import get_activity_definition
from perdure.history import MemoUpserted, SearchAttributesUpserted, WorkflowContinuedAsNew
from perdure.workflow import _context
from perdure.workflow._instance import ContinueAsNew, WorkflowInfo, WorkflowInstance

__all__ = [
    "ActivityHandle",
    "all_handlers_finished",
    "continue_as_new",
    "deprecate_patch",
    "execute_activity",
    "execute_activity_method",
    "execute_local_activity",
    "get_last_completion_result",
    "get_last_failure",
    "has_last_completion_result",
    "info",
    "is_replaying",
    "logger",
    "now",
    "patched",
    "publish",
    "random",
    "set_signal_handler",
    "sleep",
    "start_activity",
    "start_activity_method",
    "start_local_activity",
    "upsert_memo",
    "upsert_search_attributes",
    "uuid4",
    "wait",
    "wait_condition",
]

T = TypeVar("T")
_DEFAULT_RETRY = RetryPolicy().to_dict()


def _seconds(value: timedelta | float | None, what: str = "timeout") -> float | None:
    return check_seconds(value, what)


def _wait_seconds(value: timedelta | float | None, what: str) -> float | None:
    """A wait's duration, as asyncio takes it (a negative one waits no time); NaN,
    infinity and what is no duration are refused: a timer recorded with them could not
    be read back."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0 \
            and math.isfinite(value):
        return 0.0
    return check_seconds(value, what, zero=True)


class ActivityHandle(Generic[T]):
    """A scheduled activity: await it for the result, or ``cancel()`` it.

    Cancelling delivers ``asyncio.CancelledError`` to whoever awaits the handle
    at once, and asks the worker running the activity to stop.
    """

    def __init__(self, task: asyncio.Task[T], seq: int) -> None:
        self._task = task
        self.activity_id = str(seq)

    def cancel(self) -> bool:
        """Request cancellation; returns False if the activity already finished."""
        return self._task.cancel()

    def done(self) -> bool:
        """Whether the activity has a result, failure or cancellation."""
        return self._task.done()

    def result(self) -> T:
        """The result of a finished activity (as ``asyncio.Future.result``)."""
        return self._task.result()

    def __await__(self) -> Generator[Any, None, T]:
        return self._task.__await__()


async def _await_activity(seq: int, future: asyncio.Future[T]) -> T:
    try:
        return await future
    except asyncio.CancelledError:
        _context.current().cancel_activity(seq)
        raise


def _schedule(
    activity: Callable[..., Any] | str,
    args: tuple[Any, ...],
    *,
    task_queue: str | None,
    start_to_close_timeout: timedelta | float | None,
    schedule_to_close_timeout: timedelta | float | None,
    schedule_to_start_timeout: timedelta | float | None,
    heartbeat_timeout: timedelta | float | None,
    retry_policy: RetryPolicy | None,
    result_type: Any,
) -> tuple[WorkflowInstance, str, int, asyncio.Future[Any]]:
    instance = _context.current()
    check_optional_name(task_queue, "the activity's task_queue")
    check_retry_policy(retry_policy)
    if isinstance(activity, str):
        name, hint = check_name(activity, "activity type"), result_type
    else:
        definition = get_activity_definition(activity)
        if definition is None:
            from perdure._errors import UnknownActivityTypeError

            raise UnknownActivityTypeError(
                f"{shown(getattr(activity, '__qualname__', activity))} is not an activity; "
                "decorate it with @activity.defn"
            )
        name = definition.name
        hint = result_type if result_type is not None else definition.return_hint
    policy_dict = retry_policy.to_dict() if retry_policy is not None else _DEFAULT_RETRY
    seq, future = instance.schedule_activity(
        name,
        args,
        task_queue=task_queue,
        result_hint=hint if hint is not None else Any,
        start_to_close_timeout=_seconds(start_to_close_timeout, "start_to_close_timeout"),
        schedule_to_close_timeout=_seconds(schedule_to_close_timeout, "schedule_to_close_timeout"),
        schedule_to_start_timeout=_seconds(schedule_to_start_timeout, "schedule_to_start_timeout"),
        heartbeat_timeout=_seconds(heartbeat_timeout, "heartbeat_timeout"),
        retry_policy=policy_dict,
    )
    return instance, name, seq, future


def start_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    task_queue: str | None = None,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    schedule_to_start_timeout: timedelta | float | None = None,
    heartbeat_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    result_type: Any = None,
) -> ActivityHandle[Any]:
    """Schedule an activity and return a handle at once (see :func:`execute_activity`)."""
    instance, name, seq, future = _schedule(
        activity, args, task_queue=task_queue,
        start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout,
        schedule_to_start_timeout=schedule_to_start_timeout,
        heartbeat_timeout=heartbeat_timeout, retry_policy=retry_policy,
        result_type=result_type,
    )
    task = instance.loop.create_task(_await_activity(seq, future), name=f"activity:{name}:{seq}")

    def on_done(task: asyncio.Task[Any]) -> None:
        # a task cancelled before its first step never ran _await_activity's except
        if task.cancelled():
            instance.cancel_activity(seq)

    task.add_done_callback(on_done)
    return ActivityHandle(task, seq)


async def execute_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    task_queue: str | None = None,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    schedule_to_start_timeout: timedelta | float | None = None,
    heartbeat_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    result_type: Any = None,
) -> Any:
    """Run an activity (at least once, retried by ``retry_policy``) and return its result.

    The result is decoded by the activity's return annotation (or ``result_type``).
    A final failure raises :class:`ActivityError` whose ``__cause__`` is the
    activity's own error or a :class:`TimeoutFailure`. ``task_queue`` defaults to
    the workflow's own queue.
    """
    instance, _name, seq, future = _schedule(
        activity, args, task_queue=task_queue,
        start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout,
        schedule_to_start_timeout=schedule_to_start_timeout,
        heartbeat_timeout=heartbeat_timeout, retry_policy=retry_policy,
        result_type=result_type,
    )
    try:
        return await future  # no task of its own: the caller's task waits on the future
    except asyncio.CancelledError:
        instance.cancel_activity(seq)
        raise


def start_activity_method(
    activity: Callable[..., Any],
    *args: Any,
    task_queue: str | None = None,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    schedule_to_start_timeout: timedelta | float | None = None,
    heartbeat_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    result_type: Any = None,
) -> ActivityHandle[Any]:
    """:func:`start_activity` for an activity defined as a method: pass it unbound
    (``Payments.charge``); the worker runs it on the instance it registered."""
    return start_activity(
        activity, *args, task_queue=task_queue, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout,
        schedule_to_start_timeout=schedule_to_start_timeout,
        heartbeat_timeout=heartbeat_timeout, retry_policy=retry_policy,
        result_type=result_type,
    )


async def execute_activity_method(
    activity: Callable[..., Any],
    *args: Any,
    task_queue: str | None = None,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    schedule_to_start_timeout: timedelta | float | None = None,
    heartbeat_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    result_type: Any = None,
) -> Any:
    """:func:`execute_activity` for an activity defined as a method: pass it unbound
    (``Payments.charge``; Temporal's name). Workflow code has no instance: the worker
    runs the method on the one it was given (``Worker(activities=[payments.charge])``)."""
    return await execute_activity(
        activity, *args, task_queue=task_queue, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout,
        schedule_to_start_timeout=schedule_to_start_timeout,
        heartbeat_timeout=heartbeat_timeout, retry_policy=retry_policy,
        result_type=result_type,
    )


def start_local_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    schedule_to_start_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    local_retry_threshold: timedelta | float | None = None,
    result_type: Any = None,
) -> ActivityHandle[Any]:
    """Temporal's local activity, for code ported from it: an ordinary activity on this
    workflow's own task queue, which the worker running the workflow starts at once
    (eager dispatch: no claim round trip) and whose result it commits together with the
    next activation. Unlike Temporal's, it is recorded, retried and timed out like any
    activity; ``local_retry_threshold`` is accepted and has no effect."""
    del local_retry_threshold
    return start_activity(
        activity, *args, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout,
        schedule_to_start_timeout=schedule_to_start_timeout, retry_policy=retry_policy,
        result_type=result_type,
    )


async def execute_local_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    schedule_to_start_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    local_retry_threshold: timedelta | float | None = None,
    result_type: Any = None,
) -> Any:
    """Run a local activity (see :func:`start_local_activity`) and return its result."""
    del local_retry_threshold
    return await execute_activity(
        activity, *args, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout,
        schedule_to_start_timeout=schedule_to_start_timeout, retry_policy=retry_policy,
        result_type=result_type,
    )


async def wait(
    fs: Iterable[Awaitable[T]], *, timeout: timedelta | float | None = None,
    return_when: str = asyncio.ALL_COMPLETED,
) -> tuple[list[asyncio.Future[T]], list[asyncio.Future[T]]]:
    """``asyncio.wait`` with a deterministic answer: the done and pending futures as lists
    in the order given (asyncio's sets iterate in an order that can differ on replay).
    Coroutines are wrapped in tasks, in order. A ``timeout`` is a durable timer."""
    futures = [f if isinstance(f, asyncio.Future) else asyncio.ensure_future(f) for f in fs]
    if not futures:
        return [], []
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    done, _pending = await asyncio.wait(futures, timeout=seconds, return_when=return_when)
    return [f for f in futures if f in done], [f for f in futures if f not in done]


def all_handlers_finished() -> bool:
    """Whether no signal or update handler of this run is still running: wait for it
    (``await workflow.wait_condition(workflow.all_handlers_finished)``) before returning,
    so that an update's caller gets its answer and a signal is fully handled."""
    return _context.current().all_handlers_finished()


async def sleep(duration: timedelta | float) -> None:
    """Wait on a durable timer; the same as ``asyncio.sleep`` inside a workflow."""
    await asyncio.sleep(_wait_seconds(duration, "sleep's duration") or 0.0)


async def wait_condition(
    fn: Callable[[], bool], *, timeout: timedelta | float | None = None
) -> None:
    """Wait until ``fn()`` is true (checked whenever the workflow is otherwise blocked).

    With ``timeout``, raises ``TimeoutError`` when it passes first; the timeout is
    a durable timer, so it holds across restarts and costs no process.
    """
    seconds = _wait_seconds(timeout, "wait_condition's timeout")
    future = _context.current().wait_condition(fn)
    if seconds is None:
        await future
        return
    await asyncio.wait_for(future, seconds)


def continue_as_new(
    *args: Any, workflow: Callable[..., Any] | type | str | None = None,
    task_queue: str | None = None,
) -> NoReturn:
    """End this run and start a new run of the same workflow id with ``args`` and a fresh
    history: how a long session keeps its history small (see ``info().history_length``).

    Signals, queries, cancellation and ``result()`` addressed to the workflow id follow
    to the new run. A signal that arrives while this run closes is not lost: the run
    gets it first, and continues as new only once it has handled it. ``workflow``
    (default: this one) and ``task_queue`` (default: this run's) may change.
    """
    from perdure._errors import UnknownWorkflowTypeError
    from perdure.workflow._definition import get_workflow_definition

    instance = _context.current()
    assert instance.info is not None
    check_optional_name(task_queue, "continue_as_new's task_queue")
    workflow_type = instance.info.workflow_type
    if isinstance(workflow, str):
        workflow_type = check_name(workflow, "continue_as_new's workflow type")
    elif workflow is not None:
        definition = get_workflow_definition(workflow)
        if definition is None:
            raise UnknownWorkflowTypeError(
                f"{shown(getattr(workflow, '__qualname__', workflow))} is not a workflow: pass a "
                "@workflow.defn class, its @workflow.run method, or a workflow type name"
            )
        workflow_type = definition.name
    data = instance.converter.encode_args(args, what=f"continue-as-new of {workflow_type!r}")
    raise ContinueAsNew(WorkflowContinuedAsNew(
        workflow_type=workflow_type, task_queue=task_queue or instance.task_queue,
        input=msgspec.Raw(data),
    ))


def publish(event: Any, *, workflow_id: str | None = None) -> None:
    """Publish a progress event (any JSON value) to this workflow's stream, or to
    ``workflow_id``'s, for ``WorkflowHandle.stream()`` followers in any process.

    Not recorded in history, and not repeated on replay: followers see it once, when
    the activation that published it commits.
    """
    instance = _context.current()
    check_optional_name(workflow_id, "publish's workflow_id")
    instance.publish(instance.converter.encode(event, what="stream event"), workflow_id)


def patched(patch_id: str) -> bool:
    """Whether this run takes the new code path of the change named ``patch_id``.

    True for runs that reach this point under the new code (the choice is recorded in
    history as a marker), False for runs whose history was written by the old code:
    they keep replaying the old path. Once no running workflow is on the old path,
    replace the call with :func:`deprecate_patch`; once none has the marker, remove it.
    """
    if not isinstance(patch_id, str) or not patch_id:
        raise ValueError("workflow.patched needs a non-empty patch id string")
    return _context.current().patched(patch_id)


def deprecate_patch(patch_id: str) -> None:
    """Step two of a patch: the old path is deleted; histories with or without the
    patch's marker still replay. Remove the call once no run recorded the marker."""
    if not isinstance(patch_id, str) or not patch_id:
        raise ValueError("workflow.deprecate_patch needs a non-empty patch id string")
    _context.current().deprecate_patch(patch_id)


def upsert_search_attributes(attributes: dict[str, Any]) -> None:
    """Set (or, with ``None``, remove) search attributes of this run: values that
    ``Client.list_workflows(search_attributes=...)`` filters on. Durable: recorded in
    history, applied with this activation's commit."""
    from perdure._attributes import check_search_attributes

    instance = _context.current()
    checked = check_search_attributes(attributes, removals=True,
                                      max_bytes=instance.converter.max_payload_bytes)
    if checked:
        instance.upsert(SearchAttributesUpserted(attributes=checked))


def upsert_memo(memo: dict[str, Any]) -> None:
    """Set (or, with ``None``, remove) memo entries of this run: JSON shown by
    ``describe()`` and ``list_workflows``, never searched."""
    from perdure._attributes import check_memo

    instance = _context.current()
    checked = check_memo(memo, converter=instance.converter)
    if checked:
        instance.upsert(MemoUpserted(memo=checked))


def now() -> datetime:
    """The workflow's current time (UTC): the time its current activation began."""
    from datetime import UTC

    return datetime.fromtimestamp(_context.current().now_timestamp, tz=UTC)


def random() -> Any:
    """A ``random.Random`` seeded from the run id: replay-safe randomness."""
    return _context.current().random


def uuid4() -> uuid.UUID:
    """A replay-safe random UUID."""
    return uuid.UUID(int=_context.current().random.getrandbits(128), version=4)


def info() -> WorkflowInfo:
    """Facts about the running workflow: ids, type, task queue, start time, history length."""
    result = _context.current().info
    assert result is not None
    return result


def _started() -> Any:
    started = _context.current().started
    assert started is not None
    return started


def has_last_completion_result() -> bool:
    """Whether an earlier run of this chain (cron, retries) completed: tells "no result
    yet" from a result that was None."""
    return bool(_started().last_completion_result)


def get_last_completion_result(type_hint: Any = None) -> Any:
    """The result of this chain's last run that completed (a cron chain's previous
    run, carried over runs that failed), decoded by ``type_hint``; None if there is none."""
    data = bytes(_started().last_completion_result)
    if not data:
        return None
    instance = _context.current()
    return instance.converter.decode(data, type_hint if type_hint is not None else Any,
                                     what="last completion result")


def get_last_failure() -> BaseException | None:
    """How the run before this one failed (a cron chain's previous run, or the attempt a
    workflow retry follows), as the exception; None if it did not fail."""
    failure = _started().last_failure
    return exception_from_failure(failure) if failure is not None else None


def is_replaying() -> bool:
    """True while the runtime re-executes recorded history (side effects must stay silent)."""
    return _context.current().replaying


def set_signal_handler(name: str, handler: Callable[..., Any] | None) -> None:
    """Register a signal handler at run time; signals that arrived earlier are delivered now.

    Declare the class with ``@workflow.defn(dynamic_signals=True)`` so that clients
    accept signal names that only exist at run time.
    """
    _context.current().set_signal_handler(name, handler)


class _ReplaySafeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Drops records while replaying, and tags records with the workflow id."""

    def isEnabledFor(self, level: int) -> bool:
        instance = _context.maybe_current()
        if instance is not None and instance.replaying:
            return False
        return bool(self.logger.isEnabledFor(level))

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        instance = _context.maybe_current()
        if instance is not None:
            extra = dict(kwargs.get("extra") or {})
            extra.setdefault("workflow_id", instance.workflow_id)
            extra.setdefault("run_id", instance.run_id)
            kwargs["extra"] = extra
            msg = f"[{instance.workflow_id}] {msg}"
        return msg, kwargs


logger = _ReplaySafeLogger(logging.getLogger("perdure.workflow.user"), {})
"""A logger for workflow code that stays silent while history is replayed."""
