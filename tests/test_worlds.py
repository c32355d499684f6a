"""Guest worlds: a new kind of guest is a `World` registered with the executor, not a branch inside it.

The executor here is the installed one, run in this process; the world below is this file's own (a
"server" entry, `serve`, returning its exit code), registered at run time: the executor picks it for a
program that exports `serve`, checks it through it before start, and runs it on its guest thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from wasmctr.errors import ExecutorError, parameter
from wasmctr.running.executor import Executor, RunSpec
from wasmctr.running.policy import Policy
from wasmctr.running.worlds import registry
from wasmctr.running.worlds.program import Module, Program
from wasmctr.running.worlds.world import Guest, World

SERVER_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "served\\n")
  (func (export "serve") (result i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 7))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.const 7)))
"""


class ServeWorld(World):
    """A module exporting `serve` (no `_start`): link WASI preview 1, call `serve`, exit with its result."""

    name = "test server"

    def __init__(self) -> None:
        self.checked: list[dict[str, str]] = []

    def matches(self, program: Program, spec: RunSpec) -> bool:
        return isinstance(program, Module) and "serve" in program.exports()

    def check(self, program: Program, spec: RunSpec, denied: dict[str, str]) -> None:
        self.checked.append(denied)
        if denied:
            raise ExecutorError(f"the test server cannot run without {', '.join(sorted(denied))}")

    def run(self, guest: Guest) -> int:
        linker = wasmtime.Linker(guest.program.engine)
        linker.define_wasi()
        serve: Any = guest.instantiate(linker).exports(guest.store)["serve"]
        return int(serve(guest.store))


@pytest.fixture
def server_world() -> Iterator[ServeWorld]:
    world = ServeWorld()
    registry.register(world)
    try:
        yield world
    finally:
        registry.unregister(world)


@pytest.fixture
def server_wasm(tmp_path: Path) -> Path:
    path = tmp_path / "server.wasm"
    path.write_bytes(wasmtime.wat2wasm(SERVER_WAT))
    return path


def test_without_its_world_a_module_with_no_start_is_not_a_command(server_wasm: Path) -> None:
    with pytest.raises(ExecutorError, match="the module has no _start export"):
        Executor().run(RunSpec(server_wasm, ["server"]))


def test_a_registered_world_is_picked_checked_and_run_by_the_executor(server_world: ServeWorld,
                                                                       server_wasm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcome = Executor().run(RunSpec(server_wasm, ["server"], stdout=str(out)))
    assert (outcome.exit_code, outcome.reason, outcome.message) == (7, "exit", "")
    assert out.read_text() == "served\n"
    assert server_world.checked == [{}]


def test_a_registered_world_is_given_the_policys_verdict_before_start(server_world: ServeWorld,
                                                                      server_wasm: Path) -> None:
    policy = Policy.from_flags(network=False, deny=["fd_write"], allow=None, mode="trap")
    with pytest.raises(ExecutorError, match="the test server cannot run without wasi_snapshot_preview1.fd_write"):
        Executor().prepare(RunSpec(server_wasm, ["server"], policy=policy))
    assert server_world.checked == [{"wasi_snapshot_preview1.fd_write": "denied by " + parameter("deny_wasi")}]


def test_programs_the_registered_world_does_not_match_go_to_the_command_world(server_world: ServeWorld,
                                                                              hello_wasm: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcome = Executor().run(RunSpec(hello_wasm, ["hello"], stdout=str(out)))
    assert (outcome.exit_code, outcome.reason) == (0, "exit")
    assert out.read_text() == "hello from wat\n"
    assert server_world.checked == []
