"""Synthetic wasm modules for tests and benchmarks: valid, and as large as asked, without a compiler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wasmctr.leb128 import encode_unsigned as uleb


def data_module(path: Path, size: int, block: Callable[[], bytes]) -> Path:
    """A module with one memory big enough for one active data segment of `size` bytes (a multiple of
    1 MiB), filled by 1 MiB blocks from `block`."""
    memory = b"\x01\x00" + uleb(size // 65536 + 1)
    segment = b"\x01\x00\x41\x00\x0b" + uleb(size)
    with open(path, "wb") as f:
        f.write(b"\0asm\x01\x00\x00\x00\x05" + uleb(len(memory)) + memory)
        f.write(b"\x0b" + uleb(len(segment) + size) + segment)
        for _ in range(size >> 20):
            f.write(block())
    return path
