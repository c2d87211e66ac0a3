"""What a running activity can ask of its worker: info, heartbeats, cancellation.

How cancellation reaches async and thread activities is told in ``perdure.activity``'s
docstring; :class:`CancelFlag` is where both kinds learn it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from datetime import datetime
from typing import Any, NoReturn, Protocol

from perdure._arguments import check_whole_number
from perdure._converter import PayloadConverter
from perdure._errors import CancelledFailure, NotInActivityError
from perdure._identifiers import check_name, check_optional_name

__all__ = [
    "ActivityContext",
    "ActivityInfo",
    "CompleteAsyncError",
    "RatePermit",
    "heartbeat",
    "heartbeat_details",
    "info",
    "is_cancelled",
    "load_payloads",
    "logger",
    "payload_ref",
    "publish",
    "raise_complete_async",
    "rate_limit",
    "store_payloads",
    "wait_for_cancelled",
    "wait_for_cancelled_sync",
]

_MAX_TOKENS = 2**31 - 1
"""Token counts are 32-bit columns on PostgreSQL."""


@dataclasses.dataclass(frozen=True)
class ActivityInfo:
    """Facts about the running activity attempt, from ``activity.info()``."""

    workflow_id: str
    run_id: str
    workflow_type: str
    activity_id: str
    activity_type: str
    task_queue: str
    attempt: int
    """1 for the first attempt, 2 for the first retry, ..."""
    idempotency_key: str
    """Stable across retries of this activity in this run: pass it to external APIs
    so that a retried attempt does not repeat a side effect."""
    scheduled_time: datetime
    start_to_close_timeout: float | None
    heartbeat_timeout: float | None
    task_token: bytes = b""
    """Names this attempt (opaque bytes): hand it to the system that will complete the
    activity after ``raise_complete_async()``, through
    ``Client.get_async_activity_handle(task_token=...)``."""


_flag_lock = threading.Lock()
"""Guards the rare moments of every flag: being set, and a first waiter arriving."""


class CancelFlag:
    """Set once when the attempt should stop; cheap to create, and safe to read and to
    wait on from any thread or event loop."""

    __slots__ = ("_event", "_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        with _flag_lock:
            if self._set:
                return
            self._set = True
            event, waiters, self._waiters = self._event, self._waiters, []
        if event is not None:
            event.set()
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None) -> bool:
        """Block this thread until set (or ``timeout`` seconds pass); whether it is set."""
        with _flag_lock:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    async def wait_async(self) -> None:
        """Wait on the running event loop until set."""
        with _flag_lock:
            if self._set:
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
        try:
            await waiter
        finally:
            with _flag_lock, contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ActivityContext:
    """The worker's side of a running attempt."""

    def __init__(
        self,
        info: ActivityInfo,
        *,
        converter: PayloadConverter,
        heartbeat_details: bytes | None,
        record_heartbeat: Callable[[bytes | None], None],
        payload_store: PayloadStore | None = None,
        publish: Callable[[str, bytes], None] | None = None,
        runs_in_thread: bool = False,
    ) -> None:
        self.info = info
        self.converter = converter
        self.previous_heartbeat = heartbeat_details
        self._record_heartbeat = record_heartbeat
        self.payload_store = payload_store
        self._publish = publish
        self.cancelled = CancelFlag()
        self.runs_in_thread = runs_in_thread
        """A plain-``def`` attempt: cancellation is told, through heartbeats, not raised."""

    def publish(self, event: Any, workflow_id: str | None) -> None:
        if self._publish is None:
            return
        self._publish(workflow_id or self.info.workflow_id,
                      self.converter.encode(event, what="stream event"))

    def heartbeat(self, details: tuple[Any, ...]) -> None:
        if self.runs_in_thread and self.cancelled.is_set():
            info = self.info
            raise CancelledFailure(
                f"activity {info.activity_type} (workflow {info.workflow_id}, attempt "
                f"{info.attempt}) was cancelled"
            )
        data = (
            self.converter.encode(list(details), what="heartbeat details") if details else None
        )
        self._record_heartbeat(data)


