"""Pins the public surface: it changes only on purpose."""

from __future__ import annotations

import perdure
from perdure import activity, agents, replay, testing, workflow

EXPECTED_TOP_LEVEL = {
    "ActivityError", "ActivityNotFoundError", "ApplicationError", "AsyncActivityCancelledError",
    "AsyncActivityHandle", "CancelledFailure", "ChildWorkflowError", "Client", "ConfigurationError",
    "FailureError", "IdConflictPolicy", "IdReusePolicy", "InvalidArgumentError", "InvalidDatabaseURLError", "DatabaseUnavailableError",
    "NondeterminismError", "NotInActivityError", "NotInWorkflowError", "PayloadConverter",
    "PayloadDecodingError", "PayloadEncodingError", "PayloadError", "PayloadTooLargeError",
    "PerdureError", "QueryError", "QueryRejectedError", "QueryTimeoutError", "RetryPolicy",
    "SchemaVersionError", "StreamEvent", "TerminatedFailure", "TimeoutFailure", "UnknownActivityTypeError",
    "UnknownHandlerError", "UnknownWorkflowTypeError", "UpdateFailedError",
    "UpdateRejectedError", "Worker", "WorkerOptions",
    "WorkflowAlreadyStartedError", "WorkflowDescription", "WorkflowFailureError",
    "WorkflowHandle", "WorkflowHistory", "WorkflowPage", "WorkflowNotFoundError", "WorkflowStatus",
    "WorkflowExecutionStatus", "WorkflowUpdateHandle", "WorkflowUpdateStage",
    "WithStartWorkflowOperation", "activity", "exceptions", "workflow",
}


def test_top_level_exports() -> None:
    assert set(perdure.__all__) == EXPECTED_TOP_LEVEL
    for name in perdure.__all__:
        assert getattr(perdure, name) is not None


def test_workflow_exports() -> None:
    assert set(workflow.__all__) == {
        "ActivityHandle", "ChildWorkflowCancellationType", "ChildWorkflowHandle",
        "ExternalWorkflowHandle", "ParentClosePolicy", "WorkflowInfo", "continue_as_new", "defn", "deprecate_patch",
        "execute_activity", "execute_activity_method", "execute_child_workflow",
        "get_external_workflow_handle", "get_last_completion_result", "get_last_failure",
        "has_last_completion_result", "info",
        "is_replaying", "logger", "now", "patched", "publish", "query", "random", "run", "set_signal_handler",
        "signal", "sleep", "start_activity", "start_activity_method", "start_child_workflow",
        "update",
        "update_validator", "upsert_memo", "upsert_search_attributes", "uuid4",
        "wait_condition", "all_handlers_finished", "execute_local_activity", "init",
        "start_local_activity", "unsafe", "wait",
    }


def test_activity_and_testing_exports() -> None:
    assert set(activity.__all__) == {
        "ActivityDefinition", "ActivityInfo", "RatePermit", "defn", "heartbeat", "heartbeat_details", "info",
        "is_cancelled", "load_payloads", "logger", "payload_ref", "publish", "raise_complete_async", "rate_limit",
        "store_payloads", "wait_for_cancelled", "wait_for_cancelled_sync",
    }
    assert set(testing.__all__) == {"ActivityEnvironment", "WorkflowEnvironment", "assert_replays"}
    environment = {n for n in vars(testing.WorkflowEnvironment) if not n.startswith("_")}
    assert environment == {
        "get_current_time", "shutdown", "sleep", "start_local", "start_time_skipping",
        "supports_time_skipping", "worker",
    }
    assert set(agents.__all__) == {
        "Agent", "AgentHandle", "AgentResult", "AgentRun", "AgentWorker", "AnthropicModel",
        "EventPrinter", "LocalSandboxes", "Message", "Model", "ModelLimits", "SandboxLimits",
        "SandboxState",
        "ModelRequest", "ModelResponse", "OpenAIChatModel", "Price", "ScriptedModel", "Tool",
        "ToolCall", "ToolSpec", "Usage", "ask_human", "start_agent", "tool",
    }
    assert set(replay.__all__) == {
        "HistoryDiff", "ReplayReport", "ReplayResult", "Replayer", "diff_histories",
    }


def test_every_error_derives_from_perdure_error() -> None:
    for name in perdure.__all__:
        obj = getattr(perdure, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, perdure.PerdureError), name


def test_public_names_have_docstrings() -> None:
    for module in (perdure, workflow, activity, testing, replay, agents):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, type(perdure)):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
