"""Workflow code's API: decorators, activities, durable timers, deterministic helpers.

Workflow code must be deterministic: it runs again (replays) from its history
after any crash. Use these functions instead of the clock, ``random`` and
``uuid``; put every side effect in an activity.
"""

from perdure.workflow._api import (
    ActivityHandle,
    execute_activity,
    info,
    is_replaying,
    logger,
    now,
    random,
    set_signal_handler,
    sleep,
    start_activity,
    uuid4,
    wait_condition,
)
from perdure.workflow._definition import defn, query, run, signal
from perdure.workflow._instance import WorkflowInfo

__all__ = [
    "ActivityHandle",
    "WorkflowInfo",
    "defn",
    "execute_activity",
    "info",
    "is_replaying",
    "logger",
    "now",
    "query",
    "random",
    "run",
    "set_signal_handler",
    "signal",
    "sleep",
    "start_activity",
    "uuid4",
    "wait_condition",
]
