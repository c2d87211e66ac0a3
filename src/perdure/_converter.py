"""The payload converter: user values to JSON and back, typed by annotations.

Histories stay readable and portable: arguments, results and signal bodies are
JSON. Decoding is driven by the type hints of the function that receives the
value (dataclasses, msgspec Structs, pydantic models, TypedDicts, primitives).
Pickle never.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
import msgspec.inspect

from perdure._errors import PayloadDecodingError, PayloadEncodingError, PayloadTooLargeError
from perdure._recorded import replaying_recorded

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "PayloadConverter", "non_finite_path"]

DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
"""Default cap on one encoded payload (arguments, result or signal body)."""


def _is_pydantic_model(obj: Any) -> bool:
    return hasattr(obj, "model_dump") and hasattr(type(obj), "model_validate")


def _enc_hook(obj: Any) -> Any:
    if _is_pydantic_model(obj):
        return obj.model_dump(mode="json")
    raise NotImplementedError(type(obj))


def _dec_hook(tp: type, obj: Any) -> Any:
    validate = getattr(tp, "model_validate", None)
    if validate is not None:
        return validate(obj)
    raise NotImplementedError(tp)


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()


class PayloadConverter:
    """Encodes values to JSON bytes and decodes them by type hint.

    ``max_payload_bytes`` bounds one payload so that a runaway value fails fast
    with :class:`PayloadTooLargeError` instead of bloating the history.
    """

    def __init__(self, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_payload_bytes = max_payload_bytes
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

    def encode(self, value: Any, *, what: str = "value") -> bytes:
        """Encode one value; ``what`` names it in errors ("argument 1 of call_model").

        NaN and infinity are refused (:class:`PayloadEncodingError`), not written as
        ``null``: JSON has no such numbers, and a ``null`` where a float was would
        change the value silently (and then fail a ``float`` parameter)."""
        try:
            data = _encoder.encode(value)
        except RecursionError:
            raise PayloadEncodingError(
                f"cannot serialize {what}: it is nested too deeply for JSON; flatten it"
            ) from None
        except UnicodeEncodeError as exc:
            raise PayloadEncodingError(
                f"cannot serialize {what}: a string in it is not valid UTF-8 (a lone "
                f"surrogate {exc.object[exc.start:exc.end]!r}); JSON text must be UTF-8"
            ) from None
        except Exception as exc:  # TypeError, NotImplementedError, EncodeError, a hook's
            raise PayloadEncodingError(
                f"cannot serialize {what} of type {type(value).__name__} to JSON ({exc}); "
                "pass JSON-compatible values: primitives, lists, dicts, dataclasses, "
                "msgspec Structs or pydantic models"
            ) from None
        # msgspec and pydantic write NaN and infinity as null: look for them only then,
        # and walk the value (slow, in Python) only if its msgpack form holds one
        if replaying_recorded():
            return data  # recorded already (an older Perdure wrote NaN as null): as it was
        if b"null" in data and _may_hold_non_finite(value):
            where = non_finite_path(value)
            if where is not None:
                path, number = where
                raise PayloadEncodingError(
                    f"cannot serialize {what}: {f'the value at {path}' if path else 'it'} "
                    f"is {number!r}, which JSON "
                    "cannot hold (it would be stored as null); pass a finite number, None "
                    "or a string"
                )
        if len(data) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{what} is {len(data)} bytes encoded, over the limit of "
                f"{self.max_payload_bytes} bytes; store large data elsewhere (a file, an "
                "object store) and pass a reference, or raise max_payload_bytes"
            )
        return data

    def encode_args(self, args: Sequence[Any], *, what: str) -> bytes:
        """Encode positional arguments as one JSON array."""
        for index, arg in enumerate(args):
            # encode one by one first so that the error names the argument
            self.encode(arg, what=f"argument {index + 1} of {what}")
        return self.encode(list(args), what=f"arguments of {what}")

    def decode(self, data: bytes, hint: Any = Any, *, what: str = "value") -> Any:
        """Decode JSON bytes into ``hint`` (``Any`` keeps plain JSON values)."""
        if hint is Any or hint is inspect.Parameter.empty or (hint is None and data == b"null"):
            return _any.decode(data)
        decoder = self._decoders.get(hint)
        if decoder is None:
            try:
                decoder = msgspec.json.Decoder(hint, dec_hook=_dec_hook)
            except TypeError:
                decoder = _any
            self._decoders[hint] = decoder
        try:
            return decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, RecursionError) as exc:
            raise PayloadDecodingError(
                f"cannot decode {what} as {getattr(hint, '__name__', hint)}: {exc}; "
                "check that the sender and the receiving function agree on the type"
            ) from None

    def hint_problem(self, hint: Any) -> str | None:
        """Why values annotated ``hint`` could not be decoded, or None when they can.

        Checked when a worker registers a function, so that an annotation the converter
        cannot honour is refused up front instead of failing every call."""
        if hint is Any or hint is inspect.Parameter.empty:
            return None
        try:
            decoder = msgspec.json.Decoder(hint, dec_hook=_dec_hook)
            info = msgspec.inspect.type_info(hint)
        except Exception as exc:  # msgspec refuses the type itself
            return str(exc)
        for cls in _custom_types(info, set()):
            if not hasattr(cls, "model_validate"):
                return (f"{getattr(cls, '__qualname__', cls)} is not a type JSON decodes into "
                        "(a primitive, list, dict, dataclass, msgspec Struct, TypedDict or "
                        "pydantic model)")
        self._decoders.setdefault(hint, decoder)
        return None

    def decode_args(self, data: bytes, hints: Sequence[Any], *, what: str) -> list[Any]:
        """Decode a JSON array of arguments, each by its parameter's hint."""
        try:
            raws = _raw_list.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise PayloadDecodingError(f"malformed arguments for {what}: {exc}") from None
        out = []
        for index, raw in enumerate(raws):
            hint = hints[index] if index < len(hints) else Any
            out.append(self.decode(bytes(raw), hint, what=f"argument {index + 1} of {what}"))
        return out


