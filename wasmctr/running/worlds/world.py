"""What a guest world must answer, so that a new kind of guest is a new module and not a branch.

A world is what a program is *for*, as a WIT world names it: a command (`wasi:cli/command`: run once,
end with an exit code), an HTTP server (`wasi:http/proxy`), ... After runwasi's engine trait, the
executor owns everything a world shares (compiling and caching the code, the policy's verdict on its
imports, the store with its limits and its WASI context, the guest thread, deadlines, signals and how
a run ended) and asks the world only what differs. To add one, write a module in this package with a
`World` subclass and list an instance in `registry.BUILTIN` (a test or a plugin may `registry.register`
one instead); executor.py does not change. A world answers, in this order:

1. `matches(program, spec)`, at prepare: whether it runs this program. The program is loaded
   (`program.Module` or `program.Component`, with `imports()` and `exports()`), so a world matches on
   its format and what it exports (a proxy exports `wasi:http/incoming-handler`). The first registered
   world that matches is picked; the command worlds, which take any program of their format, come last.
2. `check(program, spec, denied)`, at prepare (Create, under the shims): refuse with `ExecutorError`,
   in one line, whatever would stop the guest from running, before anything is started: a grant the
   world cannot give (`spec.policy.network` to a preview 1 module), the imports the policy denies
   (`denied`: name to reason) if the world cannot link them to traps (`refused` says so), imports its
   linker does not provide, an entrypoint it does not export (`spec.function`: `Program.check_function`).
   A world whose run needs modules beyond wasmtime imports them here at the latest: a container process
   runs the guest under Landlock, which no longer lets it read them.
3. `run(guest)`, on the guest thread: make its linker (WASI preview 1's `wasmtime.Linker.define_wasi`,
   preview 2's `component.Linker.add_wasip2`, plus whatever the world provides), instantiate through
   `guest.instantiate(linker)` (which reports an exhausted memory limit as the executor classifies it),
   call the entry, and return the guest's exit code. wasmtime's `ExitTrap` (the guest's own exit) and
   traps propagate to the executor, which turns them into the run's outcome; an `ExecutorError` is a guest
   that cannot run. A world that exports a memory sets `guest.memory`, so that a trap near the memory
   cap is reported as out of memory. Stopping is the executor's: it interrupts the guest through the
   engine's epoch on a deadline or signal, so `run` must keep the guest's calls in this thread (a
   server's accept loop blocks in host calls, where the epoch cannot reach: it answers `stop`).

What a world may answer otherwise, where it differs from a command's: `listens` (its host serves on a
socket, so a container process keeps the socket calls without a network grant), `lifetime(spec)` (the
wall-clock bound on the whole run: the spec's timeout, which a server applies per request instead) and
`stop(guest, signum)` (a signal came: a command is interrupted through the epoch and ends 128+signal; a
server drains, returns the seconds that may take, and its `run` returns the exit code).

Imports wasmtime only inside functions, so a module's run does not pay for the component model.
Imports wasmctr's errors and diagnostics, the run spec, the size units and `program.py`; never the
executor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from wasmctr.diagnostics import one_line
from wasmctr.errors import ExecutorError
from wasmctr.record import field, record
from wasmctr.running.spec import RunSpec
from wasmctr.running.units import mib
from wasmctr.running.worlds.program import Program


@record
class Guest:
    """What a world's `run` gets: the loaded `program`, its `store` (limits, fuel, the WASI context with
    its preopens and stdio, made from `spec`), the imports the policy `denied` that `check` let through
    (to link to traps), and `memory`, which the world sets to the guest's memory once instantiated.
    `signals` lists the signals that asked the guest to stop (before `stop` is called), and `state` is
    what the world keeps of a running guest for `stop` (a server)."""

    program: Program
    store: Any
    spec: RunSpec
    denied: list[str]
    memory: Any = None
    signals: list[int] = field(default_factory=list)
    state: Any = None

    def instantiate(self, linker: Any) -> Any:
        """The program instantiated in the store through `linker`; a memory limit the guest's initial
        memory exceeds is a trap the executor reports as out of memory, another failure one line."""
        import wasmtime

        try:
            return linker.instantiate(self.store, self.program.code)
        except wasmtime.WasmtimeError as exc:
            text = one_line(str(exc))
            if self.spec.memory_limit is not None and "memory" in text and "limit" in text.lower():
                raise wasmtime.WasmtimeError(f"memory limit exceeded ({mib(self.spec.memory_limit)})") from None
            raise ExecutorError(f"cannot instantiate the guest: {text}") from None


class World(ABC):
    """One kind of guest: how to tell it, check it before start, and run it (the module docstring says
    what each answer must do)."""

    name: str  # for messages: "command (preview 1 module)"
    listens = False  # whether its host serves on a socket


    @abstractmethod
    def matches(self, program: Program, spec: RunSpec) -> bool:
        """Whether this world runs `program`."""

    @abstractmethod
    def check(self, program: Program, spec: RunSpec, denied: dict[str, str]) -> None:
        """Raise ExecutorError for what would stop the guest from running; return if it can start."""

    @abstractmethod
    def run(self, guest: Guest) -> int:
        """Run the guest to its end on the calling (guest) thread: its exit code."""

    def lifetime(self, spec: RunSpec) -> float | None:
        """Seconds the whole run may last (None: no bound)."""
        return spec.timeout

    def stop(self, guest: Guest, signum: int) -> float | None:
        """A signal asked the running guest to stop. None: interrupt it through the engine's epoch (the
        run ends 128+signal); else the seconds its own stopping may take before the hard stop, and the
        run ends with the code `run` returns."""
        return None


def refused(denied: dict[str, str]) -> ExecutorError:
    """The error for imports the policy denies that a world cannot (or must not) link to traps."""
    listed = ", ".join(f"{name} ({why})" for name, why in sorted(denied.items()))
    return ExecutorError(f"refused: the guest imports {listed}")
