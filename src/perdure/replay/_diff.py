"""Two runs side by side, event by event, from the first point where they differ."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from perdure.client import WorkflowHistory
from perdure.history import HistoryEvent, event_type_name

__all__ = ["HistoryDiff", "diff_histories"]

# fields that differ between any two runs without meaning a different course
_VOLATILE = {
    "WorkflowTaskCompleted": ("time", "worker", "build_id"),
    "WorkflowStarted": ("started_at", "continued_from_run_id", "attempt"),
    "TimerStarted": ("fire_at",),
    "ChildWorkflowStarted": ("run_id",),
}


def _comparable(event: HistoryEvent) -> Any:
    data = msgspec.json.decode(msgspec.json.encode(event))  # Raw payloads as JSON values
    for name in _VOLATILE.get(event_type_name(event), ()):
        data.pop(name, None)
    return data


def _summary(event: HistoryEvent | None, width: int = 60) -> str:
    if event is None:
        return "-"
    data = _comparable(event)
    data.pop("type", None)
    text = event_type_name(event) + " " + msgspec.json.encode(data).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclasses.dataclass
class HistoryDiff:
    """Where two histories part: ``first_difference`` is the 1-based event number
    (None if they agree), ``rows`` the events from there on, side by side."""

    left: WorkflowHistory
    right: WorkflowHistory
    first_difference: int | None
    rows: list[tuple[int, HistoryEvent | None, HistoryEvent | None]]

    def describe(self, *, width: int = 60) -> str:
        """A readable side-by-side table (``=`` same, ``≠`` different)."""
        head = (f"A: {self.left.workflow_id} (run {self.left.run_id}), "
                f"{len(self.left.events)} events\n"
                f"B: {self.right.workflow_id} (run {self.right.run_id}), "
                f"{len(self.right.events)} events")
        if self.first_difference is None:
            return head + "\nthe histories agree, event for event"
        lines = [head, f"they agree up to event {self.first_difference - 1}; from there:",
                 f"{'#':>5}  {'A':<{width}}   {'B':<{width}}"]
        for seq, a, b in self.rows:
            mark = "=" if a is not None and b is not None and _comparable(a) == _comparable(b) \
                else "≠"
            lines.append(f"{seq:>5}  {_summary(a, width):<{width}} {mark} {_summary(b, width)}")
        return "\n".join(lines)


def diff_histories(left: WorkflowHistory, right: WorkflowHistory, *,
                   context: int = 50) -> HistoryDiff:
    """Compare two histories event by event, ignoring what differs between any two runs
    (times, worker and build ids, child run ids); keep ``context`` rows from the first
    difference."""
    a, b = left.events, right.events
    first = None
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x is None or y is None or _comparable(x) != _comparable(y):
            first = index + 1
            break
    rows: list[tuple[int, HistoryEvent | None, HistoryEvent | None]] = []
    if first is not None:
        for index in range(first - 1, min(max(len(a), len(b)), first - 1 + context)):
            rows.append((index + 1, a[index] if index < len(a) else None,
                         b[index] if index < len(b) else None))
    return HistoryDiff(left, right, first, rows)
