"""The replay check: histories in, a report of which still replay out. No worker needed."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

from perdure._converter import PayloadConverter
from perdure._errors import ConfigurationError, NondeterminismError
from perdure.client import Client, WorkflowHistory, WorkflowStatus
from perdure.workflow._definition import WorkflowDefinition, get_workflow_definition
from perdure.workflow._instance import WorkflowInstance

__all__ = ["ReplayReport", "ReplayResult", "Replayer"]


@dataclasses.dataclass
class ReplayResult:
    """One history's verdict: ``ok``, or why not (``error``; a mismatch is a
    :class:`NondeterminismError` with ``event_seq``, ``recorded``, ``produced`` and
    ``location``)."""

    workflow_id: str
    run_id: str
    workflow_type: str
    events: int
    build_ids: list[str]
    error: Exception | None = None
    source: str = ""
    """Where the history came from: ``database`` or a file name."""

    @property
    def ok(self) -> bool:
        """Whether the code reproduced every recorded command."""
        return self.error is None

    def describe(self) -> str:
        """One line for ``ok``; for a failure, that line and the readable mismatch."""
        builds = ", ".join(self.build_ids) or "none recorded"
        head = (f"{'ok  ' if self.ok else 'FAIL'} {self.workflow_id} (run {self.run_id}, "
                f"{self.workflow_type}, {self.events} events, builds: {builds})")
        if self.error is None:
            return head
        detail = str(self.error)
        if not isinstance(self.error, NondeterminismError):
            detail = f"{type(self.error).__name__}: {detail}"
        return head + "\n" + "\n".join("     " + line for line in detail.splitlines())


class ReplayReport(list[ReplayResult]):
    """Every history checked; true (``ok``) only if all replay."""

    @property
    def ok(self) -> bool:
        """Whether every history replayed."""
        return all(result.ok for result in self)

    @property
    def failures(self) -> list[ReplayResult]:
        """The histories that did not replay."""
        return [result for result in self if not result.ok]

    def describe(self) -> str:
        """The report as text: one entry per history, then a summary line."""
        lines = [result.describe() for result in self]
        builds = sorted({b for result in self for b in result.build_ids})
        lines.append(
            f"{len(self)} histories checked, {len(self.failures)} failed"
            + (f"; recorded builds: {', '.join(builds)}" if builds else "")
        )
        return "\n".join(lines)

    def raise_on_failure(self) -> None:
        """Raise :class:`NondeterminismError` with the whole report if any history failed
        (for a CI step or a pytest test)."""
        if not self.ok:
            raise NondeterminismError(
                "replay check failed: the code cannot continue these stored histories\n"
                + self.describe()
            )


class Replayer:
    """Replays histories against workflow code, with no worker and no database writes.

    ``workflows`` are the ``@workflow.defn`` classes of the code about to ship; a
    history of a type not among them fails with a clear error rather than passing.
    """

    def __init__(self, workflows: Sequence[type], *,
                 converter: PayloadConverter | None = None,
                 workflow_failure_exception_types: Sequence[type[BaseException]] = (),
                 ) -> None:
        self.workflow_failure_exception_types = tuple(workflow_failure_exception_types)
        """As the workers' (``WorkerOptions``): which exceptions fail a run."""
        self.workflows: dict[str, WorkflowDefinition] = {}
        for cls in workflows:
            definition = get_workflow_definition(cls)
            if definition is None:
                raise ConfigurationError(
                    f"{getattr(cls, '__qualname__', cls)!r} is not a workflow; pass "
                    "@workflow.defn classes"
                )
            other = self.workflows.get(definition.name)
            if other is not None and other.cls is not definition.cls:
                raise ConfigurationError(
                    f"{other.cls.__qualname__} and {definition.cls.__qualname__} both define "
                    f"workflow type {definition.name!r}; pass one of them"
                )
            self.workflows[definition.name] = definition
        self.converter = converter or PayloadConverter()

    @staticmethod
    def from_files(paths: Iterable[str | os.PathLike[str]]) -> list[WorkflowHistory]:
        """Read exported histories (``perdure workflow export``, ``WorkflowHistory.to_json``)."""
        return [WorkflowHistory.from_file(path) for path in paths]

    def replay_history(self, history: WorkflowHistory, *, source: str = "") -> ReplayResult:
        """Replay one history; never raises for an incompatibility, it is in the result."""
        workflow_type = history.workflow_type
        result = ReplayResult(
            workflow_id=history.workflow_id, run_id=history.run_id,
            workflow_type=workflow_type or "?", events=len(history.events),
            build_ids=history.build_ids, source=source,
        )
        definition = self.workflows.get(workflow_type)
        if definition is None:
            result.error = ConfigurationError(
                f"workflow type {workflow_type!r} is not among the workflows given to the "
                f"replayer ({', '.join(sorted(self.workflows)) or 'none'}); pass its class, "
                "or filter the histories by type"
            )
            return result
        instance = WorkflowInstance(
            definition, workflow_id=history.workflow_id, run_id=history.run_id,
            converter=self.converter,
            failure_exception_types=self.workflow_failure_exception_types)
        try:
            instance.replay(history.events)
        except Exception as exc:
            result.error = exc
        finally:
            instance.close()
        return result

    def replay(self, histories: Iterable[WorkflowHistory], *, source: str = "") -> ReplayReport:
        """Replay every history; the report says which still replay."""
        return ReplayReport(self.replay_history(h, source=source) for h in histories)

    def replay_files(self, paths: Iterable[str | os.PathLike[str]]) -> ReplayReport:
        """Replay exported history files."""
        report = ReplayReport()
        for path in paths:
            report.append(self.replay_history(WorkflowHistory.from_file(path),
                                              source=os.fspath(path)))
        return report

    async def replay_from_database(
        self, client: Client, *, workflow_type: str | None = None,
        statuses: Sequence[WorkflowStatus | str] = (WorkflowStatus.RUNNING,),
        started_after: datetime | float | None = None,
        started_before: datetime | float | None = None, limit: int | None = 1000,
    ) -> ReplayReport:
        """Replay stored runs: running ones by default (they are what a deploy must
        continue); pass more ``statuses`` to check closed runs too."""
        report = ReplayReport()
        async for history in _stored_histories(
            client, workflow_type=workflow_type, statuses=statuses, limit=limit,
            started_after=started_after, started_before=started_before,
        ):
            report.append(self.replay_history(history, source="database"))
        return report


async def _stored_histories(
    client: Client, *, workflow_type: str | None, statuses: Sequence[WorkflowStatus | str],
    limit: int | None, **filters: Any,
) -> AsyncIterator[WorkflowHistory]:
    count = 0
    for status in statuses:
        async for description in client.iter_workflows(
            status=status, workflow_type=workflow_type, **filters
        ):
            if limit is not None and count >= limit:
                return
            handle = client.get_workflow_handle(description.workflow_id,
                                                run_id=description.run_id)
            yield await handle.fetch_history()
            count += 1
