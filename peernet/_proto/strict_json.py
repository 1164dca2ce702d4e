"""JSON read strictly: a duplicate key or a ``NaN``/``Infinity`` literal (which RFC 8259
does not allow, and Python's ``json`` accepts) is an error, not a silent last-wins or a
float. For the files and requests peernet reads (``trust.json``, control requests)."""

from __future__ import annotations

import json
from typing import Any, NoReturn

__all__ = ["loads"]


def loads(text: str) -> Any:
    """``json.loads(text)``, strictly; ValueError (a ``JSONDecodeError`` for bad syntax)
    for anything else, RecursionError for nesting too deep for the parser."""
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r:.40}")
        result[key] = value
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")
