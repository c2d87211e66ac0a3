"""Whether the running code is replaying an activation that history already recorded.

The checks at Perdure's edges (storable names, finite numbers, payload caps) exist so
that nothing unstorable is ever recorded. An activation that is being *replayed* was
recorded already, possibly by an older Perdure with looser rules (which stored a NaN as
``null``, or an id now over the length limit): refusing its values now would fail the
workflow task on every retry and wedge the run for good. So while replaying, the checks
let through what history holds; everything new (a live activation, a client call, an
activity) is checked. Thread-local, set by the workflow runtime around an activation it
replays (asyncio tasks copy context variables; they do not copy this).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["replaying_history", "replaying_recorded"]

_state = threading.local()


def replaying_recorded() -> bool:
    """True while workflow code on this thread replays a recorded activation."""
    return bool(getattr(_state, "on", False))


@contextlib.contextmanager
def replaying_history(on: bool) -> Iterator[None]:
    """Mark this thread as replaying recorded history (``on``) for the block."""
    previous = getattr(_state, "on", False)
    _state.on = on
    try:
        yield
    finally:
        _state.on = previous
