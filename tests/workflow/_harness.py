"""Drive a pure :class:`WorkflowInstance` and record its history as the engine would.

No database, no worker, no real clock: the history of a run is, per activation,
the inbound events, one ``WorkflowTaskCompleted(time=now)``, then the command
events the workflow code produced. :meth:`Run.replay` feeds that history to a
fresh instance (optionally of another workflow class, to check compatibility).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import msgspec

from perdure._failure import failure_from_exception
from perdure.history import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ActivityTimedOut,
    CancelRequested,
    HistoryEvent,
    SignalReceived,
    TimerFired,
    TimerStarted,
    WorkflowCanceled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowTaskCompleted,
    decode_event,
    encode_event,
    event_type_name,
)
from perdure.workflow._definition import get_workflow_definition
from perdure.workflow._instance import WorkflowInstance, split_activations

START_TIME = 1_700_000_000.0
TASK_QUEUE = "q"


def raw(value: Any) -> msgspec.Raw:
    """A JSON payload, as stored in history."""
    return msgspec.Raw(msgspec.json.encode(value))


def args(*values: Any) -> msgspec.Raw:
    """A JSON array of arguments, as stored in history."""
    return raw(list(values))


def decode(payload: msgspec.Raw | bytes) -> Any:
    return msgspec.json.decode(bytes(payload))


def new_instance(cls: type, *, workflow_id: str = "wf-1", run_id: str = "run-1") -> WorkflowInstance:
    definition = get_workflow_definition(cls)
    assert definition is not None, f"{cls!r} is not a workflow"
    return WorkflowInstance(definition, workflow_id=workflow_id, run_id=run_id)


def started(cls: type, *run_args: Any, time: float = START_TIME) -> WorkflowStarted:
    definition = get_workflow_definition(cls)
    assert definition is not None
    return WorkflowStarted(
        workflow_type=definition.name, task_queue=TASK_QUEUE, input=args(*run_args),
        started_at=time,
    )


def completed(seq: int, value: Any, attempt: int = 1) -> ActivityCompleted:
    return ActivityCompleted(seq=seq, result=raw(value), attempt=attempt)


def failed(seq: int, exc: BaseException, attempt: int = 1) -> ActivityFailed:
    return ActivityFailed(seq=seq, failure=failure_from_exception(exc), attempt=attempt)


def timed_out(seq: int, timeout_type: str = "start_to_close", attempt: int = 1) -> ActivityTimedOut:
    return ActivityTimedOut(seq=seq, timeout_type=timeout_type, attempt=attempt)


def fired(seq: int) -> TimerFired:
    return TimerFired(seq=seq)


def signal(name: str, *values: Any) -> SignalReceived:
    return SignalReceived(name=name, args=args(*values))


def cancel(reason: str = "") -> CancelRequested:
    return CancelRequested(reason=reason)


def encoded(events: Sequence[HistoryEvent]) -> list[bytes]:
    return [encode_event(event) for event in events]


def describe(events: Sequence[HistoryEvent]) -> list[tuple[Any, ...]]:
    """A compact, comparable view of commands: (type, seq, detail)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        name = event_type_name(event)
        if isinstance(event, ActivityScheduled):
            out.append((name, event.seq, event.activity_type, decode(event.input)))
        elif isinstance(event, TimerStarted):
            out.append((name, event.seq, event.duration))
        elif isinstance(event, WorkflowCompleted):
            out.append((name, decode(event.result)))
        elif isinstance(event, WorkflowFailed):
            out.append((name, event.failure.type, event.failure.message))
        elif isinstance(event, WorkflowCanceled):
            out.append((name,))
        else:
            out.append((name, getattr(event, "seq", None)))
    return out


