"""JSON reading for wasmctr-runtime's per-container verbs, without importing `json`.

Every `start`, `state`, `kill` and `delete` a caller runs is a new interpreter, and `import json`
costs ~14 ms of each: json.decoder imports `re` (and `re`, `enum`) only to skip whitespace. The parsing
here is json's own C scanner (`_json.make_scanner`, what `json.loads` uses), so values are the ones
`json.loads` gives; malformed text raises ValueError, as it does.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

WHITESPACE = " \t\n\r"  # JSON's four (RFC 8259 section 2)


class _Options:
    """The decoder settings `_json.make_scanner` reads: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


_scan = _json.make_scanner(_Options())  # type: ignore[arg-type]  # typeshed wants a decoder; it reads these


def loads(text: str) -> Any:
    """The value of one JSON text (surrounding whitespace allowed)."""
    body = text.strip(WHITESPACE)
    try:
        value, end = _scan(body, 0)
    except StopIteration:
        raise ValueError("Expecting value") from None
    if end != len(body):
        raise ValueError(f"Extra data after character {end}")
    return value


def read(path: str) -> Any:
    """The JSON value in a UTF-8 file; OSError if it cannot be read, ValueError if it is not JSON."""
    with open(path, encoding="utf-8") as f:
        return loads(f.read())
