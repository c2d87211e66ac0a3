"""The engine's state machines, as pure functions: commands in, store changes out.

Nothing here touches a database or a clock: ``now`` is always an argument, so
every decision (what a workflow task commits, whether an activity is retried)
can be tested without I/O. The store applies the records these functions
return, each in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence

import msgspec

from perdure._retry import RetryPolicy, next_attempt_at
from perdure.history import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ActivityTimedOut,
    CancelRequested,
    ChildWorkflowCancelRequested,
    ChildWorkflowScheduled,
    ExternalCancelSent,
    ExternalSignalSent,
    Failure,
    HistoryEvent,
    MemoUpserted,
    SearchAttributesUpserted,
    SignalReceived,
    TimerCanceled,
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
from perdure.store._records import (
    ActivityAttempt,
    ActivityOutcome,
    ContinuedRun,
    ExternalSignal,
    NewActivityTask,
    NewChildWorkflow,
    UpdateOutcome,
    WorkflowTaskCompletion,
)

__all__ = [
    "activity_completed_outcome",
    "activity_failed_outcome",
    "activity_timed_out_outcome",
    "plan_workflow_task",
]

_json = msgspec.json.Encoder()


def plan_workflow_task(
    *,
    workflow_id: str,
    run_id: str,
    worker_id: str,
    build_id: str,
    expected_history_length: int,
    inbox_upto: int,
    inbound: Sequence[tuple[HistoryEvent, bytes | None]],
    commands: Sequence[HistoryEvent],
    now: float,
    eager: Callable[[ActivityScheduled], bool] = lambda _: False,
    sticky_for: float = 0.0,
    new_run_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    update_decisions: Mapping[str, UpdateAccepted | Failure] | None = None,
    history_tail: int = 0,
    published: Sequence[tuple[str | None, bytes]] = (),
    continue_as_new_suggested: bool = False,
) -> WorkflowTaskCompletion:
    """Turn one activation (inbound events + produced commands) into store changes.

    ``inbound`` pairs each event with its already-encoded form where the caller
    has it (inbox rows), to avoid encoding twice. ``eager`` says which new
    activities this worker will run itself without a claim round trip.
    ``update_decisions`` is the activation's verdict on each requested update:
    an accepted one is recorded in the request's place, a rejected one nowhere.
    ``history_tail`` counts inbound events this activation handled that were already
    in history (a run's WorkflowStarted); an activation that handled nothing but
    rejected updates leaves history untouched.
    """
    events: list[tuple[str, bytes]] = []
    outcomes: list[UpdateOutcome] = []
    for event, data in inbound:
        if isinstance(event, UpdateRequested):
            decision = (update_decisions or {}).get(event.update_id)
            if decision is None:
                raise RuntimeError(f"update {event.update_id} was neither accepted nor rejected")
            if isinstance(decision, Failure):
                outcomes.append(UpdateOutcome(event.update_id, "rejected",
                                              failure=_json.encode(decision)))
                continue
            outcomes.append(UpdateOutcome(event.update_id, "accepted"))
            event, data = decision, None
        events.append((event_type_name(event), data if data is not None else encode_event(event)))
    rejected_only = bool(outcomes) and not events and not commands and not history_tail
    if not rejected_only:
        events.append(
            ("WorkflowTaskCompleted",
             encode_event(WorkflowTaskCompleted(
                 time=now, worker=worker_id, build_id=build_id,
                 continue_as_new_suggested=continue_as_new_suggested)))
        )
    # else: only rejected updates came in and nothing happened: history stays as it was
    completion = WorkflowTaskCompletion(
        workflow_id=workflow_id,
        run_id=run_id,
        worker_id=worker_id,
        expected_history_length=expected_history_length,
        inbox_upto=inbox_upto,
        events=events,
        new_activities=[],
        cancel_activities=[],
        new_timers=[],
        cancel_timers=[],
        sticky_for=sticky_for,
        update_outcomes=outcomes,
        build_id=build_id,
        stream_events=[(target or workflow_id, run_id, data) for target, data in published],
    )
    for command in commands:
        events.append((event_type_name(command), encode_event(command)))
        if isinstance(command, ActivityScheduled):
            completion.new_activities.append(
                NewActivityTask(
                    seq=command.seq,
                    activity_type=command.activity_type,
                    task_queue=command.task_queue,
                    input=bytes(command.input),
                    start_to_close_timeout=command.start_to_close_timeout,
                    schedule_to_close_timeout=command.schedule_to_close_timeout,
                    schedule_to_start_timeout=command.schedule_to_start_timeout,
                    heartbeat_timeout=command.heartbeat_timeout,
                    retry_policy=_json.encode(command.retry_policy or RetryPolicy().to_dict()),
                    eager_owner=worker_id if eager(command) else None,
                )
            )
        elif isinstance(command, ActivityCancelRequested):
            completion.cancel_activities.append(command.seq)
        elif isinstance(command, TimerStarted):
            completion.new_timers.append((command.seq, command.fire_at))
        elif isinstance(command, TimerCanceled):
            completion.cancel_timers.append(command.seq)
        elif isinstance(command, ChildWorkflowScheduled):
            started = WorkflowStarted(
                workflow_type=command.workflow_type, task_queue=command.task_queue,
                input=command.input, started_at=now,
                execution_timeout=command.execution_timeout, parent_workflow_id=workflow_id,
                parent_run_id=run_id, parent_seq=command.seq, memo=command.memo,
                search_attributes=command.search_attributes, run_timeout=command.run_timeout,
                retry_policy=command.retry_policy, cron_schedule=command.cron_schedule,
            )
            completion.new_children.append(
                NewChildWorkflow(
                    seq=command.seq, workflow_id=command.workflow_id, run_id=new_run_id(),
                    workflow_type=command.workflow_type, task_queue=command.task_queue,
                    input=bytes(command.input), started_event=encode_event(started),
                    execution_timeout=command.execution_timeout,
                    parent_close_policy=command.parent_close_policy,
                    memo=_json.encode(command.memo) if command.memo else None,
                    search_attributes=(_json.encode(command.search_attributes)
                                       if command.search_attributes else None),
                    run_timeout=command.run_timeout,
                    retry_policy=(_json.encode(command.retry_policy)
                                  if command.retry_policy else None),
                    cron_schedule=command.cron_schedule,
                )
            )
        elif isinstance(command, ChildWorkflowCancelRequested):
            completion.cancel_children.append(command.seq)
        elif isinstance(command, ExternalCancelSent):
            completion.external_signals.append(
                ExternalSignal(
                    seq=command.seq, workflow_id=command.workflow_id, run_id=command.run_id,
                    event=encode_event(CancelRequested(reason=command.reason)), cancel=True,
                )
            )
        elif isinstance(command, ExternalSignalSent):
            completion.external_signals.append(
                ExternalSignal(
                    seq=command.seq, workflow_id=command.workflow_id, run_id=command.run_id,
                    event=encode_event(SignalReceived(name=command.name, args=command.args)),
                )
            )
        elif isinstance(command, SearchAttributesUpserted):
            completion.upsert_search_attributes = {
                **(completion.upsert_search_attributes or {}), **command.attributes,
            }
        elif isinstance(command, MemoUpserted):
            completion.upsert_memo = {**(completion.upsert_memo or {}), **command.memo}
        elif isinstance(command, UpdateCompleted):
            outcomes.append(UpdateOutcome(
                command.update_id, "completed",
                result=bytes(command.result) if command.failure is None else None,
                failure=_json.encode(command.failure) if command.failure is not None else None,
            ))
        elif isinstance(command, WorkflowCompleted):
            completion.close_status = "completed"
            completion.close_result = bytes(command.result)
        elif isinstance(command, WorkflowFailed):
            completion.close_status = "failed"
            completion.close_failure = _json.encode(command.failure)
        elif isinstance(command, WorkflowCanceled):
            completion.close_status = "canceled"
        elif isinstance(command, WorkflowContinuedAsNew):
            completion.close_status = "continued_as_new"
            completion.continue_as_new = ContinuedRun(
                run_id=new_run_id(), workflow_type=command.workflow_type,
                task_queue=command.task_queue, input=bytes(command.input),
            )
    return completion


def activity_completed_outcome(
    seq: int, attempt: int, result: bytes
) -> Callable[[ActivityAttempt], ActivityOutcome]:
    """A successful attempt: the result goes to the workflow."""
    outcome = ActivityOutcome(
        retry_at=None,
        event=encode_event(
            ActivityCompleted(seq=seq, result=msgspec.Raw(result), attempt=attempt)
        ),
    )
    return lambda _state: outcome


def _retry_at(state: ActivityAttempt, failure: Failure | None, now: float) -> float | None:
    delay = (failure.attributes or {}).get("next_retry_delay") if failure is not None else None
    return next_attempt_at(
        RetryPolicy.from_dict(msgspec.json.decode(state.retry_policy)), state.attempt, now,
        error_type=failure.type if failure is not None else "",
        non_retryable=failure is not None and failure.non_retryable,
        delay=float(delay) if isinstance(delay, int | float) else None,
        deadline=(state.scheduled_at + state.schedule_to_close_timeout
                  if state.schedule_to_close_timeout is not None else None),
    )


def activity_failed_outcome(
    seq: int, failure: Failure, now: float
) -> Callable[[ActivityAttempt], ActivityOutcome]:
    """Decide, from the attempt's recorded state, whether a failure is retried."""

    def decide(state: ActivityAttempt) -> ActivityOutcome:
        encoded = _json.encode(failure)
        retry_at = _retry_at(state, failure, now)
        if retry_at is not None:
            return ActivityOutcome(retry_at=retry_at, event=None, last_failure=encoded)
        return ActivityOutcome(
            retry_at=None,
            event=encode_event(ActivityFailed(seq=seq, failure=failure, attempt=state.attempt)),
            last_failure=encoded,
        )

    return decide


RETRYABLE_TIMEOUTS = ("start_to_close", "heartbeat", "worker_lost")


def activity_timed_out_outcome(
    seq: int, timeout_type: str, last_failure: Failure | None, now: float
) -> Callable[[ActivityAttempt], ActivityOutcome]:
    """Decide what a fired timeout leads to; start-to-close and heartbeat are retried."""

    def decide(state: ActivityAttempt) -> ActivityOutcome:
        if timeout_type in RETRYABLE_TIMEOUTS:
            retry_at = _retry_at(state, None, now)
            if retry_at is not None and timeout_type == "worker_lost":
                retry_at = now  # not the activity's fault: no back-off, but it uses an attempt
            if retry_at is not None:
                note = Failure(
                    type="TimeoutFailure", message=f"activity {timeout_type} timeout",
                    kind="timeout", attributes={"timeout_type": timeout_type},
                )
                return ActivityOutcome(retry_at=retry_at, event=None,
                                       last_failure=_json.encode(note))
        return ActivityOutcome(
            retry_at=None,
            event=encode_event(
                ActivityTimedOut(
                    seq=seq,
                    timeout_type="start_to_close" if timeout_type == "worker_lost" else timeout_type,
                    attempt=state.attempt,
                    last_failure=last_failure,
                )
            ),
        )

    return decide
