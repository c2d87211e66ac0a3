"""The history data model shared by the runtime, the engine and the store."""

from perdure.history._events import *  # noqa: F403
from perdure.history._events import __all__ as _events_all
from perdure.history._events import event_type_name

__all__ = [*_events_all, "event_type_name"]
