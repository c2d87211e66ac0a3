"""A one-line replay check for a test suite: committed histories must still replay."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from perdure.client import WorkflowHistory
from perdure.replay import Replayer, ReplayReport

__all__ = ["assert_replays"]


def assert_replays(
    workflows: Sequence[type], *sources: str | os.PathLike[str] | WorkflowHistory,
) -> ReplayReport:
    """Replay histories against ``workflows``; raise ``NondeterminismError`` with the
    readable report if any fails. ``sources`` are exported files, directories (every
    ``*.json`` below them) or :class:`WorkflowHistory` objects. Returns the report."""
    replayer = Replayer(workflows)
    report = ReplayReport()
    for source in sources:
        if isinstance(source, WorkflowHistory):
            report.append(replayer.replay_history(source))
            continue
        path = Path(source)
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no *.json history files under {path}")
        report.extend(replayer.replay_files(files))
    if not report:
        raise ValueError("assert_replays needs at least one history")
    report.raise_on_failure()
    return report