@dataclasses.dataclass
class Run:
    """One workflow run driven activation by activation, with its recorded history."""

    cls: type
    workflow_id: str = "wf-1"
    run_id: str = "run-1"
    now: float = START_TIME
    history: list[HistoryEvent] = dataclasses.field(default_factory=list)
    commands: list[list[HistoryEvent]] = dataclasses.field(default_factory=list)
    inbound: list[tuple[list[HistoryEvent], float]] = dataclasses.field(default_factory=list)
    """Per activation: the inbound events and the activation time."""
    boundaries: list[int] = dataclasses.field(default_factory=list)
    """Per activation: the history length once it was recorded."""
    instance: WorkflowInstance = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.instance = new_instance(self.cls, workflow_id=self.workflow_id, run_id=self.run_id)

    def start(self, *run_args: Any, extra: Sequence[HistoryEvent] = ()) -> list[HistoryEvent]:
        """The first activation: WorkflowStarted (plus any events in the same task)."""
        return self.activate(started(self.cls, *run_args, time=self.now), *extra, advance=0.0)

    def activate(self, *inbound: HistoryEvent, advance: float = 1.0) -> list[HistoryEvent]:
        """One workflow task: apply ``inbound`` at ``now + advance``; record everything."""
        self.now += advance
        produced = list(self.instance.activate(list(inbound), self.now))
        self.history.extend(inbound)
        self.history.append(WorkflowTaskCompleted(time=self.now))
        self.history.extend(produced)
        self.commands.append(produced)
        self.inbound.append((list(inbound), self.now))
        self.boundaries.append(len(self.history))
        self.instance.history_length = len(self.history)  # as the worker keeps it
        return produced

    @property
    def done(self) -> bool:
        return self.instance.completed

    @property
    def outcome(self) -> HistoryEvent:
        last = self.history[-1]
        assert isinstance(last, WorkflowCompleted | WorkflowFailed | WorkflowCanceled), last
        return last

    @property
    def result(self) -> Any:
        outcome = self.outcome
        assert isinstance(outcome, WorkflowCompleted), outcome
        return decode(outcome.result)

    def stored_history(self) -> list[HistoryEvent]:
        """The history as it comes back from a store: every event through JSON."""
        return [decode_event(encode_event(event)) for event in self.history]

    def replay(self, cls: type | None = None) -> WorkflowInstance:
        """Replay the (JSON round-tripped) history into a fresh instance."""
        instance = new_instance(cls or self.cls, workflow_id=self.workflow_id, run_id=self.run_id)
        tail = instance.replay(self.stored_history())
        assert tail == []
        return instance

    def replay_commands(self, cls: type | None = None) -> list[list[HistoryEvent]]:
        """Re-run each recorded activation in a fresh instance; return its commands."""
        instance = new_instance(cls or self.cls, workflow_id=self.workflow_id, run_id=self.run_id)
        activations, tail = split_activations(self.stored_history())
        assert tail == []
        out: list[list[HistoryEvent]] = []
        for activation, end in zip(activations, self.boundaries, strict=True):
            assert activation.completed is not None
            out.append(
                list(instance.activate([e for _, e in activation.inbound],
                                       activation.completed[1].time, replaying=True))
            )
            instance.history_length = end
        return out

    def resume_after(self, count: int, cls: type | None = None) -> list[list[HistoryEvent]]:
        """Replay the first ``count`` activations (a worker that lost its cache), then
        run the later activations live; return the commands of those later ones."""
        instance = new_instance(cls or self.cls, workflow_id=self.workflow_id, run_id=self.run_id)
        prefix = self.stored_history()[: self.boundaries[count - 1]] if count else []
        assert instance.replay(prefix) == []
        assert instance.history_length == len(prefix)
        out: list[list[HistoryEvent]] = []
        for (inbound, now), end in zip(self.inbound[count:], self.boundaries[count:], strict=True):
            out.append(list(instance.activate(inbound, now)))
            instance.history_length = end
        return out

    def assert_replays_identically(self, cls: type | None = None) -> WorkflowInstance:
        """Replay checks pass, and every activation reproduces byte-identical commands."""
        instance = self.replay(cls)
        assert [encoded(c) for c in self.replay_commands(cls)] == [
            encoded(c) for c in self.commands
        ]
        return instance