class PayloadStore(Protocol):
    """Where an activity's out-of-line payloads and shared limits live (the worker's
    store)."""

    async def put_payloads(self, workflow_id: str, payloads: Sequence[tuple[str, bytes]],
                           ) -> None: ...

    async def get_payloads(self, workflow_id: str, hashes: Sequence[str]
                           ) -> dict[str, bytes]: ...

    async def acquire_permit(
        self, name: str, holder: str, *, concurrency: int | None, per_minute: int | None,
        tokens: int, lease: float,
    ) -> float | None: ...

    async def release_permit(self, name: str, holder: str, tokens: int) -> None: ...


_current: contextvars.ContextVar[ActivityContext] = contextvars.ContextVar("perdure_activity")


def current() -> ActivityContext:
    """The running activity's context, or :class:`NotInActivityError`."""
    try:
        return _current.get()
    except LookupError:
        raise NotInActivityError(
            "this perdure.activity function can only be called from inside an activity"
        ) from None


def set_current(context: ActivityContext) -> contextvars.Token[ActivityContext]:
    return _current.set(context)


def reset_current(token: contextvars.Token[ActivityContext]) -> None:
    _current.reset(token)


def info() -> ActivityInfo:
    """Facts about the running attempt: ids, attempt number, idempotency key."""
    return current().info


def heartbeat(*details: Any) -> None:
    """Report progress; ``details`` are kept and handed to the next attempt after a failure.

    Also how a long activity learns of cancellation: the worker checks for it when it
    records heartbeats. In a plain-``def`` (thread) activity, a heartbeat after the
    attempt was cancelled raises :class:`perdure.CancelledFailure`; an ``async``
    activity is cancelled at its ``await`` instead (see this module's docstring).
    """
    current().heartbeat(details)


def heartbeat_details(*hints: Any) -> list[Any]:
    """The details the previous attempt last reported with ``heartbeat`` (empty if none)."""
    context = current()
    if context.previous_heartbeat is None:
        return []
    return context.converter.decode_args(context.previous_heartbeat, list(hints),
                                         what="heartbeat details")


def is_cancelled() -> bool:
    """True once the attempt must stop (cancelled, timed out, the worker leaving); for
    plain-``def`` activities to poll."""
    return current().cancelled.is_set()


async def wait_for_cancelled() -> None:
    """Wait until the attempt must stop (for a helper task of an ``async`` activity; the
    activity's own task is cancelled at that moment anyway)."""
    await current().cancelled.wait_async()


def wait_for_cancelled_sync(timeout: float | None = None) -> bool:
    """Block a plain-``def`` activity's thread until the attempt must stop, or ``timeout``
    seconds pass; whether it must stop."""
    return current().cancelled.wait(timeout)


class _ActivityLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Tags each record logged during an attempt with it: ``workflow_id``, ``run_id``,
    ``activity_id``, ``activity_type`` and ``attempt`` in the record (its ``extra``; a
    value the call passes wins), and a readable prefix on the message."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any],
                ) -> tuple[Any, MutableMapping[str, Any]]:
        context = _current.get(None)
        if context is not None:
            info = context.info
            extra = dict(kwargs.get("extra") or {})
            for key, value in (("workflow_id", info.workflow_id), ("run_id", info.run_id),
                               ("activity_id", info.activity_id),
                               ("activity_type", info.activity_type),
                               ("attempt", info.attempt)):
                extra.setdefault(key, value)
            kwargs["extra"] = extra
            msg = (f"[{info.activity_type}, workflow {info.workflow_id}, activity "
                   f"{info.activity_id}, attempt {info.attempt}] {msg}")
        return msg, kwargs


logger = _ActivityLogger(logging.getLogger("perdure.activity.user"), {})
"""A logger for activity code (Temporal's ``activity.logger``): each record names the
attempt it comes from, in async and plain-``def`` activities alike."""


class CompleteAsyncError(BaseException):
    """Raised by :func:`raise_complete_async`: the attempt stays open for someone else to
    complete (a ``BaseException``, so that ``except Exception`` cannot swallow it)."""


def raise_complete_async() -> NoReturn:
    """End this function but not the attempt: it stays open, neither completed nor failed,
    until a :class:`perdure.client.AsyncActivityHandle` (from
    ``Client.get_async_activity_handle(task_token=activity.info().task_token)``, in any
    process) completes, fails or reports its cancellation (Temporal's asynchronous
    activity completion). Hand the task token to the system that will (a CI job, a
    payment webhook, a person) before raising.

    The open attempt holds no worker slot, is not handed back when its worker leaves or
    dies, and its start-to-close, heartbeat and schedule-to-close timeouts still apply
    (the handle's ``heartbeat()`` pushes the heartbeat timeout back). Under a
    time-skipping test environment an open attempt does not hold time back: its timeouts
    fire as soon as everything else is idle; test with a real clock, or without timeouts.
    """
    current()
    raise CompleteAsyncError()


