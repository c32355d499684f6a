"""The command world for a WASI preview 2 component: link WASI 0.2 (`add_wasip2`), call the run function
of its `wasi:cli/run` export (or the `path#func` export), exit 0 if it returns ok, 1 if err.

Everything the policy denies is refused (the component linker cannot shadow an interface with traps),
and so is an import the linker does not provide. Imports wasmtime's component model, which only a
component's run pays for.
"""

from __future__ import annotations

from wasmctr.errors import ExecutorError
from wasmctr.running.spec import RunSpec
from wasmctr.running.worlds.program import Component, Program
from wasmctr.running.worlds.world import Guest, World, refused

WASIP2_PROVIDED = {
    "wasi:cli": {"environment", "exit", "stdin", "stdout", "stderr", "terminal-input", "terminal-output",
                 "terminal-stdin", "terminal-stdout", "terminal-stderr"},
    "wasi:clocks": {"monotonic-clock", "wall-clock"},
    "wasi:filesystem": {"types", "preopens"},
    "wasi:io": {"error", "poll", "streams"},
    "wasi:random": {"random", "insecure", "insecure-seed"},
    "wasi:sockets": {"network", "instance-network", "udp", "udp-create-socket", "tcp", "tcp-create-socket",
                     "ip-name-lookup"},
}
"""What the component linker provides (`add_wasip2`): WASI 0.2's interfaces, at any 0.2.x version."""


class CommandComponent(World):
    name = "command (preview 2 component)"

    def matches(self, program: Program, spec: RunSpec) -> bool:
        """Any component: this is the world of every component no other world takes (one without a
        `wasi:cli/run` export is told so when it is run)."""
        return isinstance(program, Component)

    def check(self, program: Program, spec: RunSpec, denied: dict[str, str]) -> None:
        if denied:
            raise refused(denied)
        _check_provided(program)
        if spec.function is not None:
            program.check_function(spec.function)

    def run(self, guest: Guest) -> int:
        from wasmtime import component

        linker = component.Linker(guest.program.engine)
        linker.add_wasip2()
        instance = guest.instantiate(linker)
        store = guest.store
        if guest.spec.function is not None:  # a plain function export (`path#func`), called with no arguments
            instance.get_func(store, guest.spec.function)(store)
            return 0
        names = [n for n in guest.program.exports() if n.startswith("wasi:cli/run@")]
        if not names:
            raise ExecutorError("the component does not export wasi:cli/run, so it is not a command")
        run_index = instance.get_export_index(store, names[0])
        func = instance.get_func(store, instance.get_export_index(store, "run", run_index))
        result = func(store)
        return 0 if getattr(result, "tag", "ok") == "ok" else 1


def _check_provided(program: Program) -> None:
    """A component importing what the engine does not provide (`wasi:http/*`, a custom interface) could
    not be instantiated: refuse it now, naming what is missing, not when it is started."""
    missing = []
    for name, _ in program.imports():
        interface, _, version = name.partition("@")
        package, _, short = interface.rpartition("/")
        if short not in WASIP2_PROVIDED.get(package, ()) or not version.startswith("0.2."):
            missing.append(name)
    if missing:
        raise ExecutorError(f"the guest imports {', '.join(sorted(missing))}, which this engine does not provide "
                            "(it provides WASI 0.2: cli, clocks, filesystem, io, random, sockets)")