def _python_hook(obj: Any) -> Any:
    if _is_pydantic_model(obj):
        return obj.model_dump(mode="python")  # "json" mode writes NaN as null
    raise NotImplementedError(type(obj))


_msgpack = msgspec.msgpack.Encoder(enc_hook=_python_hook)
_NON_FINITE_FLOAT64 = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")
"""A msgpack float64 whose exponent bits are all ones: NaN or an infinity."""


def _may_hold_non_finite(value: Any) -> bool:
    """Whether ``value`` may hold a NaN or an infinity: its msgpack form (C-fast, floats
    kept as they are) has one, or could not be made. False positives (the bytes inside a
    string) only cost a walk."""
    try:
        packed = _msgpack.encode(value)
    except Exception:
        return True
    return _NON_FINITE_FLOAT64.search(packed) is not None


def non_finite_path(value: Any) -> tuple[str, float] | None:
    """The first NaN or infinity inside ``value`` (and where: ``["a"][2].price``), or None.

    Walks what the encoder walks: dicts, lists, tuples, sets, dataclasses, msgspec
    Structs, attrs classes and pydantic models; iteratively, so that a deep value cannot
    exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    seen: set[int] = set()
    while stack:
        path, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path, item
            continue
        if isinstance(item, str | bytes | int | bool) or item is None:
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        children: list[tuple[str, Any]] = []
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, float) and not math.isfinite(key):
                    return f"{path}[{key!r}]", key
                children.append((f"{path}[{key!r}]", child))
        elif isinstance(item, list | tuple | set | frozenset):
            children = [(f"{path}[{index}]", child) for index, child in enumerate(item)]
        elif isinstance(item, msgspec.Struct):
            children = [(f"{path}.{name}", getattr(item, name, None))
                        for name in item.__struct_fields__]
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            children = [(f"{path}.{field.name}", getattr(item, field.name, None))
                        for field in dataclasses.fields(item)]
        elif hasattr(type(item), "__attrs_attrs__"):
            children = [(f"{path}.{a.name}", getattr(item, a.name, None))
                        for a in type(item).__attrs_attrs__]
        elif _is_pydantic_model(item):
            children = [(path, item.model_dump(mode="python"))]
        stack.extend(reversed(children))
    return None


def _custom_types(node: Any, seen: set[int]) -> Iterator[Any]:
    """The classes in a msgspec type tree that only ``dec_hook`` could build."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, msgspec.inspect.CustomType):
        yield node.cls
        return
    for name in getattr(node, "__struct_fields__", ()):
        value = getattr(node, name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, msgspec.inspect.Field):
                item = item.type
            if isinstance(item, msgspec.inspect.Type):
                yield from _custom_types(item, seen)


def parameter_hints(fn: Callable[..., Any], *, skip_self: bool = False) -> list[Any]:
    """Type hints of ``fn``'s positional parameters, ``Any`` where missing."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    params = list(inspect.signature(fn).parameters.values())
    if skip_self and params:
        params = params[1:]
    return [
        hints.get(p.name, Any)
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def return_hint(fn: Callable[..., Any]) -> Any:
    """The return type hint of ``fn``, ``Any`` where missing."""
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:
        return Any


_ARITY: dict[bool, weakref.WeakKeyDictionary[Any, tuple[int, int | None]]] = {
    False: weakref.WeakKeyDictionary(), True: weakref.WeakKeyDictionary()}
"""Per function (weakly: a closure registered at run time goes with its run), bound or
not: its positional arity."""


def positional_arity(fn: Callable[..., Any]) -> tuple[int, int | None]:
    """How many positional arguments ``fn`` takes: (at least, at most or None for
    ``*args``), not counting a bound method's ``self``. Cached per function."""
    func = getattr(fn, "__func__", fn)
    bound = func is not fn
    cache = _ARITY[bound]
    try:
        known = cache.get(func)
    except TypeError:  # not weakly referenceable (a builtin): not cached
        cache, known = None, None  # type: ignore[assignment]
    if known is not None:
        return known
    params = list(inspect.signature(func).parameters.values())
    if bound and params:
        params = params[1:]
    least = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty)
    most: int | None = sum(1 for p in params
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        most = None
    if cache is not None:
        cache[func] = (least, most)
    return least, most


def arity_problem(fn: Callable[..., Any], count: int) -> str | None:
    """Why ``count`` positional arguments do not fit ``fn`` (None when they do)."""
    least, most = positional_arity(fn)
    if count < least:
        return f"takes at least {least} argument(s), got {count}"
    if most is not None and count > most:
        return f"takes at most {most} argument(s), got {count}"
    return None
