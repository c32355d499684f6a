"""The command world for a WASI preview 1 module: link `wasi_snapshot_preview1`, call `_start` (or the
`path#func` export), end with the exit code the guest passes to `proc_exit` (0 if `_start` returns).

Preview 1 has no call that creates a socket, so a network grant is refused; imports the policy denies
may be linked to traps (`--syscall-policy trap`), WASI ones only. Imports wasmtime, never its component
model (a module's warm run must not pay for it).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from wasmctr.diagnostics import one_line
from wasmctr.errors import ExecutorError, parameter
from wasmctr.running.spec import RunSpec
from wasmctr.running.worlds.program import Module, Program
from wasmctr.running.worlds.world import Guest, World, refused


class CommandModule(World):
    name = "command (preview 1 module)"

    def __init__(self) -> None:
        self._linkers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # per engine
        self._lock = threading.Lock()

    def matches(self, program: Program, spec: RunSpec) -> bool:
        """Any module: this is the world of every module no other world takes."""
        return isinstance(program, Module)

    def check(self, program: Program, spec: RunSpec, denied: dict[str, str]) -> None:
        if spec.policy.network:
            raise ExecutorError(f"{parameter('network=True')}: WASI preview 1 modules have no call that creates a "
                                "socket; network access needs a preview 2 component")
        if denied and (spec.policy.mode == "refuse" or any(r == "not a WASI import" for r in denied.values())):
            raise refused(denied)
        self._check_linkable(program)
        if spec.function is not None:
            program.check_function(spec.function)

    def run(self, guest: Guest) -> int:
        import wasmtime

        linker = wasmtime.Linker(guest.program.engine)
        linker.define_wasi()
        if guest.denied:
            linker.allow_shadowing = True
            for imp in guest.program.code.imports:
                name = f"{imp.module}.{imp.name}"
                if name in guest.denied and isinstance(imp.type, wasmtime.FuncType):
                    linker.define_func(imp.module, imp.name, imp.type, _denied_call(name))
        exports = guest.instantiate(linker).exports(guest.store)
        memory = exports.get("memory")
        if isinstance(memory, wasmtime.Memory):
            guest.memory = memory
        start = exports.get(guest.spec.function or "_start")
        if not isinstance(start, wasmtime.Func):
            raise ExecutorError("the module has no _start export: it is a library (reactor), not a command")
        start(guest.store)
        return 0

    def _check_linkable(self, program: Program) -> None:
        """A module importing a WASI function that does not exist, or with another signature, could not
        be instantiated: refuse it now (`instantiate_pre` links without running anything), naming it."""
        import wasmtime

        with self._lock:
            linker = self._linkers.get(program.engine)
            if linker is None:
                linker = self._linkers[program.engine] = wasmtime.Linker(program.engine)
                linker.define_wasi()
        try:
            linker.instantiate_pre(program.code)
        except wasmtime.WasmtimeError as exc:
            raise ExecutorError(f"cannot instantiate the guest: {one_line(str(exc))}") from None


def _denied_call(name: str) -> Callable[..., None]:
    def trap(*_args: Any) -> None:
        import wasmtime

        raise wasmtime.Trap(f"WASI call {name} is denied by the syscall policy")

    return trap
