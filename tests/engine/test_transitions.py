"""The engine's decisions, tested without a database or a clock."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from perdure import RetryPolicy
from perdure.engine import (
    activity_completed_outcome,
    activity_failed_outcome,
    activity_timed_out_outcome,
    plan_workflow_task,
)
from perdure.history import (
    ActivityCancelRequested,
    ActivityFailed,
    ActivityScheduled,
    ActivityTimedOut,
    Failure,
    SignalReceived,
    TimerCanceled,
    TimerStarted,
    WorkflowCompleted,
    decode_event,
    encode_event,
)
from perdure.store._records import ActivityAttempt


def _attempt(attempt: int, policy: RetryPolicy, *, s2c: float | None = None) -> ActivityAttempt:
    return ActivityAttempt(attempt, msgspec.json.encode(policy.to_dict()), 1000.0, s2c)


def test_plan_maps_commands_to_store_changes() -> None:
    signal = SignalReceived(name="go", args=msgspec.Raw(b"[1]"))
    commands = [
        ActivityScheduled(seq=1, activity_type="a", task_queue="q", input=msgspec.Raw(b"[]"),
                          activity_id="1", start_to_close_timeout=5.0),
        ActivityScheduled(seq=2, activity_type="b", task_queue="other", input=msgspec.Raw(b"[]"),
                          activity_id="2"),
        TimerStarted(seq=3, duration=10.0, fire_at=1010.0),
        TimerCanceled(seq=4),
        ActivityCancelRequested(seq=5),
    ]
    completion = plan_workflow_task(
        workflow_id="w", run_id="r", worker_id="me", build_id="b1", expected_history_length=7,
        inbox_upto=42, inbound=[(signal, None)], commands=commands, now=1000.0,
        eager=lambda c: c.task_queue == "q",
    )
    types = [t for t, _ in completion.events]
    assert types == ["SignalReceived", "WorkflowTaskCompleted", "ActivityScheduled",
                     "ActivityScheduled", "TimerStarted", "TimerCanceled",
                     "ActivityCancelRequested"]
    assert decode_event(completion.events[1][1]).time == 1000.0  # type: ignore[union-attr]
    assert [(t.seq, t.eager_owner) for t in completion.new_activities] == [(1, "me"), (2, None)]
    assert completion.new_timers == [(3, 1010.0)]
    assert completion.cancel_timers == [4]
    assert completion.cancel_activities == [5]
    assert completion.close_status is None
    assert completion.inbox_upto == 42 and completion.expected_history_length == 7


def test_plan_closes_the_run_on_completion() -> None:
    completion = plan_workflow_task(
        workflow_id="w", run_id="r", worker_id="me", build_id="", expected_history_length=3,
        inbox_upto=0, inbound=[], commands=[WorkflowCompleted(result=msgspec.Raw(b'"ok"'))],
        now=5.0,
    )
    assert completion.close_status == "completed"
    assert completion.close_result == b'"ok"'


def test_completed_outcome_delivers_the_result() -> None:
    outcome = activity_completed_outcome(3, 2, b'"done"')(_attempt(2, RetryPolicy()))
    assert outcome.retry_at is None
    assert outcome.event is not None
    event = decode_event(outcome.event)
    assert event.seq == 3 and bytes(event.result) == b'"done"' and event.attempt == 2  # type: ignore[union-attr]


def test_failure_is_retried_with_exponential_backoff() -> None:
    policy = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=3.0,
                         maximum_interval=timedelta(seconds=20))
    failure = Failure(type="ValueError", message="bad")
    delays = [
        activity_failed_outcome(1, failure, 100.0)(_attempt(n, policy)).retry_at
        for n in (1, 2, 3, 4)
    ]
    assert [d - 100.0 for d in delays if d is not None] == [1.0, 3.0, 9.0, 20.0]


def test_failure_after_maximum_attempts_is_final() -> None:
    policy = RetryPolicy(maximum_attempts=3)
    failure = Failure(type="ValueError", message="bad")
    assert activity_failed_outcome(1, failure, 0.0)(_attempt(2, policy)).retry_at is not None
    final = activity_failed_outcome(1, failure, 0.0)(_attempt(3, policy))
    assert final.retry_at is None and final.event is not None
    event = decode_event(final.event)
    assert isinstance(event, ActivityFailed) and event.attempt == 3
    assert event.failure.message == "bad"


def test_non_retryable_failures_are_final() -> None:
    policy = RetryPolicy(non_retryable_error_types=["KeyError"])
    by_type = Failure(type="KeyError", message="k")
    by_module_type = Failure(type="mypkg.errors.KeyError", message="k")
    flagged = Failure(type="Whatever", message="x", non_retryable=True)
    for failure in (by_type, by_module_type, flagged):
        assert activity_failed_outcome(1, failure, 0.0)(_attempt(1, policy)).retry_at is None
    other = Failure(type="ValueError", message="v")
    assert activity_failed_outcome(1, other, 0.0)(_attempt(1, policy)).retry_at is not None


def test_retry_stops_at_schedule_to_close() -> None:
    policy = RetryPolicy(initial_interval=timedelta(seconds=10))
    failure = Failure(type="ValueError", message="v")
    # scheduled at 1000 with a 15 s schedule-to-close: a retry at 1008 + 10 would be too late
    outcome = activity_failed_outcome(1, failure, 1008.0)(_attempt(1, policy, s2c=15.0))
    assert outcome.retry_at is None


def test_start_to_close_and_heartbeat_timeouts_retry_schedule_timeouts_do_not() -> None:
    policy = RetryPolicy(maximum_attempts=2)
    for kind in ("start_to_close", "heartbeat"):
        assert activity_timed_out_outcome(1, kind, None, 0.0)(_attempt(1, policy)).retry_at == 1.0
        final = activity_timed_out_outcome(1, kind, None, 0.0)(_attempt(2, policy))
        assert isinstance(decode_event(final.event or b""), ActivityTimedOut)
    for kind in ("schedule_to_start", "schedule_to_close"):
        outcome = activity_timed_out_outcome(1, kind, None, 0.0)(_attempt(1, policy))
        assert outcome.retry_at is None
        event = decode_event(outcome.event or b"")
        assert isinstance(event, ActivityTimedOut) and event.timeout_type == kind


def test_lost_worker_retries_at_once() -> None:
    outcome = activity_timed_out_outcome(1, "worker_lost", None, 50.0)(_attempt(1, RetryPolicy()))
    assert outcome.retry_at == 50.0


def test_encoded_events_round_trip() -> None:
    event = TimerStarted(seq=9, duration=1.5, fire_at=2.5)
    assert decode_event(encode_event(event)) == event


def test_error_chosen_retry_delay_replaces_the_backoff_within_policy_limits() -> None:
    from perdure import ApplicationError
    from perdure._failure import exception_from_failure, failure_from_exception

    failure = failure_from_exception(
        ApplicationError("rate limited", type="RateLimited", next_retry_delay=30))
    assert exception_from_failure(failure).next_retry_delay == 30  # type: ignore[attr-defined]
    policy = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
    decide = activity_failed_outcome(1, failure, now=2000.0)
    assert decide(_attempt(1, policy)).retry_at == 2030.0
    assert decide(_attempt(3, policy)).retry_at is None  # the attempts still run out
    # a delay past schedule-to-close ends the activity instead
    assert decide(_attempt(1, policy, s2c=1020.0)).retry_at is None
