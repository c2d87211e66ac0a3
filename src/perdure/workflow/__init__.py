"""Workflow code's API: decorators, activities, durable timers, deterministic helpers.

Workflow code must be deterministic: it runs again (replays) from its history
after any crash. Use these functions instead of the clock, ``random`` and
``uuid``; put every side effect in an activity.
"""

from perdure.workflow._api import (
    ActivityHandle,
    continue_as_new,
    deprecate_patch,
    execute_activity,
    get_last_completion_result,
    get_last_failure,
    has_last_completion_result,
    info,
    is_replaying,
    logger,
    now,
    patched,
    publish,
    random,
    set_signal_handler,
    sleep,
    start_activity,
    upsert_memo,
    upsert_search_attributes,
    uuid4,
    wait_condition,
)
from perdure.workflow._children import (
    ChildWorkflowCancellationType,
    ChildWorkflowHandle,
    ExternalWorkflowHandle,
    ParentClosePolicy,
    execute_child_workflow,
    get_external_workflow_handle,
    start_child_workflow,
)
from perdure.workflow._definition import defn, query, run, signal, update, update_validator
from perdure.workflow._instance import WorkflowInfo

__all__ = [
    "ActivityHandle",
    "ChildWorkflowCancellationType",
    "ChildWorkflowHandle",
    "ExternalWorkflowHandle",
    "ParentClosePolicy",
    "WorkflowInfo",
    "continue_as_new",
    "defn",
    "deprecate_patch",
    "execute_activity",
    "execute_child_workflow",
    "get_external_workflow_handle",
    "get_last_completion_result",
    "get_last_failure",
    "has_last_completion_result",
    "info",
    "is_replaying",
    "logger",
    "now",
    "patched",
    "publish",
    "query",
    "random",
    "run",
    "set_signal_handler",
    "signal",
    "sleep",
    "start_activity",
    "start_child_workflow",
    "update",
    "update_validator",
    "upsert_memo",
    "upsert_search_attributes",
    "uuid4",
    "wait_condition",
]
