"""Committing a start: with the first activation an in-process worker ran (eager), or alone.

A start from the process of a worker that serves its queue runs the run's first
activation before committing, and commits both in one transaction (see
``Worker.prepare_eager_start``). What that activation does is the workflow's business,
not the caller's: if the fused commit fails for anything but the start's own verdict
(the id is taken), the start is committed alone, as from any other process, and the
first workflow task runs (and, if it must, fails) the ordinary way. So a start never
fails, and never starts nothing, because of the workflow's own first activation.
"""

from __future__ import annotations

import dataclasses
import logging

from perdure._errors import WorkflowAlreadyStartedError
from perdure.store import WorkflowStore
from perdure.store._records import StartWorkflowRecord

__all__ = ["commit_start"]

_log = logging.getLogger("perdure.client")


async def commit_start(store: WorkflowStore, record: StartWorkflowRecord) -> tuple[str, bool]:
    """Commit ``record``; the run id, and whether its first activation committed with it."""
    if record.first_completion is None:
        return await store.start_workflow(record), False
    try:
        return await store.start_workflow(record), True
    except WorkflowAlreadyStartedError:
        raise  # the start's own verdict, with or without the activation
    except Exception as exc:
        _log.warning(
            "workflow %r (%s): committing its first activation with the start failed (%s); "
            "starting it without, as from another process", record.workflow_id,
            record.workflow_type, exc)
    plain = dataclasses.replace(record, first_completion=None, eager_worker=None)
    return await store.start_workflow(plain), False
