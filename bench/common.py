"""What the benchmarks share: timing a command with its own rusage, and synthesising wasm modules."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def data_module(path: Path, size: int, block: Callable[[], bytes]) -> None:
    """A valid module with one memory big enough for one active data segment of `size` bytes, filled by
    1 MiB blocks from `block`."""
    memory = b"\x01\x00" + uleb(size // 65536 + 1)
    segment = b"\x01\x00\x41\x00\x0b" + uleb(size)
    with open(path, "wb") as f:
        f.write(b"\0asm\x01\x00\x00\x00\x05" + uleb(len(memory)) + memory)
        f.write(b"\x0b" + uleb(len(segment) + size) + segment)
        for _ in range(size >> 20):
            f.write(block())


def half_random_block(seed: int = 0) -> Callable[[], bytes]:
    """Blocks of half random, half zero bytes: gzip has real work, as with real data sections."""
    rng = random.Random(seed)
    return lambda: rng.randbytes(1 << 19) + bytes(1 << 19)


def random_block() -> bytes:
    return os.urandom(1 << 20)


def timed(argv: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, from its own rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(argv)}")
    return time.perf_counter() - start, usage.ru_maxrss
