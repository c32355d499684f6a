"""Where the shims keep their state on a node, and what a running template must match.

Imported by every run of the shim binary, so it uses os, sys and zlib only (hashlib alone costs ~10 ms).
"""

from __future__ import annotations

import os
import sys
import zlib

SOCKET_DIR = os.environ.get("WASMCTR_SHIM_SOCKET_DIR", "/run/wasmctr-shim")
RUNC_ROOT = os.path.join(SOCKET_DIR, "runc")  # runc's state for the native containers, one dir per namespace


def private_socket_dir() -> int:
    """SOCKET_DIR, made if missing, as a descriptor: a directory of this user's, mode 0700, so only root and
    the uid containerd runs as (the shim's) reach the sockets in it. An existing one is made 0700 (0711
    before); OSError where it is a symlink (O_NOFOLLOW) or another user's."""
    os.makedirs(SOCKET_DIR, mode=0o700, exist_ok=True)
    fd = os.open(SOCKET_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if status.st_uid != os.geteuid():
            raise OSError(f"{SOCKET_DIR}: owned by uid {status.st_uid}, not by the shim's ({os.geteuid()})")
        if status.st_mode & 0o7777 != 0o700:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def template_path(address: str) -> str:
    """The template's socket: one template per containerd (its address), under the shims' socket dir.
    Two checksums make a 64-bit name: only root names containerd sockets, so collisions are accidents."""
    data = address.encode()
    return os.path.join(SOCKET_DIR, f"template-{zlib.crc32(data):08x}{zlib.adler32(data):08x}.sock")


def code_stamp() -> str:
    """What a template's code must match: the interpreter and the name and mtime of every source file of
    wasmctr and the shim (an upgrade or an edit makes a running template stale: it exits, and the next
    run of the binary starts a current one)."""
    here = os.path.dirname(os.path.abspath(__file__))
    parts = [os.path.realpath(sys.executable)]  # venv/bin/python or python3: one interpreter
    for directory in (here, os.path.join(os.path.dirname(here), "wasmctr")):
        with os.scandir(directory) as entries:
            parts += sorted(f"{e.name}:{e.stat().st_mtime_ns}" for e in entries if e.name.endswith(".py"))
    return "|".join(parts)
