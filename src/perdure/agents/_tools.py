"""Tools: activities the model can call, described to it by a JSON schema of their hints."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec

from perdure import ApplicationError, ConfigurationError, RetryPolicy, activity
from perdure.agents._messages import ToolSpec

__all__ = ["Tool", "ToolArgumentsError", "tool"]

ACTIVITY_PREFIX = "perdure.agents.tool."
DEFAULT_TOOL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
"""A tool that keeps failing is reported to the model after three attempts."""


class ToolArgumentsError(ValueError):
    """The model called a tool with arguments that do not fit its signature."""


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_json_schema") \
        and hasattr(tp, "model_validate")


@dataclasses.dataclass
class Tool:
    """A function an agent's model may call; it runs as an activity (at least once, with
    its timeout and retry policy). Made by :func:`tool`."""

    name: str
    description: str
    fn: Callable[..., Any]
    parameters: dict[str, Any]
    start_to_close_timeout: timedelta
    retry_policy: RetryPolicy
    heartbeat_timeout: timedelta | None
    requires_approval: bool
    activity: Callable[..., Any]
    """The activity that runs the tool: takes the model's arguments (a JSON object)."""
    sandbox: bool = False
    """A sandbox tool (see :class:`LocalSandboxes`): its activity also takes the run's
    :class:`SandboxState` and answers with the workspace's checkpoint."""

    @property
    def spec(self) -> ToolSpec:
        """The tool as the model sees it."""
        return ToolSpec(name=self.name, description=self.description,
                        parameters=self.parameters)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _schema_and_validator(fn: Callable[..., Any], name: str) -> tuple[
        dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]:
    hints = typing.get_type_hints(fn)
    fields: list[Any] = []
    pydantic_fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(f"tool {name!r}: *args and **kwargs cannot be described "
                                     "to a model; name each parameter")
        hint = hints.get(param.name, Any)
        if _is_pydantic(hint):
            pydantic_fields[param.name] = hint
            hint = dict[str, Any]
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, hint))
        else:
            fields.append((param.name, hint, param.default))
    struct = msgspec.defstruct(f"{name}_arguments", fields, forbid_unknown_fields=True)
    (schema,), components = msgspec.json.schema_components(
        [struct], ref_template="#/$defs/{name}")
    schema = dict(components.pop(schema["$ref"].rsplit("/", 1)[-1], schema))
    schema.pop("title", None)
    for field_name, model in pydantic_fields.items():
        schema.setdefault("properties", {})[field_name] = model.model_json_schema()
    if components:
        schema["$defs"] = components

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            value = msgspec.convert(arguments, struct)
        except msgspec.ValidationError as exc:
            raise ToolArgumentsError(f"invalid arguments for {name}: {exc}") from None
        out = {f: getattr(value, f) for f in struct.__struct_fields__}
        for field_name, model in pydantic_fields.items():
            if field_name in arguments:
                try:
                    out[field_name] = model.model_validate(arguments[field_name])
                except Exception as exc:
                    raise ToolArgumentsError(
                        f"invalid arguments for {name}.{field_name}: {exc}") from None
        return out

    return schema, validate


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None,
    description: str | None = None,
    start_to_close_timeout: timedelta = timedelta(minutes=5),
    retry_policy: RetryPolicy | None = None, heartbeat_timeout: timedelta | None = None,
    requires_approval: bool = False,
) -> Any:
    """Make a function (async or plain) a tool: an activity that agents' models can call.

    Its JSON schema comes from the type hints; its description from ``description`` or
    the docstring. The model's arguments are validated first: invalid ones go back to
    the model as a tool error, as does any exception the tool raises (after its retries).
    ``requires_approval`` makes the agent wait for ``handle.approve(call_id)`` (or
    ``deny``) before running it.
    """

    def decorate(f: Callable[..., Any]) -> Tool:
        tool_name = name or f.__name__
        parameters, validate = _schema_and_validator(f, tool_name)
        is_async = inspect.iscoroutinefunction(f)

        async def run_tool(arguments: dict[str, Any]) -> Any:
            try:
                kwargs = validate(arguments)
            except ToolArgumentsError as exc:
                # retrying cannot fix the model's arguments: tell the model at once
                raise ApplicationError(str(exc), type="ToolArgumentsError",
                                       non_retryable=True) from None
            if is_async:
                return await f(**kwargs)
            return f(**kwargs)

        run_tool.__name__ = f"tool_{tool_name}"
        run_tool.__qualname__ = run_tool.__name__
        return Tool(
            name=tool_name,
            description=(description or inspect.getdoc(f) or tool_name).strip(),
            fn=f, parameters=parameters, start_to_close_timeout=start_to_close_timeout,
            retry_policy=retry_policy or DEFAULT_TOOL_RETRY, heartbeat_timeout=heartbeat_timeout,
            requires_approval=requires_approval,
            activity=activity.defn(name=ACTIVITY_PREFIX + tool_name)(run_tool),
        )

    return decorate(fn) if fn is not None else decorate
