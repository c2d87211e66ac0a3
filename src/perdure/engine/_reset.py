"""Reset and fork, as a pure function: a history and a cut point in, a new run's start out.

The new run's history is the old one's first events, up to the cut. The cut never
falls inside the commands of an activation: pointed at a command or at the
``WorkflowTaskCompleted`` before them, it moves back to just before that
``WorkflowTaskCompleted``, so that the activation runs again, with the code on the
workers now. Work the prefix started and had not seen end (activities, timers) is
scheduled again; what the world did meanwhile and the new run cannot redo (child
workflows starting and ending, signals sent to other workflows being delivered,
and, if asked, signals received) is delivered to the new run's inbox again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import msgspec

from perdure._errors import InvalidArgumentError
from perdure._retry import RetryPolicy
from perdure.history import (
    COMMAND_EVENT_TYPES,
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ActivityTimedOut,
    ChildWorkflowCanceled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    ChildWorkflowStarted,
    ChildWorkflowStartFailed,
    ExternalCancelDelivered,
    ExternalCancelSent,
    ExternalSignalDelivered,
    ExternalSignalSent,
    HistoryEvent,
    SignalReceived,
    TimerCanceled,
    TimerFired,
    TimerStarted,
    WorkflowStarted,
    WorkflowTaskCompleted,
    encode_event,
    event_type_name,
)
from perdure.store._records import NewActivityTask

__all__ = ["ResetPlan", "plan_reset"]

_json = msgspec.json.Encoder()

_CHILD_OUTCOMES = (ChildWorkflowStarted, ChildWorkflowStartFailed, ChildWorkflowCompleted,
                   ChildWorkflowFailed, ChildWorkflowCanceled)


@dataclasses.dataclass
class ResetPlan:
    """What the store writes for the new run."""

    cut: int
    """The new run's history is the old one's events 1..cut."""
    events: list[tuple[str, bytes]]
    activities: list[NewActivityTask]
    timers: list[tuple[int, float]]
    inbox: list[bytes]
    """Events after the cut delivered to the new run again, in their order."""
    open_children: list[int]
    """Seqs of child workflows started in the prefix whose end the old history lacks."""
    started: WorkflowStarted
    has_tail: bool
    """The prefix ends with events no activation has handled yet: the new run needs a
    workflow task even with nothing re-delivered."""


def cut_point(events: Sequence[HistoryEvent], to_event: int | None, *,
              to_last_workflow_task: bool = False) -> int:
    """Where the new history ends, for ``--to-event N`` or ``--to-last-workflow-task``."""
    count = len(events)
    if to_last_workflow_task:
        tasks = [i for i, e in enumerate(events, 1) if isinstance(e, WorkflowTaskCompleted)]
        if not tasks:
            raise InvalidArgumentError("the history has no workflow task to reset to")
        to_event = tasks[-1]
    if to_event is None:
        raise InvalidArgumentError("say where to reset to: an event number, or the last "
                                   "workflow task")
    if not 1 <= to_event <= count:
        raise InvalidArgumentError(f"event {to_event} is not in this history (1..{count})")
    cut = to_event
    event = events[cut - 1]
    closing = ("WorkflowTerminated", "WorkflowTimedOut", "WorkflowReset")
    if isinstance(event, (WorkflowTaskCompleted, *COMMAND_EVENT_TYPES)) \
            or event_type_name(event) in closing:
        # back to just before the activation's WorkflowTaskCompleted: it runs again
        while cut > 1 and not isinstance(events[cut - 1], WorkflowTaskCompleted):
            cut -= 1
        cut = max(1, cut - 1)
    return cut


def plan_reset(
    events: Sequence[HistoryEvent], cut: int, *, edits: Mapping[int, bytes] | None = None,
    reapply_signals: bool = True, fork: bool = False,
) -> ResetPlan:
    """The new run's history prefix, pending work and re-delivered events.

    ``edits`` replaces the result (JSON) of ``ActivityCompleted`` or
    ``ChildWorkflowCompleted`` events in the prefix: "what if the model had said X".
    A fork is a new workflow id: it loses the parent link.
    """
    edits = dict(edits or {})
    for number in edits:
        if not 1 <= number <= cut:
            raise InvalidArgumentError(
                f"event {number} is after the cut (event {cut}): only events the new run "
                "keeps can be edited")
        target = events[number - 1]
        if not isinstance(target, ActivityCompleted | ChildWorkflowCompleted):
            raise InvalidArgumentError(
                f"event {number} is {event_type_name(target)}; only the result of an "
                "ActivityCompleted or ChildWorkflowCompleted can be edited")
    first = events[0]
    if not isinstance(first, WorkflowStarted):
        raise InvalidArgumentError("the history does not begin with WorkflowStarted")
    started = first
    if fork:
        started = msgspec.structs.replace(first, parent_workflow_id=None, parent_run_id=None,
                                          parent_seq=None)
    prefix: list[tuple[str, bytes]] = []
    activities: dict[int, ActivityScheduled] = {}
    timers: dict[int, TimerStarted] = {}
    children: dict[int, bool] = {}   # seq -> ended in the prefix
    sent: set[int] = set()
    for number, event in enumerate(events[:cut], 1):
        if number == 1:
            event = started
        elif number in edits:
            assert isinstance(event, ActivityCompleted | ChildWorkflowCompleted)
            event = msgspec.structs.replace(event, result=msgspec.Raw(edits[number]))
        prefix.append((event_type_name(event), encode_event(event)))
        if isinstance(event, ActivityScheduled):
            activities[event.seq] = event
        elif isinstance(event, ActivityCompleted | ActivityFailed | ActivityTimedOut
                        | ActivityCancelRequested):
            activities.pop(event.seq, None)
        elif isinstance(event, TimerStarted):
            timers[event.seq] = event
        elif isinstance(event, TimerFired | TimerCanceled):
            timers.pop(event.seq, None)
        elif isinstance(event, ChildWorkflowScheduled):
            children[event.seq] = False
        elif isinstance(event, ChildWorkflowStartFailed | ChildWorkflowCompleted
                        | ChildWorkflowFailed | ChildWorkflowCanceled):
            children[event.seq] = True
        elif isinstance(event, ExternalSignalSent | ExternalCancelSent):
            sent.add(event.seq)
        elif isinstance(event, ExternalSignalDelivered | ExternalCancelDelivered):
            sent.discard(event.seq)
    inbox: list[bytes] = []
    ended_later: set[int] = set()
    for event in events[cut:]:
        if isinstance(event, _CHILD_OUTCOMES) and children.get(event.seq) is False:
            inbox.append(encode_event(event))
            if not isinstance(event, ChildWorkflowStarted):
                ended_later.add(event.seq)
        elif (isinstance(event, ExternalSignalDelivered) and event.seq in sent) or (isinstance(event, SignalReceived) and reapply_signals):
            inbox.append(encode_event(event))
    open_children = [seq for seq, ended in children.items()
                     if not ended and seq not in ended_later]
    return ResetPlan(
        cut=cut, events=prefix,
        activities=[_task(a) for a in activities.values()],
        timers=[(t.seq, t.fire_at) for t in timers.values()],
        inbox=inbox, open_children=open_children, started=started,
        has_tail=not isinstance(events[cut - 1], (WorkflowTaskCompleted, *COMMAND_EVENT_TYPES)),
    )


def _task(command: ActivityScheduled) -> NewActivityTask:
    return NewActivityTask(
        seq=command.seq, activity_type=command.activity_type, task_queue=command.task_queue,
        input=bytes(command.input), start_to_close_timeout=command.start_to_close_timeout,
        schedule_to_close_timeout=command.schedule_to_close_timeout,
        schedule_to_start_timeout=command.schedule_to_start_timeout,
        heartbeat_timeout=command.heartbeat_timeout,
        retry_policy=_json.encode(command.retry_policy or RetryPolicy().to_dict()),
    )
