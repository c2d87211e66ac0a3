"""Event type names and fields are compatibility data: stored histories depend on them."""

from __future__ import annotations

import msgspec

from perdure import history
from perdure.history import ActivityScheduled, decode_event, encode_event, event_type_name

PINNED_FIELDS = {
    "WorkflowStarted": [
        "workflow_type", "task_queue", "input", "started_at", "execution_timeout",
        "parent_workflow_id", "parent_run_id", "parent_seq", "continued_from_run_id",
        "memo", "search_attributes", "attempt", "run_timeout", "retry_policy",
        "cron_schedule", "last_completion_result", "last_failure",
    ],
    "ActivityCompleted": ["seq", "result", "attempt"],
    "ActivityFailed": ["seq", "failure", "attempt"],
    "ActivityTimedOut": ["seq", "timeout_type", "attempt", "last_failure"],
    "TimerFired": ["seq"],
    "SignalReceived": ["name", "args"],
    "CancelRequested": ["reason"],
    "ChildWorkflowStarted": ["seq", "run_id"],
    "ChildWorkflowStartFailed": ["seq", "cause", "run_id"],
    "ChildWorkflowCompleted": ["seq", "result"],
    "ChildWorkflowFailed": ["seq", "status", "failure"],
    "ChildWorkflowCanceled": ["seq"],
    "ExternalSignalDelivered": ["seq", "error"],
    "ExternalCancelDelivered": ["seq", "error"],
    "UpdateRequested": ["update_id", "name", "args"],
    "UpdateAccepted": ["update_id", "name", "args"],
    "UpdateCompleted": ["update_id", "result", "failure"],
    "WorkflowTaskCompleted": ["time", "worker", "build_id", "continue_as_new_suggested"],
    "ActivityScheduled": [
        "seq", "activity_type", "task_queue", "input", "activity_id", "start_to_close_timeout",
        "schedule_to_close_timeout", "schedule_to_start_timeout", "heartbeat_timeout",
        "retry_policy",
    ],
    "ActivityCancelRequested": ["seq"],
    "TimerStarted": ["seq", "duration", "fire_at"],
    "TimerCanceled": ["seq"],
    "MarkerRecorded": ["seq", "name", "value"],
    "ChildWorkflowScheduled": [
        "seq", "workflow_type", "workflow_id", "task_queue", "input", "parent_close_policy",
        "execution_timeout", "memo", "search_attributes", "run_timeout", "retry_policy",
        "cron_schedule",
    ],
    "ChildWorkflowCancelRequested": ["seq"],
    "SearchAttributesUpserted": ["attributes"],
    "MemoUpserted": ["memo"],
    "ExternalSignalSent": ["seq", "workflow_id", "name", "args", "run_id"],
    "ExternalCancelSent": ["seq", "workflow_id", "reason", "run_id"],
    "WorkflowCompleted": ["result"],
    "WorkflowFailed": ["failure"],
    "WorkflowCanceled": ["reason"],
    "WorkflowContinuedAsNew": ["workflow_type", "task_queue", "input"],
    "WorkflowTerminated": ["reason"],
    "WorkflowTimedOut": ["timeout"],
    "WorkflowReset": ["to_event", "new_run_id", "reason"],
}


def test_event_names_and_fields_are_pinned() -> None:
    found = {}
    for name in history.__all__:
        cls = getattr(history, name)
        if isinstance(cls, type) and issubclass(cls, msgspec.Struct) and cls is not history.Failure:
            found[cls.__struct_config__.tag] = list(cls.__struct_fields__)
    assert found == PINNED_FIELDS


def test_failure_fields_are_pinned() -> None:
    assert list(history.Failure.__struct_fields__) == [
        "type", "message", "stack", "kind", "non_retryable", "details", "cause", "attributes",
    ]


def test_stored_json_form_decodes() -> None:
    stored = (
        b'{"type":"ActivityScheduled","seq":1,"activity_type":"call_model","task_queue":"q",'
        b'"input":["hi"],"activity_id":"1"}'
    )
    event = decode_event(stored)
    assert isinstance(event, ActivityScheduled)
    assert event_type_name(event) == "ActivityScheduled"
    assert bytes(event.input) == b'["hi"]'
    assert encode_event(event) == stored
