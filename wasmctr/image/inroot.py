"""Paths inside a root directory, resolved as a process chrooted there would see them.

Every path that comes from an image (a layer member, a link target, an entrypoint, a working directory)
is hostile. It is resolved here one component at a time relative to a directory fd, following
symlinks *as if the root were `/`*: `..` stops at the root, an absolute link target starts again at
the root, and nothing is ever looked up on the host. No string check, `realpath` or tarfile filter is
involved, so a chain of links, a long expansion or a link swapped in between two checks cannot lead out.

Two implementations with one behaviour: `openat2(2)` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`
(Linux 5.6+), and, where the kernel lacks it or a seccomp filter refuses it, a walk that opens each
component with `O_NOFOLLOW` and expands links itself. Imports nothing of wasmctr (pyproject.toml's
`standalone` import contract).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
SYS_OPENAT2 = 437  # the same number on every architecture that has it (x86_64, aarch64, ...)
MAX_SYMLINKS = 40  # Linux's own limit (MAXSYMLINKS) before ELOOP
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY

_openat2_works: bool | None = None  # unknown until first tried


def open_in_root(root_fd: int, path: str, flags: int = DIRECTORY, *, follow: bool = True) -> int:
    """An fd for `path` as seen from inside `root_fd`; `follow=False` does not follow a final symlink.

    Raises OSError as open(2) would (ENOENT, ENOTDIR, ELOOP...). The caller closes the fd."""
    global _openat2_works
    flags |= os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    path = path or "."
    if _openat2_works is not False:
        try:
            fd = _openat2(root_fd, path, flags)
            _openat2_works = True
            return fd
        except _Unavailable:
            _openat2_works = False
    return _walk(root_fd, path, flags)


def resolve(root: Path, path: str) -> Path:
    """The host path of `path` inside `root`, every symlink expanded within the root (it must exist)."""
    root_fd = os.open(root, DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, path, os.O_PATH)
    finally:
        os.close(root_fd)
    try:
        return Path(fd_path(fd))
    finally:
        os.close(fd)


def fd_path(fd: int) -> str:
    """Where an open file is, in the kernel's words (through /proc/self/fd)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def is_file(root: Path, path: str) -> Path | None:
    """The host path of `path` inside `root` if it is a regular file there, else None."""
    try:
        found = resolve(root, path)
        return found if stat.S_ISREG(os.stat(found, follow_symlinks=False).st_mode) else None
    except (OSError, ValueError):
        return None


_ctypes_made: tuple[Any, Any] | None = None


def _openat2_types() -> tuple[Any, Any]:
    """libc and openat2's `struct open_how`, made once: a ctypes library or structure made per call is a
    class each time, garbage only a full collection frees (a shim resolves paths for every container)."""
    global _ctypes_made
    if _ctypes_made is None:
        import ctypes

        class OpenHow(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        _ctypes_made = ctypes.CDLL(None, use_errno=True), OpenHow
    return _ctypes_made


class _Unavailable(Exception):
    """openat2 is not there (old kernel) or not allowed (a seccomp filter)."""


def _openat2(root_fd: int, path: str, flags: int) -> int:
    import ctypes

    libc, open_how = _openat2_types()
    how = open_how(flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    encoded = os.fsencode(path)
    if b"\0" in encoded:
        raise ValueError("embedded null byte")
    for _ in range(16):  # EAGAIN: a concurrent rename somewhere under the root; the kernel asks us to retry
        fd = libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(root_fd), ctypes.c_char_p(encoded),
                          ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and _openat2_works is None:
            raise _Unavailable()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _walk(root_fd: int, path: str, flags: int) -> int:
    """Resolve component by component with O_NOFOLLOW, expanding symlinks within the root."""
    follow_final = not flags & os.O_NOFOLLOW
    pending = [c for c in reversed(path.split("/")) if c]  # a stack: next component last
    resolved: list[str] = []  # the real (link-free) directories from the root to `current`
    current = os.open(".", DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                if resolved:
                    resolved.pop()
                    os.close(current)
                    current = _reopen(root_fd, resolved)
                continue
            last = not pending
            st = os.stat(name, dir_fd=current, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and (follow_final or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(name, dir_fd=current)
                if target.startswith("/"):
                    resolved = []
                    os.close(current)
                    current = _reopen(root_fd, resolved)
                pending.extend(c for c in reversed(target.split("/")) if c)
                continue
            if last:
                return os.open(name, flags | os.O_NOFOLLOW, dir_fd=current)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            child = os.open(name, DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = child
            resolved.append(name)
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=current)
    finally:
        os.close(current)


def _reopen(root_fd: int, components: list[str]) -> int:
    fd = os.open(".", DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    for name in components:
        child = os.open(name, DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd
