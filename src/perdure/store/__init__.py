"""The store: the only place that speaks SQL."""

from perdure.store._base import StoreNotifier, TimeoutDecider, WorkflowStore
from perdure.store._url import open_store

__all__ = ["StoreNotifier", "TimeoutDecider", "WorkflowStore", "open_store"]
