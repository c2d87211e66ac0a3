"""The client: start, signal, query, cancel, terminate, describe and await workflows."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import inspect
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import msgspec

from perdure._attributes import check_memo, check_search_attributes
from perdure._clock import Clock, VirtualClock
from perdure._converter import PayloadConverter
from perdure._errors import (
    CancelledFailure,
    InvalidArgumentError,
    QueryRejectedError,
    QueryTimeoutError,
    SchemaVersionError,
    TerminatedFailure,
    TimeoutFailure,
    UnknownHandlerError,
    UnknownWorkflowTypeError,
    UpdateFailedError,
    UpdateRejectedError,
    WorkflowFailureError,
)
from perdure._failure import exception_from_failure
from perdure._retry import RetryPolicy
from perdure.history import (
    CancelRequested,
    Failure,
    HistoryEvent,
    SignalReceived,
    UpdateRequested,
    WorkflowReset,
    WorkflowStarted,
    WorkflowTaskCompleted,
    WorkflowTerminated,
    decode_event,
    encode_event,
)
from perdure.store import WorkflowStore, open_store
from perdure.store._records import RunRecord, StartWorkflowRecord, WorkflowTaskClaim
from perdure.store._schema import SCHEMA_VERSION
from perdure.workflow._definition import (
    WorkflowDefinition,
    get_workflow_definition,
    handler_name,
)
from perdure.workflow._instance import WorkflowInstance

__all__ = [
    "Client",
    "IdReusePolicy",
    "StreamEvent",
    "WorkflowDescription",
    "WorkflowHandle",
    "WorkflowHistory",
    "WorkflowStatus",
]

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite:///perdure.db"
EAGER_START_LEASE = 5.0
"""Seconds an eagerly started run's first task stays reserved for the in-process worker."""
_failure_decoder = msgspec.json.Decoder(Failure)
_MAY_CONTINUE = ("continued_as_new", "failed", "timed_out", "reset")
"""Statuses after which another run of the chain may carry on (``next_run_id``)."""


class WorkflowStatus(enum.StrEnum):
    """Where a workflow run is in its life; the values are stored in the database."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    TIMED_OUT = "timed_out"
    CONTINUED_AS_NEW = "continued_as_new"
    """Closed by ``workflow.continue_as_new``: a new run of the same id carries on."""
    RESET = "reset"
    """Ended by ``reset()``: a new run, from a prefix of this one's history, carries on."""


class IdReusePolicy(enum.StrEnum):
    """Whether a workflow id may be used again once its last run closed.

    A *running* id is never reused: starting it again raises
    :class:`WorkflowAlreadyStartedError`.
    """

    ALLOW_DUPLICATE = "allow_duplicate"
    ALLOW_DUPLICATE_FAILED_ONLY = "allow_duplicate_failed_only"
    REJECT_DUPLICATE = "reject_duplicate"


class WorkflowPage(list["WorkflowDescription"]):
    """A page of :meth:`Client.list_workflows`: a list, plus the token of the next page
    (None on the last)."""

    next_page_token: str | None = None


def _epoch(when: datetime | float | None) -> float | None:
    if when is None or isinstance(when, int | float):
        return when
    if when.tzinfo is None:
        raise InvalidArgumentError(
            f"{when!r} has no time zone; pass an aware datetime (tzinfo=UTC) or epoch seconds"
        )
    return when.timestamp()


