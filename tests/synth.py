"""Synthetic wasm modules for tests and benchmarks: valid, and as large as asked, without a compiler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wasmctr.image.leb128 import encode_unsigned as uleb


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


def big_code_module(path: Path, functions: int = 800, body_ops: int = 400, sleep_seconds: int | None = None) -> None:
    """A WASI command whose code section is several MiB of arithmetic, to make compilation real work.
    With `sleep_seconds`, `_start` runs every function once (its code is then in memory, as a real
    program's is) and sleeps that long in `poll_oneoff`: an idle container that holds its code."""
    body = bytearray(b"\x01\x01\x7f")  # local 0 is the parameter (nothing folds to a constant), local 1 an i32
    for i in range(body_ops):  # local0 = local0 * k + local1 ...
        body += b"\x20\x00\x41" + uleb(i % 60 + 3) + b"\x6c\x20\x01\x6a\x21\x00"
        body += b"\x20\x00\x41\x05\x76\x20\x01\x73\x21\x01"
    body += b"\x20\x00\x0b"
    func = uleb(len(body)) + bytes(body)
    sleeps = sleep_seconds is not None
    first = 1 if sleeps else 0  # function index 0 is poll_oneoff where it is imported
    types = b"\x03" + b"\x60\x01\x7f\x01\x7f" + b"\x60\x00\x00" + b"\x60\x04\x7f\x7f\x7f\x7f\x01\x7f"
    funcs = uleb(functions + 1) + b"\x00" * functions + b"\x01"
    start = uleb(first + functions)
    sections = [(1, types)]
    if sleeps:
        name = b"wasi_snapshot_preview1"
        sections.append((2, b"\x01" + uleb(len(name)) + name + uleb(11) + b"poll_oneoff" + b"\x00\x02"))
    sections.append((3, funcs))
    if sleeps:
        sections.append((5, b"\x01\x00\x01"))  # one memory of one page, for the subscription
        exports = b"\x02" + uleb(6) + b"_start\x00" + start + uleb(6) + b"memory\x02\x00"
        # call every function once, then poll_oneoff(subscription at 0, event at 64, 1, count at 128)
        calls = b"".join(b"\x41" + bytes([i % 60]) + b"\x10" + uleb(first + i) + b"\x1a" for i in range(functions))
        start_body = b"\x00" + calls + b"\x41\x00\x41\xc0\x00\x41\x01\x41\x80\x01\x10\x00\x1a\x0b"
    else:
        exports = b"\x01" + uleb(6) + b"_start\x00" + start
        start_body = b"\x00\x0b"
    sections.append((7, exports))
    sections.append((10, uleb(functions + 1) + func * functions + uleb(len(start_body)) + start_body))
    if sleeps:
        assert sleep_seconds is not None
        # a relative CLOCK_MONOTONIC subscription: userdata, tag 0 (clock), id 1, timeout in ns, precision, flags
        subscription = (bytes(8) + b"\x00" + bytes(7) + (1).to_bytes(4, "little") + bytes(4)
                        + (sleep_seconds * 1_000_000_000).to_bytes(8, "little") + bytes(8) + bytes(8))
        sections.append((11, b"\x01\x00\x41\x00\x0b" + uleb(len(subscription)) + subscription))
    with open(path, "wb") as f:
        f.write(b"\0asm\x01\x00\x00\x00")
        for sid, content in sections:
            f.write(bytes([sid]) + uleb(len(content)) + content)
