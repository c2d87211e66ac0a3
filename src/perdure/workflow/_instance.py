"""One workflow run in memory: history in, commands out. No I/O.

:class:`WorkflowInstance` is the pure replay core. The worker (or a client
answering a query, or a replay check) feeds it events; it runs the workflow
code on a :class:`WorkflowEventLoop` until every coroutine blocks, and returns
the command events the code produced. :meth:`WorkflowInstance.replay` checks
those commands against the recorded ones and raises
:class:`NondeterminismError` on the first difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from perdure._converter import PayloadConverter, arity_problem
from perdure._errors import (
    ActivityError,
    CancelledFailure,
    ChildWorkflowError,
    FailureError,
    InvalidArgumentError,
    NondeterminismError,
    PayloadError,
    PayloadTooLargeError,
    QueryRejectedError,
    TimeoutFailure,
    UnknownHandlerError,
    WorkflowAlreadyStartedError,
    WorkflowNotFoundError,
)
from perdure._failure import exception_from_failure, failure_from_exception
from perdure._identifiers import check_name, check_optional_name, check_text, name_problem
from perdure._recorded import replaying_history, replaying_recorded
from perdure.history import (
    COMMAND_EVENT_TYPES,
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ActivityTimedOut,
    CancelRequested,
    ChildWorkflowCanceled,
    ChildWorkflowCancelRequested,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    ChildWorkflowStarted,
    ChildWorkflowStartFailed,
    ExternalCancelDelivered,
    ExternalCancelSent,
    ExternalSignalDelivered,
    ExternalSignalSent,
    Failure,
    HistoryEvent,
    MarkerRecorded,
    MemoUpserted,
    SearchAttributesUpserted,
    SignalReceived,
    TimerCanceled,
    TimerFired,
    TimerStarted,
    UpdateAccepted,
    UpdateCompleted,
    UpdateRequested,
    WorkflowCanceled,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowTaskCompleted,
    encode_event,
    event_type_name,
)
from perdure.workflow import _context
from perdure.workflow._definition import HandlerDefinition, WorkflowDefinition
from perdure.workflow._guard import DeterminismGuard
from perdure.workflow._loop import DurableTimerHandle, WorkflowEventLoop

__all__ = [
    "RUN_FAILURE_TYPES",
    "Activation",
    "ContinueAsNew",
    "PendingChild",
    "WorkflowInfo",
    "WorkflowInstance",
    "split_activations",
]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__))
_log = logging.getLogger("perdure.workflow")

RUN_FAILURE_TYPES: tuple[type[BaseException], ...] = (
    FailureError, WorkflowAlreadyStartedError, WorkflowNotFoundError)
"""Exceptions that fail a run when workflow code lets them escape, as in Temporal: the
failures (``ApplicationError``, and the ``ActivityError``, ``ChildWorkflowError``,
``TimeoutFailure``... that the engine raises into workflow code), and the outcomes of a
child start or an external signal that found no workflow. Anything else (``KeyError``,
``AttributeError``, a ``TypeError`` from a typo) fails only the workflow task: it is
retried with back-off, shown by ``describe()``, and a deploy that fixes the code resumes
the run. Add types per workflow (``@workflow.defn(failure_exception_types=...)``) or per
worker (``WorkerOptions(workflow_failure_exception_types=...)``)."""
_LOOP_STEP_CODE = WorkflowEventLoop.step.__code__


@dataclasses.dataclass
class WorkflowInfo:
    """Facts about the running workflow, from ``workflow.info()``."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    start_time: datetime
    execution_timeout: timedelta | None
    history_length: int
    """Events in history when the current activation began."""
    history_size: int = 0
    """Bytes of history when the current activation began."""
    continue_as_new_suggested: bool = False
    """The history has passed the worker's warning size (events or bytes): a long
    session should call ``workflow.continue_as_new`` at its next convenient point."""
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)
    search_attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    """As set at start and upserted since (``workflow.upsert_search_attributes``)."""
    attempt: int = 1
    """Which attempt of the workflow this run is, under its retry policy (1 for the first)."""
    run_timeout: timedelta | None = None
    continued_from_run_id: str | None = None
    parent_workflow_id: str | None = None
    """For a child workflow: the parent's workflow id and run id."""
    parent_run_id: str | None = None
    cron_schedule: str | None = None
    """For a run of a cron chain (``start_workflow(cron_schedule=...)``): its schedule."""


@dataclasses.dataclass
class Activation:
    """One recorded activation: inbound events, then the commands they caused."""

    inbound: list[tuple[int, HistoryEvent]]
    completed: tuple[int, WorkflowTaskCompleted] | None
    commands: list[tuple[int, HistoryEvent]]


def split_activations(
    events: Sequence[HistoryEvent],
) -> tuple[list[Activation], list[tuple[int, HistoryEvent]]]:
    """Split a history into recorded activations, plus the unprocessed inbound tail.

    Events appended by the engine without a workflow task (WorkflowTerminated,
    WorkflowTimedOut, WorkflowReset) close the history and are not part of any activation.
    """
    activations: list[Activation] = []
    inbound: list[tuple[int, HistoryEvent]] = []
    current: Activation | None = None
    for index, event in enumerate(events):
        seq = index + 1
        if isinstance(event, WorkflowTaskCompleted):
            current = Activation(inbound=inbound, completed=(seq, event), commands=[])
            activations.append(current)
            inbound = []
        elif isinstance(event, COMMAND_EVENT_TYPES):
            if current is None:
                raise NondeterminismError(
                    f"history event {seq} ({event_type_name(event)}) is a command with no "
                    "WorkflowTaskCompleted before it; the history is corrupt"
                )
            current.commands.append((seq, event))
        elif event_type_name(event) in ("WorkflowTerminated", "WorkflowTimedOut",
                                        "WorkflowReset"):
            continue
        else:
            current = None
            inbound.append((seq, event))
    return activations, inbound


@dataclasses.dataclass
class _PendingActivity:
    future: asyncio.Future[Any]
    activity_type: str
    result_hint: Any


class ContinueAsNew(BaseException):
    """Raised by ``workflow.continue_as_new``: ends the run, to start a new one.

    A ``BaseException``, so that ``except Exception`` in workflow code lets it pass.
    """

    def __init__(self, command: WorkflowContinuedAsNew) -> None:
        super().__init__("continue as new")
        self.command = command


PATCH_MARKER = "patch"
"""The MarkerRecorded name of ``workflow.patched``; its value is the patch id (JSON)."""
SIGNAL_DROPPED_MARKER = "signal_dropped"
"""The MarkerRecorded name of a signal dropped because its arguments did not fit its
handler; its value is ``{"signal": name, "reason": why}``. Informational: replay does not
compare these markers (histories from before they existed replay the same)."""


