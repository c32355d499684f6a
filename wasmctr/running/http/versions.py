"""Which 0.2.x version of each WASI interface the host defines: the one the guest imports, up to the host's own.

The host implements every interface at WASI 0.2.9, which serves any 0.2.x guest (later patch releases only
add). It defines each interface under the very name the guest imports (`wasi:io/poll@0.2.0`), not at 0.2.9
for wasmtime's semver matching to find: `define_unknown_imports_as_traps` does not match by semver, so it
shadowed the host's 0.2.9 definitions of a 0.2.0 guest with traps and types of its own (every call of a
guest built against a WIT older than 0.2.9 trapped with "mismatched resource types"). A guest importing a
version newer than the host's is refused before it is served, not at its first request. Imports nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

HOST = (0, 2, 9)


def _version(text: str) -> tuple[int, int, int] | None:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None  # none, or a pre-release (0.2.0-rc-…): not one this host serves, left to the linker
    return int(parts[0]), int(parts[1]), int(parts[2])


class Versions:
    """The names to define each host interface under, for a guest with these import (and export) names;
    ValueError, in one line, for a 0.2.x name newer than the host's."""

    def __init__(self, names: Iterable[str]) -> None:
        self._imported: dict[str, tuple[int, int, int]] = {}
        for name in names:
            interface, _, text = name.partition("@")
            version = _version(text)
            if version is None or version[:2] != HOST[:2]:
                continue
            if version > HOST:
                raise ValueError(f"the component uses {name}, newer than this host's wasi "
                                 f"{'.'.join(map(str, HOST))}")
            self._imported[interface] = max(version, self._imported.get(interface, version))

    def name(self, interface: str) -> str:
        """`interface@version`: the version the guest imports (its highest, if it imports several), else the
        host's."""
        return f"{interface}@{'.'.join(map(str, self._imported.get(interface, HOST)))}"
