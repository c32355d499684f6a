"""The container process gives up what its OCI spec does not grant, before it touches a guest file.

WASI is the first wall; this is the host's: a container process runs as the spec's `process.user`
(uid, gid, additional gids), keeps only the capabilities `process.capabilities` lists (each set;
none where the spec lists none), and sets no_new_privs, as runc does for a Linux container. The
order is runc's: the bounding set is cut while CAP_SETPCAP is still held, the ids change with
PR_SET_KEEPCAPS so that a non-root user can keep capabilities it was granted, then the effective,
permitted and inheritable sets are set and the ambient set is raised.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from wasmctr.errors import WasmctrError

_LIBC = ctypes.CDLL(None, use_errno=True)  # once: each CDLL makes a class of its own, garbage for the collector
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE")  # linux/capability.h, in number order
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capability_numbers(names: list[str]) -> set[int]:
    """CAP_* names (as an OCI spec lists them) to numbers; an unknown name is an error, as in runc."""
    numbers = set()
    for name in names:
        short = name.upper().removeprefix("CAP_")
        if short not in CAPABILITIES:
            raise WasmctrError(f"process.capabilities: unknown capability {name!r}")
        numbers.add(CAPABILITIES.index(short))
    return numbers


def capability_sets(process: dict[str, Any]) -> dict[str, set[int]]:
    """Each of the spec's capability sets as numbers; WasmctrError for an unknown name (Create checks
    this before it forks, so a bad spec fails Create, not the container process)."""
    caps = process.get("capabilities") or {}
    return {name: capability_numbers(list(caps.get(name) or []))
            for name in ("bounding", "effective", "permitted", "inheritable", "ambient")}


def drop(process: dict[str, Any]) -> None:
    """Become the spec's user with only the spec's capabilities, and set no_new_privs. Raises OSError
    (or WasmctrError for a bad name) and leaves the process unusable: the caller exits."""
    libc = _LIBC

    def prctl(option: int, arg: int, arg3: int = 0) -> int:
        result = libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0))
        if result < 0:
            raise OSError(ctypes.get_errno(), f"prctl({option})")
        return int(result)

    sets = capability_sets(process)
    for number in range(len(CAPABILITIES)):
        if number not in sets["bounding"] and _supported(libc, number):
            prctl(PR_CAPBSET_DROP, number)
    user = process.get("user") or {}
    uid, gid = int(user.get("uid") or 0), int(user.get("gid") or 0)
    prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([int(g) for g in user.get("additionalGids") or []])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl(PR_SET_KEEPCAPS, 0)
    header = _Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for name in ("effective", "permitted", "inheritable"):
        for number in sets[name]:
            setattr(data[number // 32], name, getattr(data[number // 32], name) | 1 << (number % 32))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for number in sets["ambient"]:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number)
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def _supported(libc: Any, number: int) -> bool:
    """Whether this kernel knows the capability (an older one refuses to drop a newer number)."""
    return int(libc.prctl(PR_CAPBSET_READ, ctypes.c_ulong(number), 0, 0, 0)) >= 0