def _marker_order(event: HistoryEvent, position: int) -> tuple[int, str, int]:
    return (0, _patch_id(event), 0) if _is_patch(event) else (1, "", position)


def _is_informational(event: HistoryEvent) -> bool:
    return isinstance(event, MarkerRecorded) and event.name == SIGNAL_DROPPED_MARKER


def _is_patch(event: HistoryEvent) -> bool:
    return isinstance(event, MarkerRecorded) and event.name == PATCH_MARKER


def _patch_id(event: HistoryEvent) -> str:
    assert isinstance(event, MarkerRecorded)
    return str(msgspec.json.decode(event.value))


@dataclasses.dataclass
class PendingChild:
    """A child workflow this run started: its start and its outcome, as futures."""

    seq: int
    workflow_id: str
    workflow_type: str
    result_hint: Any
    started: asyncio.Future[str]
    result: asyncio.Future[Any]
    run_id: str = ""
    cancel_requested: bool = False


def _describe(event: HistoryEvent) -> str:
    name = event_type_name(event)
    if isinstance(event, ActivityScheduled):
        return f"{name}(seq={event.seq}, activity_type={event.activity_type!r})"
    if isinstance(event, ChildWorkflowScheduled):
        return (f"{name}(seq={event.seq}, workflow_type={event.workflow_type!r}, "
                f"workflow_id={event.workflow_id!r})")
    if isinstance(event, ExternalSignalSent):
        return f"{name}(seq={event.seq}, name={event.name!r}, workflow_id={event.workflow_id!r})"
    if isinstance(event, TimerStarted):
        return f"{name}(seq={event.seq}, duration={event.duration:g}s)"
    if _is_patch(event):
        return f"{name}(patch {_patch_id(event)!r})"
    if isinstance(event, MarkerRecorded):
        return f"{name}(seq={event.seq}, name={event.name!r})"
    seq = getattr(event, "seq", None)
    return f"{name}(seq={seq})" if seq is not None else f"{name}()"


def _payload(event: HistoryEvent) -> str:
    data = bytes(getattr(event, "input", b""))
    text = data.decode(errors="replace")
    return text if len(text) <= 200 else text[:200] + "..."


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _same_shape(recorded: bytes, produced: bytes) -> bool:
    """Whether two argument lists have the same shape: as many arguments, each of the same
    JSON kind (null matches any). A changed value (a reworded prompt) is the same call;
    an added, removed or retyped argument is not."""
    if recorded == produced:
        return True
    try:
        old, new = msgspec.json.decode(recorded), msgspec.json.decode(produced)
    except msgspec.DecodeError:
        return False
    if not isinstance(old, list) or not isinstance(new, list) or len(old) != len(new):
        return False
    return all(a is None or b is None or _json_kind(a) == _json_kind(b)
               for a, b in zip(old, new, strict=True))


def _same_command(recorded: HistoryEvent, produced: HistoryEvent, *, args: bool = True) -> bool:
    """Whether replay reproduced a recorded command; ``args`` compares the shape of the
    arguments of activities and child workflows too (see :func:`_same_shape`)."""
    if type(recorded) is not type(produced):
        return False
    if isinstance(recorded, ActivityScheduled):
        assert isinstance(produced, ActivityScheduled)
        return (recorded.seq == produced.seq and recorded.activity_type == produced.activity_type
                and (not args or _same_shape(bytes(recorded.input), bytes(produced.input))))
    if isinstance(recorded, MarkerRecorded):
        assert isinstance(produced, MarkerRecorded)
        return (recorded.seq == produced.seq and recorded.name == produced.name
                and (recorded.name != PATCH_MARKER
                     or bytes(recorded.value) == bytes(produced.value)))
    if isinstance(recorded, ChildWorkflowScheduled):
        assert isinstance(produced, ChildWorkflowScheduled)
        return (recorded.seq == produced.seq and recorded.workflow_type == produced.workflow_type
                and (not args or _same_shape(bytes(recorded.input), bytes(produced.input))))
    if isinstance(recorded, ExternalSignalSent):
        assert isinstance(produced, ExternalSignalSent)
        return recorded.seq == produced.seq and recorded.name == produced.name
    return getattr(recorded, "seq", None) == getattr(produced, "seq", None)


def _is_workflow_code(filename: str) -> bool:
    return not filename.startswith((_PACKAGE_DIR, _ASYNCIO_DIR)) and "<frozen" not in filename


def _caller_location(instance: WorkflowInstance) -> str:
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code is _LOOP_STEP_CODE:
            break  # below this frame is whoever drives the loop, not workflow code
        if _is_workflow_code(code.co_filename):
            return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    # A task that asyncio made around a perdure coroutine (gather, ensure_future):
    # the workflow line is where that coroutine was created.
    task = asyncio.current_task(instance.loop)
    origin = getattr(task.get_coro(), "cr_origin", None) if task is not None else None
    for filename, lineno, name in origin or ():
        if _is_workflow_code(filename):
            return f"{filename}:{lineno} in {name}"
    # A callback: the run method returned (or raised).
    run = getattr(instance.definition.run_method, "__code__", None)
    if run is not None:
        return f"{run.co_filename}:{run.co_firstlineno} in {run.co_name}"
    return "<unknown location>"


