"""Memo and search attributes: checked where they enter (client, workflow code).

Both are stored on the run row and carried into every later run of the chain, so both
are held to the payload cap of the converter that encodes them. Search attribute
values are also indexed (PostgreSQL's jsonb, SQLite's JSON functions): strings follow
the id rule (``_identifiers``: no NUL, valid UTF-8, at most 1,000 bytes), integers fit
64 bits and floats are finite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from perdure._arguments import MAX_WHOLE_NUMBER
from perdure._errors import InvalidArgumentError, PayloadTooLargeError
from perdure._identifiers import name_problem, shown
from perdure._recorded import replaying_recorded

if TYPE_CHECKING:
    from perdure._converter import PayloadConverter

__all__ = ["check_memo", "check_search_attributes"]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


def _value_problem(value: Any) -> str | None:
    """Why a scalar cannot be a search attribute value, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -MAX_WHOLE_NUMBER - 1 <= value <= MAX_WHOLE_NUMBER else (
            "is an integer outside 64 bits")
    if isinstance(value, float):
        return None if math.isfinite(value) else "is not a finite number"
    if isinstance(value, str):
        return name_problem(value)
    return f"has a {type(value).__name__} value"


def check_search_attributes(
    attributes: Mapping[str, Any] | None, *, removals: bool = False,
    max_bytes: int | None = None,
) -> dict[str, Any] | None:
    """Search attributes as stored: names like identifiers, values str, int, float, bool
    or a list of str (Temporal's keyword list; ``None`` removes a key when upserting),
    at most ``max_bytes`` encoded."""
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise InvalidArgumentError(
            f"search attributes must be a dict of name to value, not {type(attributes).__name__}"
        )
    if replaying_recorded():  # history holds them already (under older, looser rules)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}
    checked: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidArgumentError(
                f"search attribute name {shown(key)} is not allowed: use letters, digits, "
                "'_', '.' or '-', starting with a letter or '_' (at most 128 characters)"
            )
        if value is None and removals:
            checked[key] = None
            continue
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            for item in value:
                problem = name_problem(item)
                if problem is not None:
                    raise InvalidArgumentError(
                        f"search attribute {key!r} holds {shown(item)}, which {problem}; "
                        "keep anything longer in the memo")
            checked[key] = list(value)  # a keyword list: a filter on one value matches it
            continue
        problem = _value_problem(value)
        if problem is not None:
            raise InvalidArgumentError(
                f"search attribute {key!r} = {shown(value)} {problem}; values must be str, "
                "int, float, bool or a list of str (a keyword list): strings of at most "
                "1,000 bytes without NUL, 64-bit ints, finite floats"
                + (" (None removes it)" if removals else "")
                + "; keep anything richer in the memo"
            )
        checked[key] = value
    if max_bytes is not None:
        size = len(msgspec.json.encode(checked))
        if size > max_bytes:
            raise PayloadTooLargeError(
                f"search attributes are {size} bytes encoded, over the limit of {max_bytes} "
                "bytes; keep fewer or shorter values")
    return checked


def check_memo(memo: Mapping[str, Any] | None, *,
               converter: PayloadConverter | None = None) -> dict[str, Any] | None:
    """A memo as stored: a dict of JSON values (shown, never searched), encoded by
    ``converter`` (its payload cap, and no NaN or infinity)."""
    if memo is None:
        return None
    if not isinstance(memo, Mapping) or not all(isinstance(k, str) for k in memo):
        raise InvalidArgumentError("a memo must be a dict with string keys")
    if converter is None:
        from perdure._converter import PayloadConverter

        converter = PayloadConverter()
    data = converter.encode(dict(memo), what="the memo")
    return msgspec.json.decode(data)  # type: ignore[no-any-return]
