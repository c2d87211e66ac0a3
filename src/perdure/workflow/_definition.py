"""``@workflow.defn`` and friends: how a workflow class declares itself."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from perdure._converter import parameter_hints, return_hint
from perdure._errors import ConfigurationError

__all__ = [
    "HandlerDefinition",
    "WorkflowDefinition",
    "defn",
    "get_workflow_definition",
    "query",
    "run",
    "signal",
]

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

_DEFN = "__perdure_workflow__"
_RUN = "__perdure_run__"
_SIGNAL = "__perdure_signal__"
_QUERY = "__perdure_query__"
_OWNER = "__perdure_owner__"


@dataclasses.dataclass(frozen=True)
class HandlerDefinition:
    """A signal or query handler method."""

    name: str
    method: Callable[..., Any]
    is_async: bool
    parameter_hints: list[Any]
    return_hint: Any


@dataclasses.dataclass(frozen=True)
class WorkflowDefinition:
    """A workflow class as the runtime sees it."""

    name: str
    cls: type
    run_method: Callable[..., Any]
    run_parameter_hints: list[Any]
    run_return_hint: Any
    signals: dict[str, HandlerDefinition]
    queries: dict[str, HandlerDefinition]
    dynamic_signals: bool = False
    """Handlers may be added at run time (``workflow.set_signal_handler``): clients
    then accept any signal name for this type."""


def run(fn: F) -> F:
    """Mark the ``async`` method that runs the workflow; exactly one per class."""
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(f"@workflow.run method {fn.__qualname__} must be 'async def'")
    setattr(fn, _RUN, True)
    return fn


@overload
def signal(fn: F) -> F: ...


@overload
def signal(*, name: str | None = None) -> Callable[[F], F]: ...


def signal(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a method as a signal handler (sync or async); ``name`` defaults to the method name."""

    def decorate(f: F) -> F:
        setattr(f, _SIGNAL, name or f.__name__)
        return f

    return decorate(fn) if fn is not None else decorate


@overload
def query(fn: F) -> F: ...


@overload
def query(*, name: str | None = None) -> Callable[[F], F]: ...


def query(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a plain (non-async) method as a query handler: it reads state, never changes it."""

    def decorate(f: F) -> F:
        if inspect.iscoroutinefunction(f):
            raise ConfigurationError(f"@workflow.query method {f.__qualname__} must not be async")
        setattr(f, _QUERY, name or f.__name__)
        return f

    return decorate(fn) if fn is not None else decorate


def _handler(name: str, method: Callable[..., Any]) -> HandlerDefinition:
    return HandlerDefinition(
        name=name,
        method=method,
        is_async=inspect.iscoroutinefunction(method),
        parameter_hints=parameter_hints(method, skip_self=True),
        return_hint=return_hint(method),
    )


@overload
def defn(cls: C) -> C: ...


@overload
def defn(*, name: str | None = None, dynamic_signals: bool = False) -> Callable[[C], C]: ...


def defn(
    cls: C | None = None, *, name: str | None = None, dynamic_signals: bool = False
) -> C | Callable[[C], C]:
    """Mark a class as a workflow definition.

    ``name`` is the workflow type recorded in history (default: the class name);
    keep it stable once workflows of this type are running. ``dynamic_signals``
    declares that the workflow registers signal handlers at run time, so clients
    must not reject signal names the class does not declare.
    """

    def decorate(c: C) -> C:
        run_method = None
        signals: dict[str, HandlerDefinition] = {}
        queries: dict[str, HandlerDefinition] = {}
        for attr_name in dir(c):
            member = getattr(c, attr_name, None)
            if member is None or not callable(member):
                continue
            if getattr(member, _RUN, False):
                if run_method is not None:
                    raise ConfigurationError(
                        f"workflow {c.__qualname__} has more than one @workflow.run method"
                    )
                run_method = member
            if (sig_name := getattr(member, _SIGNAL, None)) is not None:
                signals[sig_name] = _handler(sig_name, member)
            if (q_name := getattr(member, _QUERY, None)) is not None:
                queries[q_name] = _handler(q_name, member)
        if run_method is None:
            raise ConfigurationError(
                f"workflow {c.__qualname__} has no @workflow.run method; mark its async entry "
                "point with @workflow.run"
            )
        definition = WorkflowDefinition(
            name=name or c.__name__,
            cls=c,
            run_method=run_method,
            run_parameter_hints=parameter_hints(run_method, skip_self=True),
            run_return_hint=return_hint(run_method),
            signals=signals,
            queries=queries,
            dynamic_signals=dynamic_signals,
        )
        setattr(c, _DEFN, definition)
        for method in [run_method, *(h.method for h in signals.values()),
                       *(h.method for h in queries.values())]:
            if getattr(method, "__qualname__", "").startswith(c.__qualname__ + "."):
                setattr(method, _OWNER, definition)
        return c

    return decorate(cls) if cls is not None else decorate


def get_workflow_definition(obj: Any) -> WorkflowDefinition | None:
    """The definition of a workflow class, or of the class owning a method given."""
    definition = getattr(obj, _DEFN, None)
    if isinstance(definition, WorkflowDefinition):
        return definition
    owner = getattr(obj, _OWNER, None)
    return owner if isinstance(owner, WorkflowDefinition) else None


def handler_name(method: Any, kind: str) -> str | None:
    """The signal or query name a method was registered under."""
    return getattr(method, _SIGNAL if kind == "signal" else _QUERY, None)
