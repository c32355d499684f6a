"""libseccomp (Debian libseccomp2) through ctypes: the calls wasmctr's two filters need, nothing more.

The library is opened by its soname, as the dynamic loader finds any library. Finding it through
ctypes.util instead, as pyseccomp did, imported shutil, subprocess and tempfile and ran `ldconfig -p`
twice: ~25 ms on every container `wasmctr-runtime create` makes.
"""

from __future__ import annotations

import ctypes
import errno
import os

# actions (seccomp.h's SCMP_ACT_*)
KILL_THREAD = 0x00000000
KILL_PROCESS = 0x80000000
TRAP = 0x00030000
LOG = 0x7FFC0000
ALLOW = 0x7FFF0000

# argument comparisons (enum scmp_compare)
COMPARISONS = {"NE": 1, "LT": 2, "LE": 3, "EQ": 4, "GE": 5, "GT": 6, "MASKED_EQ": 7}

UNKNOWN_SYSCALL = -1  # __NR_SCMP_ERROR: seccomp_syscall_resolve_name knows no such name


def errno_action(value: int) -> int:
    """SCMP_ACT_ERRNO(value): the call fails with that errno."""
    return 0x00050000 | (value & 0xFFFF)


def trace_action(value: int) -> int:
    """SCMP_ACT_TRACE(value): a ptrace tracer is told, with that value."""
    return 0x7FF00000 | (value & 0xFFFF)


class ArgCompare(ctypes.Structure):
    """struct scmp_arg_cmp: argument `arg` (0-5) compared by `op` with datum_a; for MASKED_EQ, datum_a is
    the mask and datum_b what the masked argument must equal."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_lib = ctypes.CDLL("libseccomp.so.2")
_lib.seccomp_init.argtypes = (ctypes.c_uint32,)
_lib.seccomp_init.restype = ctypes.c_void_p
_lib.seccomp_release.argtypes = (ctypes.c_void_p,)
_lib.seccomp_release.restype = None
_lib.seccomp_load.argtypes = (ctypes.c_void_p,)
_lib.seccomp_load.restype = ctypes.c_int
_lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
_lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
_lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
_lib.seccomp_arch_add.restype = ctypes.c_int
_lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
_lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
_lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                        ctypes.POINTER(ArgCompare))
_lib.seccomp_rule_add_array.restype = ctypes.c_int


class Filter:
    """A filter being built (a libseccomp context): rules added here, then loaded into this process."""

    def __init__(self, default_action: int) -> None:
        self._context = _lib.seccomp_init(default_action)
        if not self._context:
            raise ValueError(f"libseccomp refuses the default action {default_action:#x}")

    def __del__(self) -> None:
        if getattr(self, "_context", None):
            _lib.seccomp_release(self._context)

    def add_arch(self, name: str) -> bool:
        """Also filter calls made in the architecture `name` (`X86_64`, `aarch64`...); False if
        libseccomp knows no such architecture. One already there (the native one) is no error."""
        token = _lib.seccomp_arch_resolve_name(name.lower().encode())
        if not token:
            return False
        result = _lib.seccomp_arch_add(self._context, token)
        if result != -errno.EEXIST:
            _check(result)
        return True

    def add_rule(self, action: int, syscall: str, *conditions: tuple[int, str, int, int]) -> None:
        """`action` for `syscall` when every (argument, comparison, value, second value) holds. ValueError
        for a name libseccomp does not know, OSError for a rule it refuses."""
        number = _lib.seccomp_syscall_resolve_name(syscall.encode())
        if number == UNKNOWN_SYSCALL:
            raise ValueError(f"unknown system call {syscall!r}")
        compares = (ArgCompare * len(conditions))(*(ArgCompare(arg, COMPARISONS[op], a, b)
                                                     for arg, op, a, b in conditions))
        _check(_lib.seccomp_rule_add_array(self._context, action, number, len(conditions), compares))

    def load(self) -> None:
        """Install the filter in this process (no_new_privs or CAP_SYS_ADMIN needed)."""
        _check(_lib.seccomp_load(self._context))


def _check(result: int) -> None:
    if result < 0:
        raise OSError(-result, os.strerror(-result))
