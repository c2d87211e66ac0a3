"""The client: start workflows, address them by id, list them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from perdure._arguments import check_enum, check_retry_policy
from perdure._attributes import check_memo, check_search_attributes
from perdure._clock import Clock
from perdure._converter import PayloadConverter
from perdure._cron import CronSchedule
from perdure._errors import (
    SchemaVersionError,
    UnknownHandlerError,
    UnknownWorkflowTypeError,
)
from perdure._identifiers import check_name, check_optional_name, shown
from perdure._retry import RetryPolicy
from perdure.client._arguments import check_args, list_filters
from perdure.client._async_activity import AsyncActivityHandle, async_activity_handle
from perdure.client._handle import WorkflowHandle
from perdure.client._start import commit_start
from perdure.client._types import (
    IdConflictPolicy,
    IdReusePolicy,
    WorkflowDescription,
    WorkflowPage,
    WorkflowStatus,
    encode_fitting,
    encode_page_token,
)
from perdure.client._types import seconds as _seconds
from perdure.client._update import (
    WithStartWorkflowOperation,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)
from perdure.history import (
    Failure,
    SignalReceived,
    UpdateRequested,
    WorkflowStarted,
    WorkflowTerminated,
    encode_event,
)
from perdure.store import WorkflowStore, open_store
from perdure.store._records import StartWorkflowRecord, WorkflowTaskClaim
from perdure.store._schema import SCHEMA_VERSION
from perdure.workflow._definition import (
    WorkflowDefinition,
    get_workflow_definition,
    handler_name,
)

__all__ = ["Client"]

DEFAULT_DATABASE_URL = "sqlite:///perdure.db"
EAGER_START_LEASE = 5.0
"""Seconds an eagerly started run's first task stays reserved for the in-process worker."""


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
        if url is None:
            url = os.environ.get("PERDURE_DATABASE_URL") or DEFAULT_DATABASE_URL
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
            return check_name(workflow, "workflow type"), None
        definition = get_workflow_definition(workflow)
        if definition is None:
            raise UnknownWorkflowTypeError(
                f"{shown(getattr(workflow, '__qualname__', workflow))} is not a workflow: pass a "
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
        start_signal: Callable[..., Any] | str | None = None,
        start_signal_args: Sequence[Any] = (),
        cron_schedule: str | None = None,
    ) -> WorkflowHandle[Any]:
        """Start a workflow run; durable once this returns, whether or not a worker runs.

        With ``start_signal`` (Temporal's signal-with-start spelling), a running run of
        ``id`` is signalled instead of failing the start, and a new run gets the signal
        before its first activation, atomically (see :meth:`signal_with_start`).

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

        With ``cron_schedule`` (five fields in UTC, such as ``"0 * * * *"``, or
        ``@hourly``, ``@daily``, ``@every 15m``...), the workflow is a cron chain, as in
        Temporal: the run starts now but its code first runs at the schedule's next
        tick; each time a run completes, fails or times out, the next run (same input,
        memo, search attributes and task queue; a fresh history; handed
        ``workflow.get_last_completion_result()`` and ``workflow.get_last_failure()``)
        starts in the same transaction and runs at the following tick (ticks missed
        meanwhile are skipped). ``retry_policy`` retries a failed run before the chain
        moves on; ``execution_timeout`` bounds the whole chain. Terminating or cancelling
        the workflow ends the chain; ``result()`` follows it, so it returns only then.
        """
        return await self._start(
            workflow, args, id=id, task_queue=task_queue, execution_timeout=execution_timeout,
            id_reuse_policy=check_enum(IdReusePolicy, id_reuse_policy, "id_reuse_policy"),
            result_type=result_type,
            signal=(self._signal_event(start_signal,
                                       check_args(start_signal_args, "start_signal_args"))
                    if start_signal is not None else None),
            id_conflict_policy=check_enum(IdConflictPolicy, id_conflict_policy,
                                          "id_conflict_policy"), memo=memo,
            search_attributes=search_attributes, run_timeout=run_timeout,
            retry_policy=retry_policy, cron_schedule=cron_schedule,
        )

    def _signal_event(self, signal: Callable[..., Any] | str, args: tuple[Any, ...]) -> bytes:
        name = self._signal_name(signal)
        return encode_event(SignalReceived(
            name=name, args=msgspec.Raw(self._signal_args(signal, name, args))))

    def _signal_args(self, signal: Callable[..., Any] | str, name: str,
                     args: Sequence[Any]) -> bytes:
        """A signal's arguments, encoded; given the handler, checked against it first."""
        definition = None if isinstance(signal, str) else get_workflow_definition(signal)
        handler = definition.signals.get(name) if definition is not None else None
        if handler is None:
            return self.converter.encode_args(args, what=f"signal {name!r}")
        return encode_fitting(self.converter, args, handler.method, handler.parameter_hints,
                              what=f"signal {name!r}")

    def _update_args(self, update: Callable[..., Any] | str, name: str,
                     args: Sequence[Any]) -> bytes:
        """An update's arguments, encoded; given the handler, checked against it first."""
        definition = None if isinstance(update, str) else get_workflow_definition(update)
        handler = definition.updates.get(name) if definition is not None else None
        if handler is None:
            return self.converter.encode_args(args, what=f"update {name!r}")
        return encode_fitting(self.converter, args, handler.method, handler.parameter_hints,
                              what=f"update {name!r}")

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
        id_reuse_policy: IdReusePolicy = IdReusePolicy.ALLOW_DUPLICATE,
        run_timeout: timedelta | float | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> WorkflowHandle[Any]:
        """Signal the running workflow ``id``, or start it and deliver the signal first,
        atomically. Once the id's last run has closed, ``id_reuse_policy`` decides whether
        a new run may start (refused: :class:`WorkflowAlreadyStartedError`, nothing sent)."""
        return await self._start(
            workflow, args, id=id, task_queue=task_queue, execution_timeout=execution_timeout,
            id_reuse_policy=check_enum(IdReusePolicy, id_reuse_policy, "id_reuse_policy"),
            result_type=result_type,
            signal=self._signal_event(signal, check_args(signal_args, "signal_args")), memo=memo,
            search_attributes=search_attributes, run_timeout=run_timeout,
            retry_policy=retry_policy,
        )

    async def start_update_with_start_workflow(
        self, update: Callable[..., Any] | str, *args: Any,
        start_workflow_operation: WithStartWorkflowOperation,
        wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED,
        id: str | None = None, update_id: str | None = None, result_type: Any = None,
    ) -> WorkflowUpdateHandle[Any]:
        """Send an update to workflow ``start_workflow_operation.id``, starting it first if
        it is not running, in one transaction (Temporal's update-with-start); the update's
        handle once it reached ``wait_for_stage``. The operation's ``id_conflict_policy``
        says what a running run means: ``USE_EXISTING`` updates it, ``FAIL`` raises
        :class:`WorkflowAlreadyStartedError`. Asking again with the same ``id`` is
        the same update. ``await start_workflow_operation.workflow_handle()`` gives the
        workflow's handle."""
        op = start_workflow_operation
        probe: WorkflowHandle[Any] = WorkflowHandle(self, op.id, None)
        name, hint = probe._update_name(update)
        update_id = check_optional_name(update_id or id, "update_id") or str(uuid.uuid4())
        wait_for_stage = check_enum(WorkflowUpdateStage, wait_for_stage, "wait_for_stage")
        event = UpdateRequested(update_id=update_id, name=name,
                                args=msgspec.Raw(self._update_args(update, name, args)))
        try:
            handle = await self._start(
                op.workflow, op.args, id=op.id, task_queue=op.task_queue,
                execution_timeout=op.execution_timeout, id_reuse_policy=op.id_reuse_policy,
                result_type=op.result_type, signal=None,
                id_conflict_policy=op.id_conflict_policy, memo=op.memo,
                search_attributes=op.search_attributes, run_timeout=op.run_timeout,
                retry_policy=op.retry_policy,
                update_request=(update_id, name, encode_event(event)),
            )
        except BaseException as exc:
            op._fail(exc)
            raise
        op._set(handle)
        update_handle: WorkflowUpdateHandle[Any] = WorkflowUpdateHandle(
            self, op.id, update_id, name=name, workflow_run_id=handle.run_id,
            result_type=result_type or hint)
        await update_handle.wait_for_stage(wait_for_stage)
        return update_handle

    async def execute_update_with_start_workflow(
        self, update: Callable[..., Any] | str, *args: Any,
        start_workflow_operation: WithStartWorkflowOperation,
        id: str | None = None, update_id: str | None = None, result_type: Any = None,
    ) -> Any:
        """Update-with-start (see :meth:`start_update_with_start_workflow`), waiting for the
        update's result."""
        handle = await self.start_update_with_start_workflow(
            update, *args, start_workflow_operation=start_workflow_operation, id=id,
            update_id=update_id, result_type=result_type,
            wait_for_stage=WorkflowUpdateStage.ADMITTED)
        return await handle.result()

    async def _start(
        self, workflow: Any, args: tuple[Any, ...], *, id: str, task_queue: str,
        execution_timeout: timedelta | float | None, id_reuse_policy: IdReusePolicy,
        result_type: Any, signal: bytes | None,
        id_conflict_policy: IdConflictPolicy = IdConflictPolicy.FAIL,
        memo: dict[str, Any] | None = None,
        search_attributes: dict[str, Any] | None = None,
        run_timeout: timedelta | float | None = None,
        retry_policy: RetryPolicy | None = None,
        update_request: tuple[str, str, bytes] | None = None,
        cron_schedule: str | None = None,
    ) -> WorkflowHandle[Any]:
        check_name(id, "workflow id")
        check_name(task_queue, "task_queue")
        check_retry_policy(retry_policy)
        workflow_type, definition = self._resolve_workflow(workflow)
        if definition is not None:
            data = encode_fitting(self.converter, args, definition.run_method,
                                  definition.run_parameter_hints,
                                  what=f"workflow {workflow_type!r}")
        else:
            data = self.converter.encode_args(args, what=f"workflow {workflow_type!r}")
        schedule = CronSchedule(cron_schedule) if cron_schedule is not None else None
        now = self.store.clock.now()
        first_task_at = schedule.first_time(now) if schedule is not None else None
        timeout = _seconds(execution_timeout, "execution_timeout")
        memo = check_memo(memo, converter=self.converter) or None
        search_attributes = check_search_attributes(
            search_attributes, max_bytes=self.converter.max_payload_bytes) or None
        started = WorkflowStarted(
            workflow_type=workflow_type, task_queue=task_queue, input=msgspec.Raw(data),
            started_at=now, execution_timeout=timeout, memo=memo,
            search_attributes=search_attributes,
            run_timeout=_seconds(run_timeout, "run_timeout"),
            retry_policy=retry_policy.to_dict() if retry_policy is not None else None,
            cron_schedule=cron_schedule,
        )
        eager = None
        if signal is None and update_request is None and schedule is None:
            # (a cron run's code runs at its first tick, not at once)
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
        start = asyncio.ensure_future(commit_start(
            self.store, StartWorkflowRecord(
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
                update_request=update_request,
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
                cron_schedule=cron_schedule, first_task_at=first_task_at,
            )
        ))

        def hand_over(done: asyncio.Future[tuple[str, bool]]) -> None:
            """Give the eager worker what the start committed for it, even if our caller
            was cancelled meanwhile (a cancelled caller must not strand the run)."""
            committed = not done.cancelled() and done.exception() is None
            if eager is None:
                return
            if prepared is not None:
                eager.finish_eager_start(
                    prepared, committed=committed and done.result() == (new_run_id, True))
            elif committed:
                eager.run_eager_start(
                    WorkflowTaskClaim(
                        workflow_id=id, run_id=done.result()[0], workflow_type=workflow_type,
                        task_queue=task_queue, attempt=1, history_length=1, inbox=[],
                        history=[(1, "WorkflowStarted", started_event)],
                    )
                )

        start.add_done_callback(hand_over)
        run_id, _ = await asyncio.shield(start)
        hint = result_type
        if hint is None and definition is not None:
            hint = definition.run_return_hint
        return WorkflowHandle(self, id, run_id, result_type=hint, definition=definition,
                              first_execution_run_id=run_id)

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
        result_type: Any = None, first_execution_run_id: str | None = None,
    ) -> WorkflowHandle[Any]:
        """A handle to an existing workflow (its latest run unless ``run_id`` is given)."""
        check_name(workflow_id, "workflow_id")
        check_optional_name(run_id, "run_id")
        check_optional_name(first_execution_run_id, "first_execution_run_id")
        definition = None
        if workflow is not None:
            _, definition = self._resolve_workflow(workflow)
        if result_type is None and definition is not None:
            result_type = definition.run_return_hint
        return WorkflowHandle(self, workflow_id, run_id, result_type=result_type,
                              definition=definition,
                              first_execution_run_id=first_execution_run_id)

    def get_async_activity_handle(
        self, *, task_token: bytes | None = None, workflow_id: str | None = None,
        run_id: str | None = None, activity_id: str | None = None,
    ) -> AsyncActivityHandle:
        """A handle to complete, fail or heartbeat an activity that called
        ``activity.raise_complete_async()``: by its attempt's ``task_token``, or by
        ``workflow_id``, ``activity_id`` and optionally ``run_id`` (the current attempt)."""
        return async_activity_handle(self, task_token=task_token, workflow_id=workflow_id,
                                     run_id=run_id, activity_id=activity_id)

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
        records = await self.store.list_runs(**list_filters(
            status=status, workflow_type=workflow_type, started_after=started_after,
            started_before=started_before, closed_after=closed_after,
            closed_before=closed_before, parent_workflow_id=parent_workflow_id,
            parent_run_id=parent_run_id, search_attributes=search_attributes, limit=limit,
            page_token=page_token))
        page = WorkflowPage(WorkflowDescription.from_record(r) for r in records[:limit])
        if len(records) > limit:
            last = records[limit - 1]
            page.next_page_token = encode_page_token(
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
            return check_name(signal, "signal name")
        name = handler_name(signal, "signal")
        if name is None:
            raise UnknownHandlerError(
                f"{shown(getattr(signal, '__qualname__', signal))} is not a signal handler; mark it "
                "with @workflow.signal or pass the signal name"
            )
        return name

    async def _interface(self, workflow_type: str) -> tuple[set[str], set[str]] | None:
        if workflow_type not in self._interfaces or self._interfaces[workflow_type] is None:
            self._interfaces[workflow_type] = await self.store.workflow_type_interface(
                workflow_type
            )
        return self._interfaces[workflow_type]


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
