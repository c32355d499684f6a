"""Type checks for JSON documents that come from outside (manifests, configs, runtime bundles).

`json.loads` gives whatever the sender wrote; code that then calls `.get` on a number fails with an
AttributeError far from the cause. These read one field and check its type, so a wrong shape is one
line naming the document and the field. Errors are `StoreError` unless the caller names another
`WasmctrError` (a runtime bundle's are `ExecutorError`). As the rest of the image model, it imports no part
above it (pyproject.toml's `parts` import contract).
"""

from __future__ import annotations

import json
from typing import Any

from wasmctr.errors import StoreError, WasmctrError


def field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, required: bool = False,
          error: type[WasmctrError] = StoreError) -> Any:
    """`data[key]` if it has the expected type (None when absent or null and not required)."""
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise error(f"{what}: field {key!r} must be a {expected}, not {shown(value)}")
    return value


def strings(data: dict[str, Any], key: str, what: str, error: type[WasmctrError] = StoreError) -> list[str]:
    items = field(data, key, list, what, error=error) or []
    if not all(isinstance(item, str) for item in items):
        raise error(f"{what}: field {key!r} must be a list of strings")
    return items


def string_map(data: dict[str, Any], key: str, what: str, error: type[WasmctrError] = StoreError) -> dict[str, str]:
    mapping = field(data, key, dict, what, error=error) or {}
    if not all(isinstance(v, str) for v in mapping.values()):
        raise error(f"{what}: field {key!r} must map strings to strings")
    return dict(mapping)


def shown(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:40]}" if value is not None else "null"
