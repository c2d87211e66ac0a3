"""Workers: the processes that run workflow tasks and activities."""

from perdure.worker._worker import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
