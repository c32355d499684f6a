"""Which WASI imports ("syscalls") a guest may use.

A module's imports are its whole syscall surface: wasip1 has 45 functions in
`wasi_snapshot_preview1`, a component imports whole `wasi:*` interfaces. Before instantiation the
executor checks every import against a policy: by default everything WASI except a component's
sockets (`wasi:sockets/*`, allowed only when network is granted: a component can create sockets). A
module's `sock_*` calls can only use sockets it was handed, and it is handed none, so they run and
fail with WASI errors, as under wasmtime's own CLI. `--deny-wasi`/`--allow-wasi` adjust the policy by
function name (`path_open`), qualified name (`wasi_snapshot_preview1.path_open`), interface
(`wasi:sockets/tcp`) or prefix with `*` (`sock_*`, `wasi:sockets/*`). Imports no WASI host provides
(`env.foo`) are always refused.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from .errors import UsageError

WASIP1_MODULES = frozenset({"wasi_snapshot_preview1", "wasi_unstable"})
SOCKET_PATTERNS = ("wasi:sockets/*",)
Mode = Literal["refuse", "trap"]


@dataclass(frozen=True)
class Policy:
    network: bool = False
    deny: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    mode: Mode = "refuse"

    @classmethod
    def from_flags(cls, network: bool, deny: list[str] | None, allow: list[str] | None, mode: str) -> Policy:
        if mode not in ("refuse", "trap"):
            raise UsageError(f"--syscall-policy {mode!r}: expected refuse or trap")
        return cls(network, _split(deny), _split(allow), mode)  # type: ignore[arg-type]

    def denied(self, module: str, name: str) -> str | None:
        """Why an import is not allowed, or None if it is."""
        qualified = f"{module}.{name}" if name else module
        if module not in WASIP1_MODULES and not module.startswith("wasi:"):
            return "not a WASI import"
        if _matches(self.allow, module, name, qualified):
            return None
        if _matches(self.deny, module, name, qualified):
            return "denied by --deny-wasi"
        if not self.network and _matches(SOCKET_PATTERNS, module, name, qualified):
            return "sockets need --network host"
        return None


@dataclass
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


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


def _matches(patterns: tuple[str, ...], module: str, name: str, qualified: str) -> bool:
    for pattern in patterns:
        base = module.split("@", 1)[0]
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in (name, qualified, module, base) if candidate):
            return True
    return False
