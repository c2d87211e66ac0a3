"""Memo and search attributes: checked where they enter (client, workflow code)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from perdure._errors import InvalidArgumentError

if TYPE_CHECKING:
    from perdure._converter import PayloadConverter

__all__ = ["check_memo", "check_search_attributes"]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


def check_search_attributes(
    attributes: Mapping[str, Any] | None, *, removals: bool = False
) -> dict[str, Any] | None:
    """Search attributes as stored: names like identifiers, values str, int, float, bool
    or a list of str (Temporal's keyword list; ``None`` removes a key when upserting)."""
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise InvalidArgumentError(
            f"search attributes must be a dict of name to value, not {type(attributes).__name__}"
        )
    checked: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidArgumentError(
                f"search attribute name {key!r} is not allowed: use letters, digits, '_', '.' "
                "or '-', starting with a letter or '_' (at most 128 characters)"
            )
        if value is None and removals:
            checked[key] = None
            continue
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            checked[key] = list(value)  # a keyword list: a filter on one value matches it
            continue
        if not isinstance(value, str | int | float | bool) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise InvalidArgumentError(
                f"search attribute {key!r} has a {type(value).__name__} value ({value!r}); "
                "values must be str, int, float, bool or a list of str (a keyword list)"
                + (" (None removes it)" if removals else "")
                + "; keep anything richer in the memo"
            )
        checked[key] = value
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
