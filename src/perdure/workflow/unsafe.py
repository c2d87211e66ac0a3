"""Temporal's ``workflow.unsafe`` helpers, for code ported from it.

Perdure runs workflow code in the worker's own interpreter, without Temporal's import
sandbox; determinism is checked by the determinism guard instead (see
``WorkerOptions.determinism_guard``). So there is nothing to pass imports through:
these context managers do nothing, and exist so that Temporal code runs unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from perdure.workflow._api import is_replaying

__all__ = ["imports_passed_through", "is_replaying", "sandbox_unrestricted"]


@contextlib.contextmanager
def imports_passed_through() -> Iterator[None]:
    """A no-op: Perdure has no import sandbox to pass modules through."""
    yield


@contextlib.contextmanager
def sandbox_unrestricted() -> Iterator[None]:
    """A no-op: Perdure has no sandbox. Its determinism guard still watches workflow
    code; turn it off per worker with ``WorkerOptions(determinism_guard="off")``."""
    yield
