"""Replay checks: prove new workflow code compatible with stored histories before a deploy.

:class:`Replayer` replays histories (from the database, or exported files) against
the workflow classes it is given, and reports per history: ok, or the first mismatch
with the recorded event, the command the new code produced and the line that
produced it. ``perdure replay`` is the same from the command line.
"""

from perdure.replay._diff import HistoryDiff, diff_histories
from perdure.replay._replayer import Replayer, ReplayReport, ReplayResult

__all__ = ["HistoryDiff", "ReplayReport", "ReplayResult", "Replayer", "diff_histories"]
