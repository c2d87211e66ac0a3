"""The engine: pure state machines between the workflow runtime and the store."""

from perdure.engine._reset import ResetPlan, cut_point, plan_reset
from perdure.engine._transitions import (
    activity_completed_outcome,
    activity_failed_outcome,
    activity_timed_out_outcome,
    plan_workflow_task,
)

__all__ = [
    "ResetPlan",
    "activity_completed_outcome",
    "activity_failed_outcome",
    "activity_timed_out_outcome",
    "cut_point",
    "plan_reset",
    "plan_workflow_task",
]