def _encode_page_token(key: tuple[float, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_page_token(token: str) -> tuple[float, str, str]:
    try:
        created, workflow_id, run_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(created), str(workflow_id), str(run_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(
            f"page_token {token!r} is not one that list_workflows returned"
        ) from exc


class IdConflictPolicy(enum.StrEnum):
    """What a start does when a run with its workflow id is *running*."""

    FAIL = "fail"
    """Raise :class:`WorkflowAlreadyStartedError` (the default)."""
    USE_EXISTING = "use_existing"
    """Return a handle to the running run; start nothing."""
    TERMINATE_EXISTING = "terminate_existing"
    """Terminate the running run, then start a new one, in one transaction."""


@dataclasses.dataclass(frozen=True)
class WorkflowDescription:
    """A workflow run's state, from ``handle.describe()`` or ``list_workflows``."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    status: WorkflowStatus
    start_time: datetime
    close_time: datetime | None
    history_length: int
    execution_timeout: timedelta | None
    pending_activities: int = 0
    pending_timers: int = 0
    pending_events: int = 0
    """Signals, completions and other inbound events not yet processed by workflow code."""
    workflow_task_attempt: int | None = None
    last_workflow_task_failure: str | None = None
    """Why the last workflow task failed (non-determinism, unknown type, a bug), if it did."""
    parent_workflow_id: str | None = None
    """For a child workflow: the workflow id and run id of the parent that started it."""
    parent_run_id: str | None = None
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)
    search_attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    """As set at start and upserted by the workflow since."""
    last_build_id: str | None = None
    """The build id of the worker that ran the last workflow task (the history's
    ``WorkflowTaskCompleted`` events name the build of each)."""

    @classmethod
    def from_record(cls, record: RunRecord) -> WorkflowDescription:
        return cls(
            workflow_id=record.workflow_id,
            run_id=record.run_id,
            workflow_type=record.workflow_type,
            task_queue=record.task_queue,
            status=WorkflowStatus(record.status),
            start_time=datetime.fromtimestamp(record.created_at, tz=UTC),
            close_time=(
                datetime.fromtimestamp(record.closed_at, tz=UTC) if record.closed_at else None
            ),
            history_length=record.history_length,
            execution_timeout=(
                timedelta(seconds=record.execution_timeout) if record.execution_timeout else None
            ),
            pending_activities=record.pending_activities,
            pending_timers=record.pending_timers,
            pending_events=record.pending_inbox,
            workflow_task_attempt=record.workflow_task_attempt,
            last_workflow_task_failure=record.workflow_task_failure,
            parent_workflow_id=record.parent_workflow_id,
            parent_run_id=record.parent_run_id,
            memo=json.loads(record.memo) if record.memo else {},
            search_attributes=(
                json.loads(record.search_attributes) if record.search_attributes else {}
            ),
            last_build_id=record.build_id,
        )


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """One event of a workflow's stream: its id (increasing), the publishing run, the
    event itself (decoded JSON)."""

    id: int
    run_id: str
    data: Any


@dataclasses.dataclass(frozen=True)
class WorkflowHistory:
    """A run's recorded events, in order (event ``i`` has sequence number ``i + 1``)."""

    workflow_id: str
    run_id: str
    events: list[HistoryEvent]

    def to_json(self) -> bytes:
        """The history as a JSON document (format version 1, see docs/history-format.md)."""
        return msgspec.json.encode(
            {"format": "perdure-history", "version": 1, "workflow_id": self.workflow_id,
             "run_id": self.run_id, "events": self.events}
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str = "the document") -> WorkflowHistory:
        """Read a history that :meth:`to_json` (or ``perdure workflow export``) wrote."""
        try:
            document = msgspec.json.decode(data, type=_HistoryDocument)
        except msgspec.ValidationError as exc:
            raise InvalidArgumentError(
                f"{source} is not a Perdure history export: {exc}"
            ) from None
        except msgspec.DecodeError as exc:
            raise InvalidArgumentError(f"{source} is not valid JSON: {exc}") from None
        if document.format != "perdure-history":
            raise InvalidArgumentError(
                f"{source} is a {document.format!r} document, not a 'perdure-history' export"
            )
        if document.version != 1:
            raise InvalidArgumentError(
                f"{source} is history format version {document.version}; this Perdure reads "
                "version 1: upgrade Perdure"
            )
        return cls(document.workflow_id, document.run_id, document.events)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkflowHistory:
        """Read an exported history file."""
        with open(path, "rb") as f:
            return cls.from_json(f.read(), source=str(path))

    @property
    def workflow_type(self) -> str:
        """The workflow type, from the first event."""
        first = self.events[0] if self.events else None
        return first.workflow_type if isinstance(first, WorkflowStarted) else ""

    @property
    def build_ids(self) -> list[str]:
        """The build ids of the workers that ran this history's workflow tasks, in order."""
        seen: dict[str, None] = {}
        for event in self.events:
            if isinstance(event, WorkflowTaskCompleted) and event.build_id:
                seen.setdefault(event.build_id)
        return list(seen)


class _HistoryDocument(msgspec.Struct):
    format: str
    version: int
    workflow_id: str
    run_id: str
    events: list[HistoryEvent]


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class Client:
    """A connection to Perdure's database; every operation is one durable transaction.

    ``await Client.connect("sqlite:///perdure.db")`` opens (and migrates) the
    store. The URL defaults to ``$PERDURE_DATABASE_URL``, then ``sqlite:///perdure.db``.
    """

    def __init__(self, store: WorkflowStore, *, converter: PayloadConverter | None = None) -> None:
        self.store = store
        self.converter = converter or PayloadConverter()
        self._interfaces: dict[str, tuple[set[str], set[str]] | None] = {}
        self._local_workers: list[Any] = []
        """Workers running in this process on this client: candidates for eager start."""

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        converter: PayloadConverter | None = None,
        migrate: bool = True,
        **store_options: Any,
    ) -> Client:
        """Open the database at ``url``, creating or upgrading its schema.

        With ``migrate=False`` (schemas managed by ``perdure db migrate``), a database
        whose schema is not exactly this version's is refused instead.
        """
        url = url or os.environ.get("PERDURE_DATABASE_URL") or DEFAULT_DATABASE_URL
        store = open_store(url, clock=clock, **store_options)
        try:
            if migrate:
                await store.migrate()
            else:
                await _check_schema_version(store)
        except BaseException:
            await store.close()
            raise
        return cls(store, converter=converter)

    async def close(self) -> None:
        """Release the database connection."""
        await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ start
    def _resolve_workflow(self, workflow: Any) -> tuple[str, WorkflowDefinition | None]:
        if isinstance(workflow, str):
            return workflow, None
        definition = get_workflow_definition(workflow)
        if definition is None:
            raise UnknownWorkflowTypeError(
                f"{getattr(workflow, '__qualname__', workflow)!r} is not a workflow: pass a "
                "@workflow.defn class, its @workflow.run method, or a workflow type name"
            )
        return definition.name, definition

    async def start_workflow(
        self,
        workflow: Callable[..., Any] | type | str,
        *args: Any,
        id: str,
        task_queue: str,
        execution_timeout: timedelta | float | None = None,
        id_reuse_policy: IdReusePolicy = IdReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy: IdConflictPolicy = IdConflictPolicy.FAIL,
        result_type: Any = None,
        memo: dict[str, Any] | None = None,
        search_attributes: dict[str, Any] | None = None,
        run_timeout: timedelta | float | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> WorkflowHandle[Any]:
        """Start a workflow run; durable once this returns, whether or not a worker runs.

        If ``id`` is running, ``id_conflict_policy`` decides: raise
        :class:`WorkflowAlreadyStartedError` (the default), return a handle to the
        running run, or terminate it and start anew. Once the id's last run closed,
        ``id_reuse_policy`` decides whether it may be used again.

        ``memo`` is JSON shown by ``describe()``; ``search_attributes`` (str, int,
        float or bool values) are what ``list_workflows(search_attributes=...)``
        filters on. The workflow can change both as it runs.

        ``execution_timeout`` bounds the workflow with all its runs (retries,
        continue-as-new), ``run_timeout`` each run. With ``retry_policy``, a run that
        fails or passes its run timeout is followed by another attempt of the workflow
        (``workflow.info().attempt``); ``result()`` waits for the last.
        """
        return await self._start(
            workflow, args, id=id, task_queue=task_queue, execution_timeout=execution_timeout,
            id_reuse_policy=id_reuse_policy, result_type=result_type, signal=None,
            id_conflict_policy=IdConflictPolicy(id_conflict_policy), memo=memo,
            search_attributes=search_attributes, run_timeout=run_timeout,
            retry_policy=retry_policy,
        )

    async def signal_with_start(
        self,
        workflow: Callable[..., Any] | type | str,
        signal: Callable[..., Any] | str,
        signal_args: tuple[Any, ...] = (),
        *args: Any,
        id: str,
        task_queue: str,
        execution_timeout: timedelta | float | None = None,
        result_type: Any = None,
        memo: dict[str, Any] | None = None,
        search_attributes: dict[str, Any] | None = None,
    ) -> WorkflowHandle[Any]:
        """Signal the running workflow ``id``, or start it and deliver the signal first, atomically."""
        name = self._signal_name(signal)
        event = SignalReceived(
            name=name,
            args=msgspec.Raw(self.converter.encode_args(signal_args, what=f"signal {name!r}")),
        )
        return await self._start(
            workflow, args, id=id, task_queue=task_queue, execution_timeout=execution_timeout,
            id_reuse_policy=IdReusePolicy.ALLOW_DUPLICATE, result_type=result_type,
            signal=encode_event(event), memo=memo, search_attributes=search_attributes,
        )

    async def _start(
        self, workflow: Any, args: tuple[Any, ...], *, id: str, task_queue: str,
        execution_timeout: timedelta | float | None, id_reuse_policy: IdReusePolicy,
        result_type: Any, signal: bytes | None,
        id_conflict_policy: IdConflictPolicy = IdConflictPolicy.FAIL,
        memo: dict[str, Any] | None = None,
        search_attributes: dict[str, Any] | None = None,
        run_timeout: timedelta | float | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> WorkflowHandle[Any]:
        if not id or not isinstance(id, str):
            raise InvalidArgumentError("start_workflow needs a non-empty string id")
        if not task_queue:
            raise InvalidArgumentError("start_workflow needs a task_queue")
        workflow_type, definition = self._resolve_workflow(workflow)
        if definition is not None:
            try:
                inspect.signature(definition.run_method).bind(None, *args)
            except TypeError as exc:
                raise InvalidArgumentError(
                    f"arguments do not fit workflow {workflow_type!r} "
                    f"({definition.run_method.__qualname__}{inspect.signature(definition.run_method)}): {exc}"
                ) from None
        data = self.converter.encode_args(args, what=f"workflow {workflow_type!r}")
        now = self.store.clock.now()
        timeout = _seconds(execution_timeout)
        memo = check_memo(memo) or None
        search_attributes = check_search_attributes(search_attributes) or None
        started = WorkflowStarted(
            workflow_type=workflow_type, task_queue=task_queue, input=msgspec.Raw(data),
            started_at=now, execution_timeout=timeout, memo=memo,
            search_attributes=search_attributes, run_timeout=_seconds(run_timeout),
            retry_policy=retry_policy.to_dict() if retry_policy is not None else None,
        )
        eager = None
        if signal is None:
            eager = next(
                (w for w in self._local_workers if w.accepts_eager_start(task_queue, workflow_type)),
                None,
            )
        started_event = encode_event(started)
        new_run_id = str(uuid.uuid4())
        prepared = None
        if eager is not None:
            # run the first activation now, to commit it with the start: one transaction
            prepared = eager.prepare_eager_start(id, new_run_id, workflow_type, started_event,
                                                 now)
        start = asyncio.ensure_future(self.store.start_workflow(
            StartWorkflowRecord(
                workflow_id=id, run_id=new_run_id, workflow_type=workflow_type,
                task_queue=task_queue, input=data, started_event=started_event,
                execution_timeout=timeout, id_reuse_policy=str(id_reuse_policy), now=now,
                id_conflict_policy=str(id_conflict_policy),
                terminate_event=encode_event(WorkflowTerminated(
                    reason="terminated by a new start (id_conflict_policy=terminate_existing)"
                )) if id_conflict_policy == IdConflictPolicy.TERMINATE_EXISTING else None,
                terminate_failure=msgspec.json.encode(Failure(
                    type="TerminatedFailure", kind="terminated",
                    message="terminated by a new start (id_conflict_policy=terminate_existing)",
                )) if id_conflict_policy == IdConflictPolicy.TERMINATE_EXISTING else None,
                signal_event=signal,
                eager_worker=eager.identity if eager is not None else None,
                eager_lease=EAGER_START_LEASE,
                first_completion=prepared.completion if prepared is not None else None,
                memo=msgspec.json.encode(memo) if memo else None,
                search_attributes=(
                    msgspec.json.encode(search_attributes) if search_attributes else None
                ),
                run_timeout=started.run_timeout,
                retry_policy=(msgspec.json.encode(started.retry_policy)
                              if started.retry_policy is not None else None),
            )
        ))

        def hand_over(done: asyncio.Future[str]) -> None:
            """Give the eager worker what the start committed for it, even if our caller
            was cancelled meanwhile (a cancelled caller must not strand the run)."""
            committed = not done.cancelled() and done.exception() is None
            if eager is None:
                return
            if prepared is not None:
                eager.finish_eager_start(prepared,
                                         committed=committed and done.result() == new_run_id)
            elif committed:
                eager.run_eager_start(
                    WorkflowTaskClaim(
                        workflow_id=id, run_id=done.result(), workflow_type=workflow_type,
                        task_queue=task_queue, attempt=1, history_length=1, inbox=[],
                        history=[(1, "WorkflowStarted", started_event)],
                    )
                )

        start.add_done_callback(hand_over)
        run_id = await asyncio.shield(start)
        hint = result_type
        if hint is None and definition is not None:
            hint = definition.run_return_hint
        return WorkflowHandle(self, id, run_id, result_type=hint, definition=definition)

    async def execute_workflow(
        self, workflow: Callable[..., Any] | type | str, *args: Any, id: str, task_queue: str,
        execution_timeout: timedelta | float | None = None, result_type: Any = None,
    ) -> Any:
        """Start a workflow and wait for its result."""
        handle = await self.start_workflow(
            workflow, *args, id=id, task_queue=task_queue,
            execution_timeout=execution_timeout, result_type=result_type,
        )
        return await handle.result()

    async def start_agent(self, agent: Any, task: str, *, id: str, **options: Any) -> Any:
        """Start a :class:`perdure.agents.Agent` on ``task``; an ``AgentHandle`` (see
        :func:`perdure.agents.start_agent`, which this calls, for the options)."""
        from perdure.agents import start_agent  # the agent layer sits on top of this one

        return await start_agent(self, agent, task, id=id, **options)

    def get_workflow_handle(
        self, workflow_id: str, *, run_id: str | None = None, workflow: Any = None,
        result_type: Any = None,
    ) -> WorkflowHandle[Any]:
        """A handle to an existing workflow (its latest run unless ``run_id`` is given)."""
        definition = None
        if workflow is not None:
            _, definition = self._resolve_workflow(workflow)
        if result_type is None and definition is not None:
            result_type = definition.run_return_hint
        return WorkflowHandle(self, workflow_id, run_id, result_type=result_type,
                              definition=definition)

    async def list_workflows(
        self, *, status: WorkflowStatus | str | None = None, workflow_type: str | None = None,
        started_after: datetime | float | None = None,
        started_before: datetime | float | None = None,
        closed_after: datetime | float | None = None,
        closed_before: datetime | float | None = None,
        parent_workflow_id: str | None = None, parent_run_id: str | None = None,
        search_attributes: dict[str, Any] | None = None,
        limit: int = 100, page_token: str | None = None,
    ) -> WorkflowPage:
        """One page of runs, newest first, filtered by status, type, parent and time ranges.

        ``parent_workflow_id`` (and optionally ``parent_run_id``) lists the children
        that a workflow started. ``search_attributes`` keeps runs whose attributes equal
        every value given (indexed on PostgreSQL).

        Times are aware datetimes or epoch seconds (``*_after`` inclusive, ``*_before``
        exclusive). Pass the page's ``next_page_token`` as ``page_token`` for the next
        page; it is None on the last one. Pages are keyed, not offset: runs started
        meanwhile do not shift them.
        """
        if not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError(f"limit must be a positive whole number, not {limit!r}")
        if parent_run_id is not None and parent_workflow_id is None:
            raise InvalidArgumentError("parent_run_id needs parent_workflow_id as well")
        before = _decode_page_token(page_token) if page_token is not None else None
        records = await self.store.list_runs(
            status=str(WorkflowStatus(status)) if status is not None else None,
            workflow_type=workflow_type, limit=limit + 1,
            started=(_epoch(started_after), _epoch(started_before)),
            closed=(_epoch(closed_after), _epoch(closed_before)),
            before=before,
            parent=(parent_workflow_id, parent_run_id) if parent_workflow_id is not None
            else None,
            search_attributes=check_search_attributes(search_attributes),
        )
        page = WorkflowPage(WorkflowDescription.from_record(r) for r in records[:limit])
        if len(records) > limit:
            last = records[limit - 1]
            page.next_page_token = _encode_page_token(
                (last.created_at, last.workflow_id, last.run_id))
        return page

    async def iter_workflows(self, **filters: Any) -> AsyncIterator[WorkflowDescription]:
        """Every run matching ``list_workflows``' filters, page after page."""
        token: str | None = None
        while True:
            page = await self.list_workflows(**filters, page_token=token)
            for description in page:
                yield description
            token = page.next_page_token
            if token is None:
                return

    # ------------------------------------------------------------------ helpers
    def _signal_name(self, signal: Callable[..., Any] | str) -> str:
        if isinstance(signal, str):
            return signal
        name = handler_name(signal, "signal")
        if name is None:
            raise UnknownHandlerError(
                f"{getattr(signal, '__qualname__', signal)!r} is not a signal handler; mark it "
                "with @workflow.signal or pass the signal name"
            )
        return name

    async def _interface(self, workflow_type: str) -> tuple[set[str], set[str]] | None:
        if workflow_type not in self._interfaces or self._interfaces[workflow_type] is None:
            self._interfaces[workflow_type] = await self.store.workflow_type_interface(
                workflow_type
            )
        return self._interfaces[workflow_type]


class WorkflowHandle(Generic[T]):
    """A workflow addressed by id: await its result, signal, query, cancel, terminate it."""

    def __init__(
        self, client: Client, workflow_id: str, run_id: str | None, *, result_type: Any = None,
        definition: WorkflowDefinition | None = None,
    ) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        """The run this handle was created for (``None``: the latest run)."""
        self._result_type = result_type
        self._definition = definition

    @property
    def _store(self) -> WorkflowStore:
        return self.client.store

    async def result(self, *, timeout: timedelta | float | None = None) -> T:
        """Wait for the run to close; return its result or raise :class:`WorkflowFailureError`."""
        deadline = None
        if timeout is not None:
            deadline = asyncio.get_running_loop().time() + (_seconds(timeout) or 0.0)
        clock = self._store.clock
        if isinstance(clock, VirtualClock):
            clock.result_waiters += 1
        try:
            return await self._wait_result(deadline)
        finally:
            if isinstance(clock, VirtualClock):
                clock.result_waiters -= 1

    async def _wait_result(self, deadline: float | None) -> T:
        run_id = self.run_id
        if run_id is None:
            run_id = (await self._store.get_run(self.workflow_id, None)).run_id
        while True:  # each run of a chain (continue-as-new, retries) in turn
            record = await self._wait_run(run_id, deadline)
            if record.next_run_id is None and record.status in _MAY_CONTINUE:
                # the outcome came without a read: read whether another run carries on
                record = await self._store.get_run(self.workflow_id, run_id)
            if record.next_run_id is None:
                return self._outcome(record)
            run_id = record.next_run_id

    async def _wait_run(self, run_id: str, deadline: float | None) -> RunRecord:
        """Wait for one run to close; its record."""
        notifier = self._store.notifier
        backoff = notifier.first_poll
        # woken when this run closes (in this process, or by NOTIFY from another);
        # the back-off poll covers SQLite files shared between processes
        with notifier.watch_run(run_id) as closed:
            while True:
                closed.event.clear()
                record = await self._store.get_run(self.workflow_id, run_id)
                if record.status != WorkflowStatus.RUNNING:
                    return record
                wait = backoff
                if deadline is not None:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"workflow {self.workflow_id!r} did not finish within the timeout"
                        )
                    wait = min(wait, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.event.wait(), wait)
                if closed.outcome is not None:  # closed by this process: no need to read it
                    status, result, failure = closed.outcome
                    return dataclasses.replace(record, status=status, result=result,
                                               failure=failure)
                backoff = min(backoff * 2, notifier.poll_interval)

    def _outcome(self, record: RunRecord) -> T:
        status = WorkflowStatus(record.status)
        if status == WorkflowStatus.COMPLETED:
            assert record.result is not None
            value: T = self.client.converter.decode(
                record.result, self._result_type or Any,
                what=f"result of workflow {self.workflow_id!r}",
            )
            return value
        cause: BaseException
        if record.failure:
            failure = _failure_decoder.decode(record.failure)
            cause = exception_from_failure(failure)
        elif status == WorkflowStatus.CANCELED:
            cause = CancelledFailure("workflow was cancelled")
        elif status == WorkflowStatus.TIMED_OUT:
            cause = TimeoutFailure("workflow execution timed out", timeout_type="execution")
        else:
            cause = TerminatedFailure("workflow was terminated")
        raise WorkflowFailureError(
            f"workflow {self.workflow_id!r} (run {record.run_id}) {status.value}: {cause}",
            status=status.value, cause=cause,
        )

    async def _current_run(self) -> RunRecord:
        """This handle's run, or the run that continues it (across continue-as-new)."""
        record = await self._store.get_run(self.workflow_id, self.run_id)
        while record.status != WorkflowStatus.RUNNING and record.next_run_id:
            record = await self._store.get_run(self.workflow_id, record.next_run_id)
        return record

    async def signal(self, signal: Callable[..., Any] | str, *args: Any) -> None:
        """Send a signal; durable once this returns, even if no worker is running.

        A handle's signals, queries, cancellation, termination and ``result()`` follow
        its run across continue-as-new; ``describe()`` and ``fetch_history()`` show
        the handle's own run.
        """
        name = self.client._signal_name(signal)
        if isinstance(signal, str):
            record = await self._current_run()
            interface = await self.client._interface(record.workflow_type)
            if interface is not None and name not in interface[0] and "*" not in interface[0]:
                raise UnknownHandlerError(
                    f"workflow type {record.workflow_type!r} defines no signal {name!r}; it "
                    f"defines: {', '.join(sorted(interface[0])) or 'no signals'}"
                )
        data = self.client.converter.encode_args(args, what=f"signal {name!r}")
        event = SignalReceived(name=name, args=msgspec.Raw(data))
        await self._store.deliver_event(self.workflow_id, self.run_id, encode_event(event))

    async def query(
        self, query: Callable[..., Any] | str, *args: Any, timeout: timedelta | float = 5.0,
        result_type: Any = None,
    ) -> Any:
        """Ask the workflow's current state.

        Given the query method (``Workflow.status``), the client replays the
        history itself and answers at once, with no worker needed. Given a name,
        a worker serving the task queue answers; :class:`QueryTimeoutError` if
        none does within ``timeout``.
        """
        converter = self.client.converter
        args_data = converter.encode_args(args, what="query")
        record = await self._current_run()
        if not isinstance(query, str):
            name = handler_name(query, "query")
            definition = get_workflow_definition(query)
            if name is None or definition is None:
                raise UnknownHandlerError(
                    f"{getattr(query, '__qualname__', query)!r} is not a query handler; mark it "
                    "with @workflow.query or pass the query name"
                )
            if definition.name != record.workflow_type:
                raise UnknownHandlerError(
                    f"query {name!r} belongs to workflow {definition.name!r}, but "
                    f"{self.workflow_id!r} is a {record.workflow_type!r}"
                )
            rows = await self._store.get_history(record.workflow_id, record.run_id)
            instance = WorkflowInstance(definition, workflow_id=record.workflow_id,
                                        run_id=record.run_id, converter=converter)
            try:
                instance.replay_for_query([decode_event(data) for _, _, data in rows])
                replayed = instance.query(name, args_data)
            finally:
                instance.close()  # a throwaway: its coroutines close now, not at some GC
            hint = result_type if result_type is not None else definition.queries[name].return_hint
            return converter.decode(replayed, hint, what=f"result of query {name!r}")
        interface = await self.client._interface(record.workflow_type)
        if interface is not None and query not in interface[1]:
            raise UnknownHandlerError(
                f"workflow type {record.workflow_type!r} defines no query {query!r}; it "
                f"defines: {', '.join(sorted(interface[1])) or 'no queries'}"
            )
        query_id = await self._store.enqueue_query(
            record.workflow_id, record.run_id, record.task_queue, query, args_data
        )
        seconds = _seconds(timeout) or 5.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        backoff = 0.005
        while True:
            remaining = deadline - loop.time()
            done, answer, error = await self._store.take_query_answer(
                query_id, give_up=remaining <= 0
            )
            if done:
                if error is not None:
                    raise QueryRejectedError(f"query {query!r} failed: {error}")
                assert answer is not None
                return converter.decode(answer, result_type or Any,
                                        what=f"result of query {query!r}")
            if remaining <= 0:
                raise QueryTimeoutError(
                    f"no worker answered query {query!r} for workflow {self.workflow_id!r} "
                    f"within {seconds:g}s; start a worker serving task queue "
                    f"{record.task_queue!r}, or query with the workflow's method "
                    "(handle.query(MyWorkflow.my_query)) to answer it without a worker"
                )
            await self._store.notifier.wait(["query_answer"], timeout=min(backoff, remaining))
            backoff = min(backoff * 2, 0.25)

    async def execute_update(
        self, update: Callable[..., Any] | str, *args: Any, update_id: str | None = None,
        timeout: timedelta | float | None = None, result_type: Any = None,
    ) -> Any:
        """Send an update and wait for the handler's return value.

        The workflow validates it first: a rejection raises :class:`UpdateRejectedError`
        and leaves no trace in history. Once accepted, the update is durable: it
        completes even if workers crash. A handler that raises gives
        :class:`UpdateFailedError`. Pass the same ``update_id`` to ask again after a lost
        connection without running the update twice.
        """
        name, hint = self._update_name(update)
        data = self.client.converter.encode_args(args, what=f"update {name!r}")
        update_id = update_id or str(uuid.uuid4())
        event = UpdateRequested(update_id=update_id, name=name, args=msgspec.Raw(data))
        await self._store.request_update(self.workflow_id, self.run_id, update_id, name,
                                         encode_event(event))
        deadline = None
        if timeout is not None:
            deadline = asyncio.get_running_loop().time() + (_seconds(timeout) or 0.0)
        return await self._update_outcome(update_id, name, result_type or hint, deadline)

    def _update_name(self, update: Callable[..., Any] | str) -> tuple[str, Any]:
        if isinstance(update, str):
            return update, Any
        name = handler_name(update, "update")
        definition = get_workflow_definition(update)
        if name is None or definition is None:
            raise UnknownHandlerError(
                f"{getattr(update, '__qualname__', update)!r} is not an update handler; mark "
                "it with @workflow.update or pass the update's name"
            )
        return name, definition.updates[name].return_hint

    async def _update_outcome(
        self, update_id: str, name: str, hint: Any, deadline: float | None
    ) -> Any:
        notifier = self._store.notifier
        backoff = notifier.first_poll
        loop = asyncio.get_running_loop()
        while True:
            row = await self._store.get_update(self.workflow_id, update_id)
            assert row is not None
            state, result, failure = row
            if state == "completed" and failure is None:
                return self.client.converter.decode(result or b"null", hint,
                                                    what=f"result of update {name!r}")
            if state in ("completed", "rejected", "failed"):
                cause = exception_from_failure(_failure_decoder.decode(failure or b"{}"))
                error = UpdateRejectedError if state == "rejected" else UpdateFailedError
                raise error(
                    f"update {name!r} ({update_id}) of workflow {self.workflow_id!r} "
                    f"{'was rejected' if state == 'rejected' else 'failed'}: {cause}",
                    update_id=update_id, cause=cause,
                )
            wait = backoff
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(
                        f"update {name!r} ({update_id}) of workflow {self.workflow_id!r} did "
                        "not complete within the timeout; it is "
                        f"{'accepted and still running' if state == 'accepted' else 'waiting for a worker'}"
                        "; call execute_update again with the same update_id to keep waiting"
                    )
                wait = min(wait, remaining)
            await notifier.wait(["update"], timeout=wait)
            backoff = min(backoff * 2, notifier.poll_interval)

    async def cancel(self, reason: str = "") -> None:
        """Request cancellation: the workflow sees ``asyncio.CancelledError`` at its awaits."""
        event = CancelRequested(reason=reason)
        await self._store.deliver_event(self.workflow_id, self.run_id, encode_event(event))

    async def terminate(self, reason: str = "") -> None:
        """Close the workflow at once, without running its code; pending work is dropped."""
        event = WorkflowTerminated(reason=reason)
        failure = Failure(type="TerminatedFailure", message=reason or "terminated",
                          kind="terminated")
        await self._store.terminate(
            self.workflow_id, self.run_id, encode_event(event), msgspec.json.encode(failure)
        )

    async def reset(
        self, *, to_event: int | None = None, to_last_workflow_task: bool = False,
        reason: str = "", reapply_signals: bool = True,
    ) -> WorkflowHandle[T]:
        """End this run and start a new run of the same id from its first ``to_event``
        events: the activations after that point run again, on the code the workers run
        now (re-run an agent from a chosen step after its prompt or code changed).

        A cut inside an activation's commands moves back to before that activation, so
        that it runs again. Activities and timers the kept events started run again;
        child workflows and signals to other workflows are not repeated, their outcomes
        are delivered again; signals received after the cut too, unless
        ``reapply_signals`` is False. The old run is kept, closed as ``reset`` (a
        ``WorkflowReset`` event ends its history); handles follow to the new run.
        """
        return await self._reset(None, to_event=to_event, reason=reason,
                                 to_last_workflow_task=to_last_workflow_task,
                                 reapply_signals=reapply_signals, edit_results=None,
                                 task_queue=None)

    async def fork(
        self, new_id: str, *, to_event: int | None = None, to_last_workflow_task: bool = False,
        edit_results: dict[int, Any] | None = None, reapply_signals: bool = True,
        task_queue: str | None = None,
    ) -> WorkflowHandle[T]:
        """Start workflow ``new_id`` from this run's first ``to_event`` events, leaving this
        run untouched (see :meth:`reset` for what runs again).

        ``edit_results`` replaces recorded results, by event number (an
        ``ActivityCompleted`` or ``ChildWorkflowCompleted``): fork at a model call with
        another answer, and see what the agent would have done. Without ``to_event``,
        the fork starts right after the last edited event.
        """
        if not new_id or not isinstance(new_id, str):
            raise InvalidArgumentError("fork needs a non-empty string id for the new workflow")
        if new_id == self.workflow_id:
            raise InvalidArgumentError("a fork needs another workflow id; use reset() to "
                                       "restart this workflow from an earlier point")
        if to_event is None and not to_last_workflow_task and edit_results:
            to_event = max(edit_results)
        return await self._reset(new_id, to_event=to_event, reason="",
                                 to_last_workflow_task=to_last_workflow_task,
                                 reapply_signals=reapply_signals, edit_results=edit_results,
                                 task_queue=task_queue)

    async def _reset(
        self, new_id: str | None, *, to_event: int | None, to_last_workflow_task: bool,
        reason: str, reapply_signals: bool, edit_results: dict[int, Any] | None,
        task_queue: str | None,
    ) -> WorkflowHandle[T]:
        from perdure.engine import cut_point, plan_reset
        from perdure.store._records import ResetRecord

        edits = {int(n): self.client.converter.encode(v, what=f"edited result of event {n}")
                 for n, v in (edit_results or {}).items()}
        for attempt in range(5):
            record = await self._store.get_run(self.workflow_id, self.run_id)
            rows = await self._store.get_history(record.workflow_id, record.run_id)
            events = [decode_event(data) for _, _, data in rows]
            cut = cut_point(events, to_event, to_last_workflow_task=to_last_workflow_task)
            plan = plan_reset(events, cut, edits=edits, reapply_signals=reapply_signals,
                              fork=new_id is not None)
            new_run_id = str(uuid.uuid4())
            try:
                await self._store.reset_workflow(ResetRecord(
                    source_workflow_id=record.workflow_id, source_run_id=record.run_id,
                    source_length=len(rows), workflow_id=new_id or record.workflow_id,
                    run_id=new_run_id, to_event=cut, events=plan.events,
                    activities=plan.activities, timers=plan.timers, inbox=plan.inbox,
                    open_children=plan.open_children, needs_task=plan.has_tail,
                    reset_event=None if new_id is not None else encode_event(WorkflowReset(
                        to_event=cut, new_run_id=new_run_id, reason=reason)),
                    task_queue=task_queue, reapply_signals=reapply_signals,
                ))
            except InvalidArgumentError as exc:
                if "moved on while it was being reset" not in str(exc) or attempt == 4:
                    raise
                continue
            return WorkflowHandle(self.client, new_id or record.workflow_id, new_run_id,
                                  result_type=self._result_type, definition=self._definition)
        raise AssertionError("unreachable")

    async def stream(
        self, *, after: int = 0, follow: bool = True, result_type: Any = None,
    ) -> AsyncIterator[StreamEvent]:
        """The events the workflow and its activities publish (``workflow.publish``,
        ``activity.publish``), in order, from any process. With ``follow``, waits for
        more until the workflow (its last run, across continue-as-new) has closed and
        every event is read. ``after`` is the id of the last event already seen."""
        store = self._store
        notifier = store.notifier
        backoff = notifier.first_poll
        while True:
            batch = await store.read_stream(self.workflow_id, after, 500)
            for event_id, run_id, data in batch:
                after = event_id
                yield StreamEvent(event_id, run_id, self.client.converter.decode(
                    data, result_type or Any, what="stream event"))
            if batch:
                backoff = notifier.first_poll
                continue
            if not follow:
                return
            record = await self._current_run()
            if record.status != WorkflowStatus.RUNNING:
                # closed: one last read for what was published with the close
                for event_id, run_id, data in await store.read_stream(
                        self.workflow_id, after, 10_000):
                    yield StreamEvent(event_id, run_id, self.client.converter.decode(
                        data, result_type or Any, what="stream event"))
                return
            await notifier.wait(["stream", "closed"], timeout=backoff)
            backoff = min(backoff * 2, notifier.poll_interval)

    async def describe(self) -> WorkflowDescription:
        """The run's status, history length and pending work."""
        record = await self._store.get_run(self.workflow_id, self.run_id, detail=True)
        return WorkflowDescription.from_record(record)

    async def fetch_history(self) -> WorkflowHistory:
        """The run's recorded events."""
        record = await self._store.get_run(self.workflow_id, self.run_id)
        rows = await self._store.get_history(record.workflow_id, record.run_id)
        return WorkflowHistory(record.workflow_id, record.run_id,
                               [decode_event(data) for _, _, data in rows])


async def _check_schema_version(store: WorkflowStore) -> None:
    version = await store.schema_version()
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database at {store.url} has Perdure schema version {version}, newer than "
            f"the {SCHEMA_VERSION} this version of Perdure knows; upgrade Perdure"
        )
    if version < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database at {store.url} has Perdure schema version {version}; this version "
            f"of Perdure needs {SCHEMA_VERSION}: run `perdure db migrate` (or connect with "
            "migrate=True)"
        )
