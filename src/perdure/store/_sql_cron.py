"""Cron chains in SQL: the run that follows a closed run of a cron workflow.

Runs inside the closing run's transaction (``SqlRunStore._close_run``), so that the
next run of the chain exists from the commit that closed the last one.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

from perdure._cron import CronSchedule

if TYPE_CHECKING:
    from perdure.store._sql_runs import Conn, NewRun, SqlRunStore

__all__ = ["CONTINUES", "next_cron_run"]

CONTINUES = ("completed", "failed", "timed_out")
"""Closes after which a cron chain goes on (Temporal's rule): not terminated or canceled."""


def next_cron_run(
    store: SqlRunStore, conn: Conn, workflow_id: str, run_id: str, closed: tuple[Any, ...],
    status: str, result: bytes | None, failure: bytes | None, now: float,
) -> tuple[NewRun, float]:
    """The next run of a (locked, just closed) cron run and when its first task becomes
    visible: the first tick after the closed run's own that is not past. Same input, memo,
    search attributes, task queue and execution deadline; attempt 1; the last completion
    result (this run's, or the one it was handed) and this run's failure handed over.
    ``closed`` is (cron schedule, scheduled at, last completion result) of the run."""
    cron, scheduled_at, last_result = closed
    at = CronSchedule(cron).next_time(scheduled_at if scheduled_at is not None else now, now)
    store._lock_workflow_id(conn, workflow_id)  # one running run per workflow id
    successor = dataclasses.replace(
        store._successor(conn, workflow_id, run_id, str(uuid.uuid4())),
        attempt=1, scheduled_at=at,
        last_completion_result=(result if status == "completed" else
                                bytes(last_result) if last_result is not None else None),
        last_failure=failure if status != "completed" else None,
    )
    conn.execute(
        "UPDATE workflow_runs SET next_run_id = ? WHERE workflow_id = ? AND run_id = ?",
        (successor.run_id, workflow_id, run_id),
    )
    return successor, at