class WorkflowInstance:
    """A workflow run in memory, advanced one activation at a time."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        workflow_id: str,
        run_id: str,
        converter: PayloadConverter | None = None,
        determinism_guard: str = "raise",
        failure_exception_types: Sequence[type[BaseException]] = (),
    ) -> None:
        self.definition = definition
        self.failure_exception_types: tuple[type[BaseException], ...] = (
            *RUN_FAILURE_TYPES, *definition.failure_exception_types, *failure_exception_types)
        """Exceptions that fail the run when they escape workflow code; any other fails
        only the workflow task, which is retried (a fixed deploy resumes the run)."""
        self._recorded_failure = False
        """While replaying an activation: whether its recorded commands fail the run."""
        self._recorded_update_failures: set[str] = set()
        """While replaying an activation: updates its recorded commands failed."""
        self._recorded_drops = False
        """While replaying an activation: whether it recorded a dropped signal."""
        self._recorded_child_ids: dict[int, str] = {}
        """While replaying an activation: the workflow id each child it started got. Replay
        does not compare child ids (the code that derives them may change); the child is
        the one history names, so signals and cancellation reach it."""
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.converter = converter or PayloadConverter()
        self.loop = WorkflowEventLoop(self)  # type: ignore[abstract]
        self.random = random.Random(int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8]))
        self.now_timestamp = 0.0
        self.replaying = False
        self.history_length = 0
        """Events of this run's history that this instance has consumed."""
        self.history_size = 0
        """Bytes of this run's history before the current activation's inbound events, as
        ``history_length`` counts events: what ``info().history_size`` shows."""
        self._replayed_suggestion = False
        self.stored_size = 0
        """Bytes of every event stored for this run (the worker keeps it up to date)."""
        self.history_limits: tuple[int, int] = (10_000, 10 * 1024 * 1024)
        """(events, bytes) past which continuing as new is suggested."""
        self.size_warned = False
        self.completed = False
        self.info: WorkflowInfo | None = None
        self.started: WorkflowStarted | None = None
        """The run's first event (what a cron chain or a retry handed over)."""
        self.task_queue = ""
        self.workflow_object: Any = None
        self._seq = 0
        self._commands: list[HistoryEvent] = []
        self._locations: list[str] = []
        self._activities: dict[int, _PendingActivity] = {}
        self._timers: dict[int, DurableTimerHandle] = {}
        self._children: dict[int, PendingChild] = {}
        self._external_signals: dict[int, asyncio.Future[None]] = {}
        self._patches: dict[str, bool] = {}
        self._recorded_patches: set[str] = set()
        """While replaying an activation: the patch ids its recorded commands marked."""
        self._deprecated_patches: set[str] = set()
        self.published: list[tuple[str | None, bytes]] = []
        """This activation's stream events (target workflow id or None for this one, JSON):
        progress for followers, committed with the activation, never in history."""
        self.update_decisions: dict[str, UpdateAccepted | Failure] = {}
        """This activation's verdict on each requested update: accepted (the event to
        record in place of the request) or rejected (why; nothing is recorded)."""
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._signal_handlers: dict[str, Callable[..., Any]] = {}
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        """Async signal and update handlers still running."""
        self._buffered_signals: dict[str, list[bytes]] = {}
        self._main: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._main_started = False
        self._task_failure: BaseException | None = None
        self._workflow_failure: BaseException | None = None
        self._capture_locations = False
        self._in_query = False
        self.closed = False
        """Dropped (:meth:`close`): its coroutines are closed and its commands ignored."""
        self.speculative = False
        """Applying events no workflow task has processed yet, for a query: silent like a
        replay (no logs, no stream events), but deciding like live code (a patch asked
        about for the first time takes the new path, as the next task will)."""
        self._guard = DeterminismGuard(self, determinism_guard)
        """Fails (or, with "warn", logs) calls to the clock, randomness and I/O made by
        workflow code: "raise", "warn" or "off" (see :mod:`perdure.workflow._guard`)."""

    # ------------------------------------------------------------------ driving
    def replay(self, events: Sequence[HistoryEvent], *,
               sizes: Sequence[int] | None = None) -> list[tuple[int, HistoryEvent]]:
        """Replay a recorded history, checking every command; return the inbound tail.

        ``sizes`` are the events' stored sizes in bytes (re-encoded when not given), so
        that each activation sees ``info().history_size`` as it was when it first ran.
        Raises :class:`NondeterminismError` naming the first recorded event that
        the code no longer reproduces, and the command it produced instead.
        """
        activations, tail = split_activations(events)
        if sizes is None:
            sizes = [len(encode_event(e)) for e in events]
        before = [0]  # bytes of events 1..n, at index n
        for size in sizes:
            before.append(before[-1] + size)
        for activation in activations:
            assert activation.completed is not None
            wtc_seq, wtc = activation.completed
            first = activation.inbound[0][0] if activation.inbound else wtc_seq
            self.history_size = before[first - 1]
            self._replayed_suggestion = wtc.continue_as_new_suggested
            self._capture_locations = True
            # lets a mismatch name the workflow line that created a coroutine
            # which asyncio wrapped in a task (gather, ensure_future)
            tracking = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(max(tracking, 8))
            self._recorded_patches = {
                _patch_id(event) for _, event in activation.commands if _is_patch(event)
            }
            self._recorded_failure = any(isinstance(e, WorkflowFailed)
                                         for _, e in activation.commands)
            self._recorded_update_failures = {
                e.update_id for _, e in activation.commands
                if isinstance(e, UpdateCompleted) and e.failure is not None}
            self._recorded_child_ids = {
                e.seq: e.workflow_id for _, e in activation.commands
                if isinstance(e, ChildWorkflowScheduled)}
            self._recorded_drops = any(_is_informational(e) for _, e in activation.commands)
            try:
                produced = self.activate(
                    [e for _, e in activation.inbound], wtc.time, replaying=True
                )
            finally:
                self._recorded_failure = False
                self._recorded_update_failures = set()
                self._recorded_child_ids = {}
                self._recorded_drops = False
                self._recorded_patches = set()
                self._capture_locations = False
                sys.set_coroutine_origin_tracking_depth(tracking)
            self._check(activation, produced)
            self.history_length = activation.commands[-1][0] if activation.commands else wtc_seq
        # as live: what the next activation sees is every event before its inbound ones
        self.history_size = before[self.history_length]
        self.replaying = False
        return tail

    def replay_for_query(self, events: Sequence[HistoryEvent],
                         pending: Sequence[HistoryEvent] = (), now: float = 0.0) -> None:
        """Replay, then apply what no workflow task has processed yet, as the next one
        will: the history's inbound tail (a run whose first task is still pending) and
        the ``pending`` events waiting in the run's inbox (acknowledged signals, updates,
        results), at time ``now``. The instance is throwaway: nothing it does is kept."""
        tail = self.replay(events)
        inbound = [e for _, e in tail] + list(pending)
        if inbound:
            first = inbound[0]
            if isinstance(first, WorkflowStarted):
                now = max(now, first.started_at)
            self.speculative = True
            try:
                self.activate(inbound, max(now, self.now_timestamp), replaying=True)
            finally:
                self.speculative = False

    def _check(self, activation: Activation, produced: list[HistoryEvent]) -> None:
        recorded = [(seq, e) for seq, e in activation.commands if not _is_informational(e)]
        kept = [i for i, e in enumerate(produced) if not _is_informational(e)]
        produced = [produced[i] for i in kept]
        all_locations = [self._locations[i] if i < len(self._locations) else "" for i in kept]
        if self._deprecated_patches:
            # markers of deprecated patches: recorded by older code, no longer produced
            recorded = [(seq, e) for seq, e in recorded
                        if not (_is_patch(e) and _patch_id(e) in self._deprecated_patches)]
        # patch markers: where in the activation a patch was first asked about does not
        # matter, only which patches were taken; they go first, in id order, on both sides
        recorded = sorted(recorded, key=lambda r: _marker_order(r[1], r[0]))
        order = sorted(range(len(produced)), key=lambda i: _marker_order(produced[i], i))
        produced = [produced[i] for i in order]
        locations = [all_locations[i] for i in order]
        for index in range(max(len(recorded), len(produced))):
            rec = recorded[index] if index < len(recorded) else None
            got = produced[index] if index < len(produced) else None
            if rec is not None and got is not None and _same_command(rec[1], got):
                continue
            where = locations[index] if got is not None and index < len(locations) else ""
            differs = ""
            if rec is not None and got is not None and _same_command(rec[1], got, args=False):
                differs = (f"  arguments differ in shape: recorded {_payload(rec[1])}, produced "
                           f"{_payload(got)}")
            head = (
                f"workflow {self.definition.name!r} (id {self.workflow_id!r}, run "
                f"{self.run_id}) is not deterministic"
            )
            if rec is not None:
                head += f" at history event {rec[0]}"
            elif activation.completed is not None:
                last = recorded[-1][0] if recorded else activation.completed[0]
                head += f" after history event {last}"
            lines = [head + ":"]
            lines.append(
                f"  recorded: {_describe(rec[1])}" if rec is not None
                else "  recorded: nothing (history has no further command here)"
            )
            lines.append(
                f"  produced: {_describe(got)} at {where}" if got is not None
                else "  produced: nothing (the code no longer issues this command)"
            )
            if differs:
                lines.append(differs)
            lines.append(
                "The workflow code changed in a way that changes its commands for an existing "
                "history. Keep the old behaviour for runs already in flight (see "
                "workflow.patched), or start new runs for the new code."
            )
            raise NondeterminismError(
                "\n".join(lines),
                event_seq=rec[0] if rec is not None else (
                    (recorded[-1][0] if recorded else activation.completed[0])
                    if activation.completed is not None else None),
                recorded=_describe(rec[1]) if rec is not None else "",
                produced=_describe(got) if got is not None else "",
                location=where,
            )

    def activate(
        self, inbound: Sequence[HistoryEvent], now: float, *, replaying: bool = False
    ) -> list[HistoryEvent]:
        """Apply inbound events, run the workflow until it blocks, return its commands.

        Raises for a *task* failure (non-determinism, an unknown signal payload
        that cannot be decoded, an internal error); a workflow that fails ends
        with a WorkflowFailed command instead.
        """
        self.replaying = replaying
        if now > self.now_timestamp:
            self.now_timestamp = now
        self._commands = []
        self._locations = []
        self.update_decisions = {}
        self.published = []
        if self.info is not None:
            self.info.history_length = self.history_length
            self.info.history_size = self.history_size
            self.info.continue_as_new_suggested = self.continue_as_new_suggested()
        previous_loop = asyncio._get_running_loop()
        asyncio._set_running_loop(self.loop)
        previous_instance = _context.set_current(self)
        self.loop._running = True
        guarded = self._guard.start()
        collecting = gc.isenabled()
        if collecting:
            # no cyclic collection while workflow code runs: it would finalize coroutines of
            # dropped instances, whose `finally:` blocks would then run inside this one's
            gc.disable()
        try:
            # a recorded activation's values pass the edge checks as history holds them
            with replaying_history(replaying and not self.speculative):
                for event in inbound:
                    self._apply(event)
                    if self._conditions:
                        # a signal that made a condition true wins over a timeout
                        # recorded after it in the same activation
                        self._check_conditions()
                self._run_until_blocked()
        finally:
            violation = self._guard.stop(guarded)
            if collecting:
                gc.enable()
            self.loop._running = False
            _context.set_current(previous_instance)
            asyncio._set_running_loop(previous_loop)
        if violation is not None and self._task_failure is None:
            self._task_failure = violation  # even if workflow code swallowed it
        if self._task_failure is not None:
            failure, self._task_failure = self._task_failure, None
            raise failure
        return self._commands

    def _run_until_blocked(self) -> None:
        loop = self.loop
        while True:
            loop.step()
            if self.completed:
                return
            if not self._check_conditions():
                return

    def _check_conditions(self) -> bool:
        progressed = False
        for fn, future in list(self._conditions):
            if future.done():
                self._conditions.remove((fn, future))
                continue
            if fn():
                future.set_result(None)
                self._conditions.remove((fn, future))
                progressed = True
        return progressed

    def close(self) -> None:
        """Drop this instance: close its pending coroutines now, as its own, so that their
        ``finally:`` blocks run here and issue nothing, rather than later, at garbage
        collection, possibly in the middle of another workflow's activation."""
        if self.closed:
            return
        self.closed = True
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        if not tasks:
            return
        previous_loop = asyncio._get_running_loop()
        asyncio._set_running_loop(self.loop)
        previous_instance = _context.set_current(self)
        try:
            for task in tasks:
                coro = task.get_coro()
                try:
                    coro.close()  # type: ignore[union-attr]
                except BaseException:
                    pass  # e.g. "coroutine ignored GeneratorExit": it is being dropped anyway
        finally:
            _context.set_current(previous_instance)
            asyncio._set_running_loop(previous_loop)

    def continue_as_new_suggested(self) -> bool:
        """Whether the history passed its warning size, in events or bytes; when replaying,
        what the activation was told when it ran (recorded in its WorkflowTaskCompleted)."""
        if self.replaying:
            return self._replayed_suggestion
        events, size = self.history_limits
        return self.history_length >= events or self.history_size >= size

    # ------------------------------------------------------------------ inbound
    def _apply(self, event: HistoryEvent) -> None:
        if isinstance(event, WorkflowStarted):
            self._start(event)
        elif isinstance(event, ActivityCompleted):
            pending = self._activities.pop(event.seq, None)
            if pending is not None and not pending.future.done():
                try:
                    value = self.converter.decode(
                        event.result, pending.result_hint,
                        what=f"result of activity {pending.activity_type!r}",
                    )
                except PayloadError as exc:
                    pending.future.set_exception(exc)
                else:
                    pending.future.set_result(value)
        elif isinstance(event, ActivityFailed | ActivityTimedOut):
            pending = self._activities.pop(event.seq, None)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(self._activity_error(event, pending))
        elif isinstance(event, TimerFired):
            handle = self._timers.pop(event.seq, None)
            if handle is not None and not handle.cancelled():
                self.loop.make_ready(handle)
        elif isinstance(event, SignalReceived):
            self._deliver_signal(event.name, bytes(event.args))
        elif isinstance(event, ChildWorkflowStarted | ChildWorkflowStartFailed | ChildWorkflowCompleted
                        | ChildWorkflowFailed | ChildWorkflowCanceled):
            self._apply_child_event(event)
        elif isinstance(event, UpdateRequested):
            self._validate_update(event)
        elif isinstance(event, UpdateAccepted):
            self._run_update(event)
        elif isinstance(event, ExternalSignalDelivered | ExternalCancelDelivered):
            future = self._external_signals.pop(event.seq, None)
            if future is not None and not future.done():
                if event.error:
                    future.set_exception(WorkflowNotFoundError(event.error))
                else:
                    future.set_result(None)
        elif isinstance(event, CancelRequested):
            self._cancel_requested = True
            main = self._main
            if main is not None and not main.done():
                if self._main_started:
                    main.cancel(event.reason or None)
                else:
                    # let run() reach its first await, so its own handlers see the cancellation
                    self.loop.call_soon(main.cancel, event.reason or None)

    def _apply_child_event(
        self,
        event: ChildWorkflowStarted | ChildWorkflowStartFailed | ChildWorkflowCompleted
        | ChildWorkflowFailed | ChildWorkflowCanceled,
    ) -> None:
        child = self._children.get(event.seq)
        if child is None:
            return
        if isinstance(event, ChildWorkflowStarted):
            child.run_id = event.run_id
            if not child.started.done():
                child.started.set_result(event.run_id)
            return
        del self._children[event.seq]
        error: BaseException | None = None
        value: Any = None
        if isinstance(event, ChildWorkflowStartFailed):
            error = WorkflowAlreadyStartedError(
                f"child workflow {child.workflow_id!r} ({child.workflow_type}) was not started: "
                f"that workflow id already has a running run ({event.run_id}); pick another "
                "id, or wait for that run to close",
                workflow_id=child.workflow_id, run_id=event.run_id or None,
            )
            if not child.started.done():
                child.started.set_exception(error)
                child.started.exception()  # whoever awaits it still gets it; no GC warning
        elif isinstance(event, ChildWorkflowCompleted):
            try:
                value = self.converter.decode(
                    event.result, child.result_hint,
                    what=f"result of child workflow {child.workflow_type!r}",
                )
            except PayloadError as exc:
                error = exc
        else:
            status = event.status if isinstance(event, ChildWorkflowFailed) else "canceled"
            error = ChildWorkflowError(
                f"child workflow {child.workflow_type!r} (id {child.workflow_id!r}) {status}",
                workflow_id=child.workflow_id, run_id=child.run_id,
                workflow_type=child.workflow_type, status=status,
            )
            error.__cause__ = (
                exception_from_failure(event.failure) if isinstance(event, ChildWorkflowFailed)
                else CancelledFailure("child workflow canceled")
            )
        if child.result.done():
            return
        if error is not None:
            child.result.set_exception(error)
            child.result.exception()  # an unawaited (abandoned) child is no error
        else:
            child.result.set_result(value)

    # ------------------------------------------------------------------ updates
    def _validate_update(self, event: UpdateRequested) -> None:
        """Accept or reject a requested update; an accepted one runs at once."""
        definition = self.definition.updates.get(event.name)
        reason: BaseException | None = None
        if self.completed:
            reason = UnknownHandlerError(f"workflow {self.workflow_id!r} has already closed")
        elif definition is None:
            reason = UnknownHandlerError(
                f"workflow {self.definition.name!r} defines no update {event.name!r}; it "
                f"defines: {', '.join(sorted(self.definition.updates)) or 'no updates'}"
            )
        elif self.workflow_object is None:
            reason = UnknownHandlerError(f"workflow {self.workflow_id!r} has not started")
        else:
            try:
                values = self.converter.decode_args(bytes(event.args),
                                                    definition.parameter_hints,
                                                    what=f"update {event.name!r}")
                problem = arity_problem(definition.method.__get__(self.workflow_object),
                                        len(values))
                if problem is not None:
                    raise InvalidArgumentError(f"the handler of update {event.name!r} {problem}")
                if definition.validator is not None:
                    self._run_read_only(definition.validator, values)
            except Exception as exc:
                reason = exc
        if reason is not None:
            self.update_decisions[event.update_id] = failure_from_exception(reason)
            return
        accepted = UpdateAccepted(update_id=event.update_id, name=event.name, args=event.args)
        self.update_decisions[event.update_id] = accepted
        self._run_update(accepted)

    def _run_read_only(self, fn: Callable[..., Any], values: Sequence[Any]) -> Any:
        """Call a validator or query: it may read state, never issue commands."""
        self._in_query = True
        guarded = self._guard.start()  # already on inside an activation
        try:
            result = fn(self.workflow_object, *values)
        finally:
            violation = self._guard.stop(guarded)
            self._in_query = False
        if violation is not None:
            raise violation
        return result

    def _run_update(self, event: UpdateAccepted) -> None:
        definition = self.definition.updates.get(event.name)
        if definition is None or self.workflow_object is None:
            # accepted by an earlier version of the code: it must still have the handler
            self._task_failure = NondeterminismError(
                f"history has update {event.name!r} ({event.update_id}) accepted, but workflow "
                f"{self.definition.name!r} no longer defines it"
            )
            return
        try:
            values = self.converter.decode_args(bytes(event.args), definition.parameter_hints,
                                                what=f"update {event.name!r}")
        except PayloadError as exc:
            self._finish_update(event.update_id, None, exc)
            return
        method = definition.method.__get__(self.workflow_object)
        if not definition.is_async:
            try:
                value = method(*values)
            except Exception as exc:
                self._update_raised(event.update_id, exc)
            else:
                self._finish_update(event.update_id, value, None)
            return
        task = self.loop.create_task(method(*values), name=f"update:{event.name}")
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                self._finish_update(event.update_id, None,
                                    asyncio.CancelledError("update handler was cancelled"))
                return
            exc = task.exception()
            if isinstance(exc, NondeterminismError | ContinueAsNew):
                self._fail_from_handler(exc)
            elif exc is not None:
                self._update_raised(event.update_id, exc)
            else:
                self._finish_update(event.update_id, task.result(), None)

        task.add_done_callback(done)

    def _update_raised(self, update_id: str, exc: BaseException) -> None:
        """As Temporal: a failure type (an ``ApplicationError``...) fails the update and
        its caller sees it; any other exception is a bug that fails the workflow task, so
        that a fixed deploy runs the update again."""
        if isinstance(exc, self.failure_exception_types) or (
                self.replaying and update_id in self._recorded_update_failures):
            self._finish_update(update_id, None, exc)
        else:
            self._fail_task(exc)

    def _finish_update(self, update_id: str, value: Any, error: BaseException | None) -> None:
        if self.completed:
            return  # the run closed first: the store fails the update
        if error is None:
            try:
                data = self.converter.encode(value, what=f"result of update {update_id!r}")
            except PayloadError as exc:
                error = exc
            else:
                self._emit(UpdateCompleted(update_id=update_id, result=msgspec.Raw(data)))
                return
        self._emit(UpdateCompleted(update_id=update_id, result=msgspec.Raw(b"null"),
                                   failure=failure_from_exception(error)))

    def _activity_error(
        self, event: ActivityFailed | ActivityTimedOut, pending: _PendingActivity
    ) -> ActivityError:
        error = ActivityError(
            f"activity {pending.activity_type!r} (id {event.seq}) "
            + ("failed" if isinstance(event, ActivityFailed) else f"timed out ({event.timeout_type})")
            + f" after {event.attempt} attempt(s)",
            activity_type=pending.activity_type,
            activity_id=str(event.seq),
            attempt=event.attempt,
        )
        if isinstance(event, ActivityFailed):
            error.__cause__ = exception_from_failure(event.failure)
        else:
            timeout = TimeoutFailure(
                f"activity {event.timeout_type} timeout", timeout_type=event.timeout_type
            )
            if event.last_failure is not None:
                timeout.__cause__ = exception_from_failure(event.last_failure)
            error.__cause__ = timeout
        return error

    def _start(self, event: WorkflowStarted) -> None:
        self.task_queue = event.task_queue
        self.info = WorkflowInfo(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            workflow_type=event.workflow_type,
            task_queue=event.task_queue,
            start_time=datetime.fromtimestamp(event.started_at, tz=UTC),
            execution_timeout=(
                timedelta(seconds=event.execution_timeout) if event.execution_timeout else None
            ),
            history_length=self.history_length,
            parent_workflow_id=event.parent_workflow_id,
            parent_run_id=event.parent_run_id,
            memo=dict(event.memo or {}),
            search_attributes=dict(event.search_attributes or {}),
            attempt=event.attempt,
            run_timeout=timedelta(seconds=event.run_timeout) if event.run_timeout else None,
            continued_from_run_id=event.continued_from_run_id,
            cron_schedule=event.cron_schedule,
        )
        self.started = event
        definition = self.definition
        try:
            args = self.converter.decode_args(
                bytes(event.input), definition.run_parameter_hints,
                what=f"workflow {definition.name!r}",
            )
        except PayloadError as exc:
            # retrying cannot help an input that does not fit the signature: fail the run
            self._complete(WorkflowFailed(failure=failure_from_exception(exc)))
            return
        problem = arity_problem(definition.run_method.__get__(object()), len(args))
        if problem is not None:  # started by type name with the wrong count: the same
            self._complete(WorkflowFailed(failure=failure_from_exception(InvalidArgumentError(
                f"the input does not fit workflow {definition.name!r}: its run method "
                f"{problem}; start it again with the right arguments"))))
            return
        self.workflow_object = (definition.cls(*args) if definition.init_takes_arguments
                                else definition.cls())
        for name, handler in definition.signals.items():
            self._signal_handlers[name] = handler.method.__get__(self.workflow_object)
        run = definition.run_method.__get__(self.workflow_object)

        async def main() -> Any:
            self._main_started = True
            return await run(*args)

        self._main = self.loop.create_task(main(), name=f"workflow:{definition.name}")
        self._main.add_done_callback(self._on_main_done)

    def _deliver_signal(self, name: str, args: bytes) -> None:
        handler = self._signal_handlers.get(name)
        if handler is None:
            self._buffered_signals.setdefault(name, []).append(args)
            return
        definition = self.definition.signals.get(name)
        hints = definition.parameter_hints if definition else _hints_of(handler)
        try:
            values = self.converter.decode_args(args, hints, what=f"signal {name!r}")
        except PayloadError as exc:
            self._drop_signal(name, str(exc))
            return
        problem = arity_problem(handler, len(values))
        if problem is not None and not self._recorded_handler_call():
            self._drop_signal(name, f"the handler of signal {name!r} {problem}")
            return
        if asyncio.iscoroutinefunction(handler):
            task = self.loop.create_task(handler(*values), name=f"signal:{name}")
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)
            task.add_done_callback(self._on_handler_done)
            return
        try:
            handler(*values)
        except Exception as exc:
            self._fail_from_handler(exc)

    def _recorded_handler_call(self) -> bool:
        """Replaying an activation in which an older Perdure called a handler with the
        wrong arguments (its ``TypeError`` failed the run, and no drop was recorded):
        call it again, so that the replay reproduces what history holds."""
        return (self.replaying and not self.speculative and self._recorded_failure
                and not self._recorded_drops)

    def _drop_signal(self, name: str, why: str) -> None:
        """A signal whose arguments do not fit its handler is input, not a bug: it cannot
        fit on any retry, so it is dropped (never failing the run or its task), logged,
        and recorded in history as a ``signal_dropped`` marker saying why."""
        if not self.replaying:
            _log.warning("dropping signal %r for workflow %s: %s", name, self.workflow_id, why)
        if not self.completed:
            self._emit(MarkerRecorded(seq=0, name=SIGNAL_DROPPED_MARKER, value=msgspec.Raw(
                msgspec.json.encode({"signal": name, "reason": why}))))

    def _on_handler_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail_from_handler(exc)

    def _fail_from_handler(self, exc: BaseException) -> None:
        if isinstance(exc, ContinueAsNew):
            if not self.completed:
                self._complete(exc.command)
            return
        if not self._fails_run(exc):
            self._fail_task(exc)
        elif not self.completed:
            self._complete(WorkflowFailed(failure=failure_from_exception(exc)))

    def _fails_run(self, exc: BaseException) -> bool:
        """Whether ``exc``, escaping workflow code, fails the run (a failure type), rather
        than the workflow task (a bug, to be fixed by a deploy). A history whose recorded
        activation failed the run (an older Perdure failed runs on any exception) replays
        as recorded."""
        if isinstance(exc, NondeterminismError):
            return False
        return isinstance(exc, self.failure_exception_types) or (
            self.replaying and self._recorded_failure)

    def _fail_task(self, exc: BaseException) -> None:
        """Fail this activation (the first failure wins): the worker retries the task."""
        if self._task_failure is None:
            self._task_failure = exc

    def all_handlers_finished(self) -> bool:
        """No async signal or update handler is still running."""
        return not self._handler_tasks

    def set_signal_handler(self, name: str, handler: Callable[..., Any] | None) -> None:
        """Register (or remove) a handler at run time; buffered signals are delivered."""
        if handler is None:
            self._signal_handlers.pop(name, None)
            return
        self._signal_handlers[name] = handler
        for args in self._buffered_signals.pop(name, []):
            self._deliver_signal(name, args)

    # ------------------------------------------------------------------ outcome
    def _on_main_done(self, task: asyncio.Task[Any]) -> None:
        if self.completed:
            return
        if task.cancelled():
            if self._cancel_requested:
                self._complete(WorkflowCanceled())
            else:
                self._complete(
                    WorkflowFailed(
                        failure=failure_from_exception(
                            asyncio.CancelledError("workflow run task was cancelled")
                        )
                    )
                )
            return
        exc = task.exception()
        if exc is None:
            try:
                result = self.converter.encode(
                    task.result(), what=f"result of workflow {self.definition.name!r}"
                )
            except PayloadError as error:
                # the code's result cannot be stored: a bug that a deploy can fix
                if self._fails_run(error):
                    self._complete(WorkflowFailed(failure=failure_from_exception(error)))
                else:
                    self._fail_task(error)
                return
            self._complete(WorkflowCompleted(result=msgspec.Raw(result)))
        elif isinstance(exc, ContinueAsNew):
            self._complete(exc.command)
        elif isinstance(exc, asyncio.CancelledError) and self._cancel_requested:
            self._complete(WorkflowCanceled())
        elif self._fails_run(exc):
            self._complete(WorkflowFailed(failure=failure_from_exception(exc)))
        else:
            self._fail_task(exc)

    def _complete(self, command: HistoryEvent) -> None:
        self._emit(command)
        self.completed = True
        if self._buffered_signals and not self.replaying:
            _log.warning(
                "workflow %s ended with unhandled signals: %s",
                self.workflow_id, ", ".join(sorted(self._buffered_signals)),
            )

    def report_loop_exception(self, context: dict[str, Any]) -> None:
        """An exception nobody retrieved inside the workflow (logged outside replay)."""
        exc = context.get("exception")
        if str(context.get("message", "")).startswith("Task was destroyed"):
            return  # an evicted (or finished) instance dropped its pending coroutines
        if isinstance(exc, NondeterminismError):
            self._task_failure = exc
        elif not self.replaying:
            _log.error("workflow %s: %s", self.workflow_id, context.get("message"), exc_info=exc)

    # ------------------------------------------------------------------ commands
    def _emit(self, command: HistoryEvent) -> None:
        if self.closed:
            return  # a dropped instance's coroutines are closing: nothing they do counts
        self._commands.append(command)
        if self._capture_locations:
            self._locations.append(_caller_location(self))

    def next_seq(self) -> int:
        if self._in_query:
            # a command from a query would shift every later seq: the run would diverge
            raise QueryRejectedError(
                "query handlers and update validators must not start activities, timers or "
                "child workflows"
            )
        self._seq += 1
        return self._seq

    def schedule_activity(
        self,
        activity_type: str,
        args: Sequence[Any],
        *,
        task_queue: str | None,
        result_hint: Any,
        start_to_close_timeout: float | None,
        schedule_to_close_timeout: float | None,
        schedule_to_start_timeout: float | None,
        heartbeat_timeout: float | None,
        retry_policy: dict[str, Any] | None,
    ) -> tuple[int, asyncio.Future[Any]]:
        """Emit ActivityScheduled; the future resolves with its outcome."""
        data = self.converter.encode_args(args, what=f"activity {activity_type!r}")
        seq = self.next_seq()
        future = self.loop.create_future()
        self._activities[seq] = _PendingActivity(future, activity_type, result_hint)
        self._emit(
            ActivityScheduled(
                seq=seq,
                activity_type=activity_type,
                task_queue=task_queue or self.task_queue,
                input=msgspec.Raw(data),
                activity_id=str(seq),
                start_to_close_timeout=start_to_close_timeout,
                schedule_to_close_timeout=schedule_to_close_timeout,
                schedule_to_start_timeout=schedule_to_start_timeout,
                heartbeat_timeout=heartbeat_timeout,
                retry_policy=retry_policy,
            )
        )
        return seq, future

    def cancel_activity(self, seq: int) -> None:
        """Request cancellation of a pending activity (its future is already cancelled)."""
        if self._activities.pop(seq, None) is not None and not self.completed:
            self._emit(ActivityCancelRequested(seq=seq))

    def start_child(
        self,
        workflow_type: str,
        args: Sequence[Any],
        *,
        workflow_id: str | None,
        task_queue: str | None,
        execution_timeout: float | None,
        parent_close_policy: str,
        result_hint: Any,
        memo: dict[str, Any] | None = None,
        search_attributes: dict[str, Any] | None = None,
        run_timeout: float | None = None,
        retry_policy: dict[str, Any] | None = None,
        cron_schedule: str | None = None,
    ) -> PendingChild:
        """Emit ChildWorkflowScheduled; the child's start and outcome arrive as events."""
        data = self.converter.encode_args(args, what=f"child workflow {workflow_type!r}")
        seq = self.next_seq()
        recorded = self._recorded_child_ids.get(seq) if self.replaying else None
        if recorded is not None:
            workflow_id = recorded
        elif workflow_id is None:
            workflow_id = f"{self.workflow_id}/{self.run_id[:8]}/{seq}"
            if name_problem(workflow_id) is not None:  # a parent id near the length limit
                digest = hashlib.sha256(self.workflow_id.encode()).hexdigest()[:32]
                workflow_id = f"child-of-{digest}/{self.run_id[:8]}/{seq}"
        child = PendingChild(
            seq=seq, workflow_id=workflow_id, workflow_type=workflow_type,
            result_hint=result_hint, started=self.loop.create_future(),
            result=self.loop.create_future(),
        )
        self._children[seq] = child
        self._emit(
            ChildWorkflowScheduled(
                seq=seq, workflow_type=workflow_type, workflow_id=workflow_id,
                task_queue=task_queue or self.task_queue, input=msgspec.Raw(data),
                parent_close_policy=parent_close_policy, execution_timeout=execution_timeout,
                memo=memo or None, search_attributes=search_attributes or None,
                run_timeout=run_timeout, retry_policy=retry_policy, cron_schedule=cron_schedule,
            )
        )
        return child

    def cancel_child(self, child: PendingChild) -> None:
        """Ask a running child to cancel (once); its outcome still arrives as an event."""
        if child.cancel_requested or self.completed or self._children.get(child.seq) is not child:
            return
        child.cancel_requested = True
        self._emit(ChildWorkflowCancelRequested(seq=child.seq))

    def signal_external(
        self, workflow_id: str, run_id: str | None, name: str, args: Sequence[Any]
    ) -> asyncio.Future[None]:
        """Emit ExternalSignalSent; the future resolves once the signal was delivered."""
        check_name(workflow_id, "the signalled workflow's id")
        check_optional_name(run_id, "the signalled workflow's run id")
        check_name(name, "signal name")
        data = self.converter.encode_args(args, what=f"signal {name!r}")
        seq = self.next_seq()
        future: asyncio.Future[None] = self.loop.create_future()
        self._external_signals[seq] = future
        self._emit(ExternalSignalSent(seq=seq, workflow_id=workflow_id, name=name,
                                      args=msgspec.Raw(data), run_id=run_id))
        return future

    def patched(self, patch_id: str) -> bool:
        """True on the new code path: for live execution, and for replays whose history
        recorded this patch; False for a history written before the patch existed.
        Decided once per run (the first call), and recorded as a marker when True."""
        known = self._patches.get(patch_id)
        if known is not None:
            return known
        if self._in_query:
            return False  # a query cannot record a marker; before any call, the old path
        # replaying: what the history recorded; live: the new path
        taken = (patch_id in self._recorded_patches if self.replaying and not self.speculative
                 else True)
        self._patches[patch_id] = taken
        if taken:
            self._emit(MarkerRecorded(seq=0, name=PATCH_MARKER,
                                      value=msgspec.Raw(msgspec.json.encode(patch_id))))
        return taken

    def deprecate_patch(self, patch_id: str) -> None:
        """The patch's old path is gone: histories with or without its marker replay."""
        self._deprecated_patches.add(patch_id)
        self._patches[patch_id] = True

    def publish(self, data: bytes, workflow_id: str | None) -> None:
        """Queue a stream event; replays publish nothing (their events went out live)."""
        if not self.replaying and not self._in_query and not self.closed:
            self.published.append((workflow_id, data))

    def upsert(self, command: SearchAttributesUpserted | MemoUpserted) -> None:
        """Emit an upsert and apply it to ``info()`` at once."""
        if self._in_query:
            raise QueryRejectedError("query handlers and update validators must not upsert")
        assert self.info is not None
        if isinstance(command, SearchAttributesUpserted):
            target, changes = self.info.search_attributes, command.attributes
            what = "search attributes"
        else:
            target, changes = self.info.memo, command.memo
            what = "memo"
        merged = dict(target)
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        # the run row holds the merged whole: held to the payload cap, as at start
        size = len(msgspec.json.encode(merged))
        if size > self.converter.max_payload_bytes and not replaying_recorded():
            raise PayloadTooLargeError(
                f"the run's {what} would be {size} bytes encoded after this upsert, over the "
                f"limit of {self.converter.max_payload_bytes} bytes; remove keys (set them "
                "to None) or keep less")
        target.clear()
        target.update(merged)
        self._emit(command)

    def cancel_external(self, workflow_id: str, run_id: str | None,
                        reason: str) -> asyncio.Future[None]:
        """Emit ExternalCancelSent; the future resolves once the cancellation is delivered."""
        check_name(workflow_id, "the cancelled workflow's id")
        check_optional_name(run_id, "the cancelled workflow's run id")
        check_text(reason, "the cancellation's reason", limit=self.converter.max_payload_bytes)
        seq = self.next_seq()
        future: asyncio.Future[None] = self.loop.create_future()
        self._external_signals[seq] = future
        self._emit(ExternalCancelSent(seq=seq, workflow_id=workflow_id, reason=reason,
                                      run_id=run_id))
        return future

    def start_timer(
        self,
        delay: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: Any,
    ) -> DurableTimerHandle:
        seq = self.next_seq()
        when = self.now_timestamp + delay
        handle = DurableTimerHandle(seq, when, callback, args, self.loop, context)
        self._timers[seq] = handle
        self._emit(TimerStarted(seq=seq, duration=delay, fire_at=when))
        return handle

    def cancel_timer(self, handle: DurableTimerHandle) -> None:
        if self._timers.pop(handle.seq, None) is None or self.completed:
            return
        # a timer started and cancelled in the same activation leaves no trace
        for index, command in enumerate(self._commands):
            if isinstance(command, TimerStarted) and command.seq == handle.seq:
                del self._commands[index]
                if self._capture_locations and index < len(self._locations):
                    del self._locations[index]
                return
        self._emit(TimerCanceled(seq=handle.seq))

    def wait_condition(self, fn: Callable[[], bool]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        if fn():
            future.set_result(None)
        else:
            self._conditions.append((fn, future))
        return future

    # ------------------------------------------------------------------ queries
    def query(self, name: str, args: bytes) -> bytes:
        """Answer a query from current state; the handler must not issue commands."""
        handler = self.definition.queries.get(name)
        if handler is None:
            raise UnknownHandlerError(
                f"workflow {self.definition.name!r} defines no query {name!r}; it defines: "
                f"{', '.join(sorted(self.definition.queries)) or 'no queries'}"
            )
        if self.workflow_object is None:
            raise QueryRejectedError(
                f"workflow {self.workflow_id!r} has not started running yet; query again shortly"
            )
        return self._run_query(handler, args)

    def _run_query(self, handler: HandlerDefinition, args: bytes) -> bytes:
        values = self.converter.decode_args(args, handler.parameter_hints,
                                            what=f"query {handler.name!r}")
        before = len(self._commands)
        previous_loop = asyncio._get_running_loop()
        asyncio._set_running_loop(self.loop)
        previous_instance = _context.set_current(self)
        self._in_query = True
        guarded = self._guard.start()
        try:
            result = handler.method(self.workflow_object, *values)
        except Exception as exc:
            raise QueryRejectedError(f"query {handler.name!r} raised {exc!r}") from exc
        finally:
            violation = self._guard.stop(guarded)
            self._in_query = False
            _context.set_current(previous_instance)
            asyncio._set_running_loop(previous_loop)
            del self._commands[before:]
        if violation is not None:  # the handler swallowed it
            raise QueryRejectedError(f"query {handler.name!r} raised {violation!r}") from violation
        return self.converter.encode(result, what=f"result of query {handler.name!r}")


def _hints_of(fn: Callable[..., Any]) -> list[Any]:
    from perdure._converter import parameter_hints

    return parameter_hints(fn)
