"""Sizes and durations as `wasmctr run` flags and the runtimes' annotations write them (`64m`, `10s`),
and a size as a message says it (`64 MiB`).

Its own module, and importing `re` and the errors only: wasmctr-runtime's `create` reads a container's
timeout here without importing the store and image code that `launch` needs.
"""

from __future__ import annotations

import re

from wasmctr.errors import UsageError

SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")

MIN_MEMORY = 6 << 20  # Docker refuses less: "Minimum memory limit allowed is 6MB"


def parse_size(text: str) -> int:
    """`64m`, `1g`, `512k`, `1048576` → bytes (binary units, as Docker's --memory)."""
    m = SIZE.match(text.strip())
    if not m:
        raise UsageError(f"invalid size {text!r}: expected a number with an optional unit k, m or g (e.g. 64m)")
    unit = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    whole, _, fraction = m.group(1).partition(".")  # in integers: a float rounds 2^63-1 up to 2^63
    return int(whole) * unit + int(fraction or "0") * unit // 10 ** len(fraction)


def parse_duration(text: str) -> float:
    """`10s`, `500ms`, `2m`, `1h`, `30` (seconds) → seconds."""
    m = DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"invalid duration {text!r}: expected e.g. 10s, 500ms, 2m")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def mib(n: int) -> str:
    """Bytes as a message says them: `64 MiB`, `0.5 MiB`."""
    return f"{n / (1 << 20):g} MiB"