def payload_ref(data: bytes) -> str:
    """The reference of ``data`` in the payload store: its SHA-256, in hex."""
    return hashlib.sha256(data).hexdigest()


async def store_payloads(*data: bytes) -> list[str]:
    """Store content once, out of line, for this activity's workflow; its references.

    A history that carries references instead of large repeated content (an agent's
    conversation, say) grows with each new piece, not with everything so far.
    Storing the same content again costs a key lookup. (Async activities only.)
    """
    context = current()
    if context.payload_store is None:
        raise NotInActivityError("this activity runs without a payload store")
    refs = [payload_ref(d) for d in data]
    await context.payload_store.put_payloads(context.info.workflow_id,
                                             list(zip(refs, data, strict=True)))
    return refs


async def load_payloads(*refs: str, workflow_id: str | None = None) -> dict[str, bytes]:
    """The content of references made by :func:`store_payloads` in this workflow, or in
    ``workflow_id`` (a parent handing its state to a child, say); an unknown reference is
    left out of the result."""
    context = current()
    if context.payload_store is None:
        raise NotInActivityError("this activity runs without a payload store")
    check_optional_name(workflow_id, "load_payloads' workflow_id")
    for ref in refs:
        check_name(ref, "a payload reference")
    return await context.payload_store.get_payloads(workflow_id or context.info.workflow_id,
                                                    list(refs))


def publish(event: Any, *, workflow_id: str | None = None) -> None:
    """Publish a progress event (any JSON value: a token, a status line) to this
    activity's workflow's stream, or to ``workflow_id``'s, for ``WorkflowHandle.stream()``
    followers in any process. Batched (about every 50 ms), never in history."""
    check_optional_name(workflow_id, "publish's workflow_id")
    current().publish(event, workflow_id)


class RatePermit:
    """A share of a shared limit, held while an ``async with activity.rate_limit(...)``
    block runs; ``used(tokens)`` records what the call really consumed."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.waited = 0.0
        """Seconds this attempt waited for its share."""

    def used(self, tokens: int) -> None:
        """The tokens really used (counted against the per-minute limit)."""
        self.tokens = check_whole_number(tokens, "tokens", maximum=_MAX_TOKENS)


@contextlib.asynccontextmanager
async def rate_limit(
    name: str, *, concurrency: int | None = None, tokens_per_minute: int | None = None,
    tokens: int = 0,
) -> AsyncIterator[RatePermit]:
    """Hold a share of the limit ``name`` (say ``"model:gpt-4o"``) for the block: at most
    ``concurrency`` holders at once and ``tokens_per_minute`` tokens in any minute, over
    every worker sharing the database. Waits (sleeping, not spinning) until a share is
    free; ``tokens`` is this call's estimate, corrected with ``permit.used(n)``. A crashed
    holder's share returns when its lease (the activity's start-to-close timeout) ends."""
    context = current()
    store = context.payload_store
    if store is None:
        raise NotInActivityError("this activity runs without a store for shared limits")
    check_name(name, "the rate limit's name")
    for value, what in ((concurrency, "concurrency"), (tokens_per_minute, "tokens_per_minute")):
        if value is not None:
            check_whole_number(value, what, minimum=1, maximum=_MAX_TOKENS)
    check_whole_number(tokens, "tokens", maximum=_MAX_TOKENS)
    info = context.info
    holder = f"{info.workflow_id}/{info.run_id}/{info.activity_id}/{info.attempt}"
    lease = info.start_to_close_timeout or 600.0
    permit = RatePermit(tokens)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        wait = await store.acquire_permit(name, holder, concurrency=concurrency,
                                          per_minute=tokens_per_minute, tokens=tokens,
                                          lease=lease)
        if wait is None:
            break
        await asyncio.sleep(min(wait, 1.0))
    permit.waited = loop.time() - started
    try:
        yield permit
    finally:
        await store.release_permit(name, holder, permit.tokens)
