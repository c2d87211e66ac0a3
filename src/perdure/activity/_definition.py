"""``@activity.defn``: marks a function (or a method) as an activity and records its shape."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from perdure._converter import parameter_hints, return_hint
from perdure._errors import ConfigurationError

__all__ = ["ActivityDefinition", "defn", "executable_definition", "get_activity_definition"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__perdure_activity__"


@dataclasses.dataclass(frozen=True)
class ActivityDefinition:
    """What the worker and the workflow runtime need to know about an activity."""

    name: str
    fn: Callable[..., Any]
    """What the worker calls: the decorated function, or (registered on a worker) the
    bound method or callable instance it was given."""
    is_async: bool
    parameter_hints: list[Any]
    """Hints of the arguments a caller passes (``self`` left out for methods)."""
    return_hint: Any
    is_method: bool = False
    """Defined in a class body with ``self`` (or ``cls``) first: a worker needs it bound
    to an instance (``Worker(activities=[instance.method])``)."""


def _is_method(f: Callable[..., Any]) -> bool:
    """Whether ``f`` was defined in a class body and takes the instance first."""
    parts = getattr(f, "__qualname__", "").split(".")
    if len(parts) < 2 or parts[-2] == "<locals>":
        return False
    try:
        params = list(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] in ("self", "cls")


@overload
def defn(fn: F) -> F: ...


@overload
def defn(*, name: str | None = None) -> Callable[[F], F]: ...


def defn(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a function (``async def`` or plain ``def``) as an activity.

    Plain functions run in the worker's thread pool. ``name`` is the activity
    type recorded in history; it defaults to the function's ``__name__``, and
    should stay stable once histories reference it.

    A method works too, so that an activity can hold clients and pools: decorate it
    in the class and register it bound, ``Worker(activities=[Payments(db).charge])``;
    workflows call it with ``workflow.execute_activity_method(Payments.charge, ...)``.
    A decorated ``__call__`` makes the instance itself the activity (named after
    the class unless ``name`` is given).
    """

    def decorate(f: F) -> F:
        is_method = _is_method(f)
        default_name = f.__name__
        if is_method and default_name == "__call__":
            default_name = f.__qualname__.split(".")[-2]
        definition = ActivityDefinition(
            name=name or default_name,
            fn=f,
            is_async=inspect.iscoroutinefunction(f),
            parameter_hints=parameter_hints(f, skip_self=is_method),
            return_hint=return_hint(f),
            is_method=is_method,
        )
        setattr(f, _ATTR, definition)
        return f

    if fn is not None:
        return decorate(fn)
    return decorate


def get_activity_definition(fn: Any) -> ActivityDefinition | None:
    """The definition attached by :func:`defn` to a function, a method (bound or not),
    a callable instance or its class (through a decorated ``__call__``); or ``None``."""
    definition = getattr(fn, _ATTR, None)
    if definition is None and fn is not None:
        # the function itself, not callable(): its definition hangs on it
        call = getattr(fn if isinstance(fn, type) else type(fn), "__call__", None)  # noqa: B004
        definition = getattr(call, _ATTR, None)
    return definition if isinstance(definition, ActivityDefinition) else None


def executable_definition(fn: Any) -> ActivityDefinition | None:
    """The definition for a worker to run ``fn`` by (``fn`` itself is what it calls);
    ``None`` when ``fn`` is no activity. A method given unbound (``Cls.method``) has no
    instance to run on: that is a :class:`ConfigurationError`."""
    definition = get_activity_definition(fn)
    if definition is None:
        return None
    if definition.is_method:
        bound = (inspect.ismethod(fn) and fn.__func__ is definition.fn) or (
            not isinstance(fn, type) and not inspect.isfunction(fn)
            and getattr(type(fn), "__call__", None) is definition.fn  # noqa: B004
        )
        if not bound:
            owner = definition.fn.__qualname__.rsplit(".", 1)[0]
            raise ConfigurationError(
                f"activity {definition.name!r} ({definition.fn.__qualname__}) is a method, "
                f"given without an instance; register it bound: Worker(activities="
                f"[{owner}(...).{definition.fn.__name__}])"
                if definition.fn.__name__ != "__call__" else
                f"activity {definition.name!r} is the __call__ of {owner}; register an "
                f"instance: Worker(activities=[{owner}(...)])"
            )
    return dataclasses.replace(definition, fn=fn)
