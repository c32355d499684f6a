"""Which WASI imports ("syscalls") a guest may use.

A module's imports are its whole syscall surface: wasip1 has 45 functions in
`wasi_snapshot_preview1`, a component imports whole `wasi:*` interfaces. Before instantiation the
executor checks every import against a policy: by default everything WASI except a component's
sockets (`wasi:sockets/*`, allowed only when network is granted: a component can create sockets). A
module's `sock_*` calls can only use sockets it was handed, and it is handed none, so they run and
fail with WASI errors, as under wasmtime's own CLI. `deny_wasi`/`allow_wasi` adjust the policy by
function name (`path_open`), qualified name (`wasi_snapshot_preview1.path_open`), interface
(`wasi:sockets/tcp`) or prefix with `*` (`sock_*`, `wasi:sockets/*`). Imports no WASI host provides
(`env.foo`) are always refused.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

from wasmctr.errors import UsageError, parameter
from wasmctr.record import field, record

WASIP1_MODULES = frozenset({"wasi_snapshot_preview1", "wasi_unstable"})
SOCKET_PATTERNS = ("wasi:sockets/*",)
WASIP1_FUNCTIONS = frozenset({
    "args_get", "args_sizes_get", "environ_get", "environ_sizes_get", "clock_res_get", "clock_time_get",
    "fd_advise", "fd_allocate", "fd_close", "fd_datasync", "fd_fdstat_get", "fd_fdstat_set_flags",
    "fd_fdstat_set_rights", "fd_filestat_get", "fd_filestat_set_size", "fd_filestat_set_times", "fd_pread",
    "fd_prestat_get", "fd_prestat_dir_name", "fd_pwrite", "fd_read", "fd_readdir", "fd_renumber", "fd_seek",
    "fd_sync", "fd_tell", "fd_write", "path_create_directory", "path_filestat_get", "path_filestat_set_times",
    "path_link", "path_open", "path_readlink", "path_remove_directory", "path_rename", "path_symlink",
    "path_unlink_file", "poll_oneoff", "proc_exit", "proc_raise", "sched_yield", "random_get", "sock_accept",
    "sock_recv", "sock_send", "sock_shutdown"})
"""Every function of `wasi_snapshot_preview1` (WASI's witx): what a name in `deny_wasi` may be."""
INTERFACE = re.compile(r"wasi:(\*|[a-z][a-z0-9-]*/(\*|[a-z][a-z0-9-]*)(@[0-9][0-9A-Za-z.+-]*)?)")
Mode = Literal["refuse", "trap"]


@record(frozen=True)
class Policy:
    network: bool = False
    deny: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    mode: Mode = "refuse"

    @classmethod
    def from_flags(cls, network: bool, deny: list[str] | None, allow: list[str] | None, mode: str) -> Policy:
        if mode not in ("refuse", "trap"):
            raise UsageError(f"{parameter('syscall_policy')} {mode!r}: expected refuse or trap")
        denied, allowed = _split(deny), _split(allow)
        for name, patterns in (("deny_wasi", denied), ("allow_wasi", allowed)):
            for pattern in patterns:
                _check_pattern(name, pattern)
        return cls(network, denied, allowed, mode)  # type: ignore[arg-type]

    def denied(self, module: str, name: str) -> str | None:
        """Why an import is not allowed, or None if it is."""
        qualified = f"{module}.{name}" if name else module
        if module not in WASIP1_MODULES and not module.startswith("wasi:"):
            return "not a WASI import"
        if _matches(self.allow, module, name, qualified):
            return None
        if _matches(self.deny, module, name, qualified):
            return f"denied by {parameter('deny_wasi')}"
        if not self.network and _matches(SOCKET_PATTERNS, module, name, qualified):
            return f"sockets need {parameter('network=True')}"
        return None


@record
class Verdict:
    """The imports of one guest, sorted into allowed and denied (with reasons)."""

    allowed: list[str] = field(default_factory=list)
    denied: dict[str, str] = field(default_factory=dict)


def check(policy: Policy, imports: list[tuple[str, str]]) -> Verdict:
    verdict = Verdict()
    for module, name in imports:
        qualified = f"{module}.{name}" if name else module
        reason = policy.denied(module, name)
        if reason:
            verdict.denied[qualified] = reason
        else:
            verdict.allowed.append(qualified)
    return verdict


def _check_pattern(setting: str, pattern: str) -> None:
    """A pattern must name something WASI has: a typo must not silently deny (or allow) nothing."""
    module, dot, name = pattern.rpartition(".")
    if pattern.startswith("wasi:"):
        ok = INTERFACE.fullmatch(pattern) is not None
    elif dot:
        ok = module in WASIP1_MODULES and any(fnmatch.fnmatchcase(f, name) for f in WASIP1_FUNCTIONS)
    else:
        ok = any(fnmatch.fnmatchcase(f, pattern) for f in WASIP1_FUNCTIONS)
    if not ok:
        raise UsageError(f"{parameter(setting)} {pattern!r}: names no WASI call or interface (e.g. path_open, sock_*, "
                         "wasi_snapshot_preview1.fd_write, wasi:sockets/tcp, wasi:sockets/*)")


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


def _matches(patterns: tuple[str, ...], module: str, name: str, qualified: str) -> bool:
    for pattern in patterns:
        base = module.split("@", 1)[0]
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in (name, qualified, module, base) if candidate):
            return True
    return False
