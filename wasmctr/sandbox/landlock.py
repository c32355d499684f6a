"""Landlock: a container process can open files only below its rootfs and its granted mounts.

WASI confines a guest to its preopens; Landlock (Linux 5.13+) confines the process itself, so a guest
that got past WASI still could not open a host file outside them. The ruleset is made while the
process can still reach the paths (before it becomes the spec's user) and enforced before the guest
runs: the rootfs and read-only mounts get read access, read-write mounts every access; what the
process already holds (stdio, the loaded code, its pipes) stays usable. Where the kernel has no
Landlock, `abi()` is 0, no ruleset is made and nothing is enforced.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wasmctr.running.executor import RunSpec

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all arches
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
READ = (1 << 0) | (1 << 2) | (1 << 3)  # EXECUTE, READ_FILE, READ_DIR
FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14)  # EXECUTE, WRITE_FILE, READ_FILE, TRUNCATE: a file's
ABI_ACCESS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1}  # ABI 2 adds REFER, 3 TRUNCATE
# ABI 5's IOCTL_DEV is not handled: a guest's stdio may be a terminal


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The kernel's Landlock ABI version; 0 where it has none (or it is disabled)."""
    version = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                              ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(int(version), 0)


def ruleset(readable: list[Path], writable: list[Path], read_write_files: list[Path] | None = None) -> int | None:
    """A ruleset fd allowing reads below `readable` and everything below `writable`, not yet enforced;
    None where the kernel has no Landlock. Made while the process can still open those paths (before it
    becomes the spec's user, who may not be able to reach them)."""
    version = abi()
    if not version:
        return None
    handled = ABI_ACCESS[min(version, 3)]
    libc = _libc()
    attr = _RulesetAttr(handled)
    fd = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                      ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        for paths, access in ((readable, READ), (writable, handled), (read_write_files or [], FILE_RIGHTS)):
            for path in paths:
                _add_rule(libc, fd, path, access, handled)
    except BaseException:
        os.close(fd)
        raise
    return int(fd)


def enforce(ruleset_fd: int | None) -> None:
    """Confine this process to the ruleset from now on (no_new_privs must be set); closes it."""
    if ruleset_fd is None:
        return
    try:
        if _libc().syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset_fd)


def ruleset_for(spec: RunSpec) -> int | None:
    """The ruleset of a guest's grants: its rootfs and read-only mounts to read, the others to write, and
    its device nodes to read and write (their directory to list: nothing can be made or removed there)."""
    devices = sorted(spec.devices.iterdir()) if spec.devices is not None else []
    return ruleset([*([spec.rootfs] if spec.rootfs else []), *(m.host for m in spec.mounts if m.readonly),
                    *([spec.devices] if spec.devices is not None else [])],
                   [m.host for m in spec.mounts if not m.readonly], devices)


def restrict(readable: list[Path], writable: list[Path]) -> bool:
    """`ruleset` and `enforce` at once; False where the kernel has no Landlock."""
    fd = ruleset(readable, writable)
    enforce(fd)
    return fd is not None


def _add_rule(libc: ctypes.CDLL, ruleset_fd: int, path: Path, access: int, handled: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        rule = _PathBeneath(access & handled if is_dir else access & handled & FILE_RIGHTS, fd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)
