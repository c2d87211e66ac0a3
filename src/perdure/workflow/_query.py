"""The state a query answers from: committed history plus the acknowledged inbox.

A query must see every signal, update and activity result acknowledged before it was
made. Those wait in the run's inbox until a workflow task moves them into the history,
so a query's instance replays the history and then applies the inbox as the next
workflow task would. Both the client (given the query method) and a worker (given the
name) build it here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from perdure._converter import PayloadConverter
from perdure.history import HistoryEvent
from perdure.workflow._definition import WorkflowDefinition
from perdure.workflow._instance import WorkflowInstance

__all__ = ["query_instance"]

_log = logging.getLogger("perdure.workflow")


def query_instance(
    definition: WorkflowDefinition, *, workflow_id: str, run_id: str,
    converter: PayloadConverter, history: Sequence[HistoryEvent],
    pending: Sequence[HistoryEvent], now: float, determinism_guard: str = "raise",
    failure_exception_types: Sequence[type[BaseException]] = (),
) -> WorkflowInstance:
    """A throwaway instance at the state a query sees; the caller closes it.

    If applying the pending events fails the way a workflow task fails (a bug in a
    signal handler, non-determinism), no workflow task can apply them either: the run's
    state is then its committed one, which the instance answers from instead.
    """

    def build() -> WorkflowInstance:
        return WorkflowInstance(definition, workflow_id=workflow_id, run_id=run_id,
                                converter=converter, determinism_guard=determinism_guard,
                                failure_exception_types=failure_exception_types)

    instance = build()
    if not pending:
        try:
            instance.replay_for_query(history, now=now)
        except BaseException:
            instance.close()
            raise
        return instance
    try:
        instance.replay_for_query(history, pending, now)
        return instance
    except Exception as exc:
        instance.close()
        _log.info("query on workflow %s: its %d pending event(s) cannot be applied (%s: %s);"
                  " answering from its committed state", workflow_id, len(pending),
                  type(exc).__name__, exc)
    instance = build()
    try:
        instance.replay_for_query(history, now=now)
    except BaseException:
        instance.close()
        raise
    return instance
