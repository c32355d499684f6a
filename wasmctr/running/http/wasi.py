"""The rest of the proxy world's imports, in Python beside wasi:io (they share its stream and pollable types):
wasi:cli's stdio, environment, exit and terminals, wasi:clocks, wasi:random, and wasi:filesystem's preopens.

A proxy guest gets what `wasmtime serve` gives it: stdout and stderr passed on to the host's, an empty
stdin, no arguments, no environment but what it was given, no files (no preopens), no terminal. What a
toolchain links but the world does not grant (wasi:filesystem's descriptors, wasi:sockets) is left to the
linker's traps: with no preopen and no network there is no handle to call them on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .abi import HostTrap
from .io import Console, InputStream, Pollable
from .table import Table

WALL_RESOLUTION = {"seconds": 0, "nanoseconds": 1000}


class GuestExit(HostTrap):
    """The guest called wasi:cli/exit: its request ends there."""


def define(fns: Any, root: Any, table: Table, add_resource: Any, at: Callable[[str], str],
           env: list[tuple[str, str]]) -> None:
    stdout, stderr = Console(1), Console(2)
    with root.add_instance(at("wasi:cli/stdin")) as i:
        fns.add(i, "get-stdin", lambda: table.add(InputStream()))
    with root.add_instance(at("wasi:cli/stdout")) as i:
        fns.add(i, "get-stdout", lambda: table.add(stdout))
    with root.add_instance(at("wasi:cli/stderr")) as i:
        fns.add(i, "get-stderr", lambda: table.add(stderr))
    with root.add_instance(at("wasi:cli/environment")) as i:
        fns.add(i, "get-environment", lambda: list(env))
        fns.add(i, "get-arguments", lambda: [])
        fns.add(i, "initial-cwd", lambda: None)
    with root.add_instance(at("wasi:cli/exit")) as i:
        fns.add(i, "exit", _exit)
    for name, resource in (("terminal-input", "terminal-input"), ("terminal-output", "terminal-output")):
        with root.add_instance(at(f"wasi:cli/{name}")) as i:
            add_resource(i, resource)
    for name, getter in (("stdin", "get-terminal-stdin"), ("stdout", "get-terminal-stdout"),
                         ("stderr", "get-terminal-stderr")):
        with root.add_instance(at(f"wasi:cli/terminal-{name}")) as i:
            fns.add(i, getter, lambda: None)
    with root.add_instance(at("wasi:clocks/monotonic-clock")) as i:
        fns.add(i, "now", time.monotonic_ns)
        fns.add(i, "resolution", lambda: 1)
        fns.add(i, "subscribe-instant", lambda at: table.add(Pollable(at=at / 1e9)))
        fns.add(i, "subscribe-duration", lambda ns: table.add(Pollable(at=time.monotonic() + ns / 1e9)))
    with root.add_instance(at("wasi:clocks/wall-clock")) as i:
        fns.add(i, "now", _wall_now)
        fns.add(i, "resolution", lambda: dict(WALL_RESOLUTION))
    with root.add_instance(at("wasi:random/random")) as i:
        fns.add(i, "get-random-bytes", lambda n: os.urandom(_bounded(n)))
        fns.add(i, "get-random-u64", lambda: int.from_bytes(os.urandom(8), "little"))
    with root.add_instance(at("wasi:random/insecure")) as i:
        fns.add(i, "get-insecure-random-bytes", lambda n: os.urandom(_bounded(n)))
        fns.add(i, "get-insecure-random-u64", lambda: int.from_bytes(os.urandom(8), "little"))
    with root.add_instance(at("wasi:random/insecure-seed")) as i:
        fns.add(i, "insecure-seed", lambda: (int.from_bytes(os.urandom(8), "little"),
                                             int.from_bytes(os.urandom(8), "little")))
    with root.add_instance(at("wasi:filesystem/preopens")) as i:
        fns.add(i, "get-directories", lambda: [])


def _wall_now() -> dict[str, int]:
    ns = time.time_ns()
    return {"seconds": ns // 1_000_000_000, "nanoseconds": ns % 1_000_000_000}


def _bounded(n: int) -> int:
    if n > 1 << 20:
        raise HostTrap(f"{n} random bytes asked for at once (at most 1 MiB)")
    return n


def _exit(status: tuple[str, Any]) -> None:
    raise GuestExit(f"the guest exited ({status[0]})")
