"""``ActivityEnvironment``: run one activity function as a worker would, with no worker
and no database (Temporal's ``temporalio.testing.ActivityEnvironment``)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from perdure._converter import PayloadConverter
from perdure._errors import NotInActivityError
from perdure.activity._context import (
    ActivityContext,
    ActivityInfo,
    PayloadStore,
    reset_current,
    set_current,
)
from perdure.activity._definition import get_activity_definition

if TYPE_CHECKING:
    from perdure.client import Client

__all__ = ["ActivityEnvironment"]

P = ParamSpec("P")
T = TypeVar("T")


class ActivityEnvironment:
    """Unit-test an activity: ``env.run(fn, *args)`` calls it with ``perdure.activity``'s
    functions answering as in a worker, without one.

    ``info`` is what ``activity.info()`` returns (:meth:`default_info` by default; change
    fields with ``dataclasses.replace``); ``heartbeat_details`` are what the "previous
    attempt" reported (``activity.heartbeat_details(...)``); ``on_heartbeat`` is called
    with the details of each ``activity.heartbeat(...)``. :meth:`cancel` cancels as a
    worker would. ``store_payloads``, ``load_payloads`` and ``rate_limit`` need a
    database: give ``client`` (a real :class:`perdure.Client`) for them. An activity that
    calls ``activity.raise_complete_async()`` ends ``run`` with the ``BaseException`` it
    raises (``perdure.activity._context.CompleteAsyncError``), as in Temporal.
    """

    def __init__(
        self,
        *,
        info: ActivityInfo | None = None,
        heartbeat_details: Sequence[Any] = (),
        client: Client | None = None,
        converter: PayloadConverter | None = None,
    ) -> None:
        self.info = info if info is not None else self.default_info()
        self.heartbeat_details = list(heartbeat_details)
        self.on_heartbeat: Callable[..., None] = lambda *details: None
        """Called with the details of every ``activity.heartbeat(...)``."""
        self.client = client
        self.converter = converter or (client.converter if client is not None
                                       else PayloadConverter())
        self._cancelled = False
        self._running: set[_Attempt] = set()

    @staticmethod
    def default_info() -> ActivityInfo:
        """The info an environment gives when none is passed (ids ``"test"``, attempt 1)."""
        return ActivityInfo(
            workflow_id="test", run_id="test-run", workflow_type="test",
            activity_id="test", activity_type="unknown", task_queue="test", attempt=1,
            idempotency_key="test/test-run/test",
            scheduled_time=datetime.fromtimestamp(0, tz=UTC),
            start_to_close_timeout=None, heartbeat_timeout=None, task_token=b"test",
        )

    def cancel(self) -> None:
        """Cancel what runs (and what will run) here, as a worker would: an ``async``
        activity's task gets ``asyncio.CancelledError``; a plain ``def`` one is told
        (``is_cancelled()``, ``wait_for_cancelled_sync()``) and its next ``heartbeat()``
        raises :class:`perdure.CancelledFailure`. Call it from another thread, a timer or
        ``on_heartbeat`` while a plain ``def`` activity runs in the caller's thread."""
        if self._cancelled:
            return
        self._cancelled = True
        for attempt in list(self._running):
            attempt.cancel()

    @overload
    def run(self, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args,
            **kwargs: P.kwargs) -> Coroutine[Any, Any, T]: ...

    @overload
    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` as the activity: ``await env.run(fn, ...)`` for an ``async``
        function; a plain one runs at once, in the caller's thread, and its value is
        returned (as Temporal does)."""
        definition = get_activity_definition(fn)
        is_async = definition.is_async if definition is not None else (
            inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        )
        attempt = _Attempt(self, is_async)
        if is_async:
            return attempt.run_async(fn, args, kwargs)
        return attempt.run_sync(fn, args, kwargs)


class _EnvironmentContext(ActivityContext):
    """An attempt's context whose heartbeats go to ``env.on_heartbeat``."""

    def __init__(self, env: ActivityEnvironment, runs_in_thread: bool) -> None:
        details = env.heartbeat_details
        super().__init__(
            env.info, converter=env.converter,
            heartbeat_details=(env.converter.encode(details, what="heartbeat details")
                               if details else None),
            record_heartbeat=lambda data: None,
            payload_store=(env.client.store if env.client is not None else _NoDatabase()),
            runs_in_thread=runs_in_thread,
        )
        self.env = env

    def heartbeat(self, details: tuple[Any, ...]) -> None:
        super().heartbeat(details)  # encodes them (as a worker would), or raises if cancelled
        self.env.on_heartbeat(*details)


class _Attempt:
    """One ``env.run``: its context and, for an async function, its task."""

    def __init__(self, env: ActivityEnvironment, is_async: bool) -> None:
        self.env = env
        self.context = _EnvironmentContext(env, runs_in_thread=not is_async)
        self.task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        self.context.cancelled.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def run_sync(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        self.env._running.add(self)
        if self.env._cancelled:
            self.context.cancelled.set()
        token = set_current(self.context)
        try:
            return fn(*args, **kwargs)
        finally:
            reset_current(token)
            self.env._running.discard(self)

    async def run_async(self, fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
        self.env._running.add(self)
        token = set_current(self.context)
        try:
            # the task copies the context, with the activity's in it
            self.task = asyncio.ensure_future(fn(*args, **kwargs))
            if self.env._cancelled:
                self.cancel()
            return await self.task
        finally:
            reset_current(token)
            self.env._running.discard(self)


class _NoDatabase(PayloadStore):
    """What an environment without ``client=`` offers for payloads and limits: a clear
    error."""

    @staticmethod
    def _refuse() -> NotInActivityError:
        return NotInActivityError(
            "this ActivityEnvironment has no database: store_payloads, load_payloads and "
            "rate_limit need one; pass client=await perdure.Client.connect(url) to "
            "ActivityEnvironment(...)"
        )

    async def put_payloads(self, workflow_id: str, payloads: Sequence[tuple[str, bytes]],
                           ) -> None:
        raise self._refuse()

    async def get_payloads(self, workflow_id: str, hashes: Sequence[str]) -> dict[str, bytes]:
        raise self._refuse()

    async def acquire_permit(
        self, name: str, holder: str, *, concurrency: int | None, per_minute: int | None,
        tokens: int, lease: float,
    ) -> float | None:
        raise self._refuse()

    async def release_permit(self, name: str, holder: str, tokens: int) -> None:
        raise self._refuse()
