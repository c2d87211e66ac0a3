"""A workflow addressed by id: its result, signals, queries, updates, cancel, reset."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from perdure._arguments import check_bool, check_enum, check_whole_number
from perdure._clock import VirtualClock
from perdure._errors import (
    CancelledFailure,
    InvalidArgumentError,
    QueryRejectedError,
    QueryTimeoutError,
    TerminatedFailure,
    TimeoutFailure,
    UnknownHandlerError,
    WorkflowFailureError,
)
from perdure._failure import exception_from_failure
from perdure._identifiers import check_name, check_optional_name, check_text, shown
from perdure.client._types import (
    StreamEvent,
    WorkflowDescription,
    WorkflowHistory,
    WorkflowStatus,
)
from perdure.client._types import seconds as _seconds
from perdure.client._update import WorkflowUpdateHandle, WorkflowUpdateStage
from perdure.history import (
    CancelRequested,
    Failure,
    SignalReceived,
    UpdateRequested,
    WorkflowReset,
    WorkflowTerminated,
    decode_event,
    encode_event,
)
from perdure.store import WorkflowStore
from perdure.store._records import RunRecord
from perdure.workflow._definition import (
    WorkflowDefinition,
    get_workflow_definition,
    handler_name,
)
from perdure.workflow._query import query_instance

if TYPE_CHECKING:
    from perdure.client._client import Client

__all__ = ["WorkflowHandle"]

T = TypeVar("T")

_failure_decoder = msgspec.json.Decoder(Failure)
_MAY_CONTINUE = ("continued_as_new", "failed", "timed_out", "reset")
"""Statuses after which another run of the chain may carry on (``next_run_id``)."""


class WorkflowHandle(Generic[T]):
    """A workflow addressed by id: await its result, signal, query, cancel, terminate it."""

    def __init__(
        self, client: Client, workflow_id: str, run_id: str | None, *, result_type: Any = None,
        definition: WorkflowDefinition | None = None, result_run_id: str | None = None,
        first_execution_run_id: str | None = None,
    ) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        """The run this handle was created for (``None``: the latest run)."""
        self.result_run_id = result_run_id if result_run_id is not None else run_id
        """The run ``result()`` starts from (Temporal's name): the started run, or the
        ``run_id`` given to ``get_workflow_handle``; ``None``: the latest run."""
        self.first_execution_run_id = first_execution_run_id
        """The first run of the chain this handle started (``start_workflow`` sets it)."""
        self._result_type = result_type
        self._definition = definition

    @property
    def _store(self) -> WorkflowStore:
        return self.client.store

    async def result(self, *, timeout: timedelta | float | None = None,
                     follow_runs: bool = True) -> T:
        """Wait for the run to close; return its result or raise :class:`WorkflowFailureError`.

        With ``follow_runs`` (the default), a run that continues as new, or is retried or
        reset, is followed to the run that carries on; without, the outcome of
        ``result_run_id``'s run itself is returned (a continuation raises)."""
        deadline = None
        wait = _seconds(timeout, "timeout", zero=True)
        check_bool(follow_runs, "follow_runs")
        if wait is not None:
            deadline = asyncio.get_running_loop().time() + wait
        clock = self._store.clock
        if isinstance(clock, VirtualClock):
            clock.result_waiters += 1
        try:
            return await self._wait_result(deadline, follow_runs=follow_runs)
        finally:
            if isinstance(clock, VirtualClock):
                clock.result_waiters -= 1

    async def _wait_result(self, deadline: float | None, *, follow_runs: bool = True) -> T:
        run_id = self.result_run_id
        if run_id is None:
            run_id = (await self._store.get_run(self.workflow_id, None)).run_id
        while True:  # each run of a chain (continue-as-new, retries) in turn
            record = await self._wait_run(run_id, deadline)
            if not follow_runs:
                return self._outcome(record)
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
        elif status in (WorkflowStatus.CONTINUED_AS_NEW, WorkflowStatus.RESET):
            raise WorkflowFailureError(
                f"workflow {self.workflow_id!r} (run {record.run_id}) {status.value}: run "
                f"{record.next_run_id} carries on; call result(follow_runs=True) to wait for "
                "the chain's outcome", status=status.value, cause=None)
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
        data = self.client._signal_args(signal, name, args)
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
        seconds = _seconds(timeout, "timeout") or 5.0
        if isinstance(query, str):
            check_name(query, "query name")
        args_data = converter.encode_args(args, what="query")
        record = await self._current_run()
        if not isinstance(query, str):
            name = handler_name(query, "query")
            definition = get_workflow_definition(query)
            if name is None or definition is None:
                raise UnknownHandlerError(
                    f"{shown(getattr(query, '__qualname__', query))} is not a query handler; mark it "
                    "with @workflow.query or pass the query name"
                )
            if definition.name != record.workflow_type:
                raise UnknownHandlerError(
                    f"query {name!r} belongs to workflow {definition.name!r}, but "
                    f"{self.workflow_id!r} is a {record.workflow_type!r}"
                )
            # the history and the inbox at one instant: every acknowledged signal,
            # update and result counts, whether or not a workflow task ran it yet
            snapshot = await self._store.read_snapshot(record.workflow_id, record.run_id,
                                                       history=True)
            instance = query_instance(
                definition, workflow_id=record.workflow_id, run_id=record.run_id,
                converter=converter,
                history=[decode_event(data) for data in snapshot.history or ()],
                pending=[decode_event(data) for _, data in snapshot.inbox],
                now=self._store.clock.now(),
            )
            try:
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
        id: str | None = None, timeout: timedelta | float | None = None,
        result_type: Any = None,
    ) -> Any:
        """Send an update and wait for the handler's return value.

        The workflow validates it first: a rejection raises :class:`UpdateRejectedError`
        and leaves no trace in history. Once accepted, the update is durable: it
        completes even if workers crash. A handler that raises gives
        :class:`UpdateFailedError`. Pass the same ``update_id`` (``id``, Temporal's
        name) to ask again after a lost connection without running the update twice.
        """
        _seconds(timeout, "timeout", zero=True)  # checked before the update is sent
        handle = await self.start_update(
            update, *args, update_id=update_id, id=id, result_type=result_type,
            wait_for_stage=WorkflowUpdateStage.ADMITTED)
        return await handle.result(timeout=timeout)

    async def start_update(
        self, update: Callable[..., Any] | str, *args: Any,
        wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED,
        update_id: str | None = None, id: str | None = None,
        timeout: timedelta | float | None = None, result_type: Any = None,
    ) -> WorkflowUpdateHandle[Any]:
        """Send an update and return its handle once it reached ``wait_for_stage``:
        ``ADMITTED`` (durably requested), ``ACCEPTED`` (the default: validated and
        recorded; a rejection raises :class:`UpdateRejectedError` here) or ``COMPLETED``.
        ``await handle.result()`` gives the value."""
        name, hint = self._update_name(update)
        data = self.client._update_args(update, name, args)
        update_id = check_optional_name(update_id or id, "update_id") or str(uuid.uuid4())
        stage = check_enum(WorkflowUpdateStage, wait_for_stage, "wait_for_stage")
        wait = _seconds(timeout, "timeout", zero=True)
        event = UpdateRequested(update_id=update_id, name=name, args=msgspec.Raw(data))
        run_id = await self._store.request_update(self.workflow_id, self.run_id, update_id,
                                                  name, encode_event(event))
        handle: WorkflowUpdateHandle[Any] = WorkflowUpdateHandle(
            self.client, self.workflow_id, update_id, name=name, workflow_run_id=run_id,
            result_type=result_type or hint)
        deadline = None
        if wait is not None:
            deadline = asyncio.get_running_loop().time() + wait
        await handle.wait_for_stage(stage, deadline=deadline)
        return handle

    def get_update_handle(self, update_id: str, *, result_type: Any = None,
                          ) -> WorkflowUpdateHandle[Any]:
        """A handle to an update sent earlier (by any client), by its id."""
        check_name(update_id, "update_id")
        return WorkflowUpdateHandle(self.client, self.workflow_id, update_id,
                                    workflow_run_id=self.run_id, result_type=result_type)

    def _update_name(self, update: Callable[..., Any] | str) -> tuple[str, Any]:
        if isinstance(update, str):
            return check_name(update, "update name"), Any
        name = handler_name(update, "update")
        definition = get_workflow_definition(update)
        if name is None or definition is None:
            raise UnknownHandlerError(
                f"{shown(getattr(update, '__qualname__', update))} is not an update handler; mark "
                "it with @workflow.update or pass the update's name"
            )
        return name, definition.updates[name].return_hint

    async def cancel(self, reason: str = "") -> None:
        """Request cancellation: the workflow sees ``asyncio.CancelledError`` at its awaits."""
        event = CancelRequested(reason=self._reason(reason))
        await self._store.deliver_event(self.workflow_id, self.run_id, encode_event(event))

    async def terminate(self, reason: str = "") -> None:
        """Close the workflow at once, without running its code; pending work is dropped."""
        reason = self._reason(reason)
        event = WorkflowTerminated(reason=reason)
        failure = Failure(type="TerminatedFailure", message=reason or "terminated",
                          kind="terminated")
        await self._store.terminate(
            self.workflow_id, self.run_id, encode_event(event), msgspec.json.encode(failure)
        )

    def _reason(self, reason: str) -> str:
        return check_text(reason, "reason", limit=self.client.converter.max_payload_bytes)

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
        return await self._reset(None, to_event=to_event, reason=self._reason(reason),
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
        check_name(new_id, "fork's new workflow id")
        if new_id == self.workflow_id:
            raise InvalidArgumentError("a fork needs another workflow id; use reset() to "
                                       "restart this workflow from an earlier point")
        if to_event is None and not to_last_workflow_task and isinstance(edit_results, dict) \
                and edit_results and all(type(n) is int for n in edit_results):
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

        if to_event is not None:
            check_whole_number(to_event, "to_event", minimum=1)
        check_bool(to_last_workflow_task, "to_last_workflow_task")
        check_bool(reapply_signals, "reapply_signals")
        check_optional_name(task_queue, "task_queue")
        if edit_results is not None and not isinstance(edit_results, dict):
            raise InvalidArgumentError(
                "edit_results must be a dict of event number to the result to record there, "
                f"not {type(edit_results).__name__}")
        edits = {check_whole_number(n, "an event number in edit_results", minimum=1):
                 self.client.converter.encode(v, what=f"edited result of event {n}")
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
        check_whole_number(after, "after")
        check_bool(follow, "follow")
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
