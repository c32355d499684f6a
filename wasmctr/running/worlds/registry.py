"""Which worlds the executor knows, and which one runs a given program.

`BUILTIN` lists wasmctr's own worlds, most specific first: a new world (a `wasi:http/proxy` server)
goes before the command worlds, which take any program of their format. `register` adds one at run
time (a test, a plugin), ahead of the built-in ones. Imports the worlds; the executor imports this.
"""

from __future__ import annotations

from wasmctr.errors import ExecutorError
from wasmctr.running.spec import RunSpec
from wasmctr.running.worlds.command_component import CommandComponent
from wasmctr.running.worlds.command_module import CommandModule
from wasmctr.running.worlds.http_proxy import HttpProxy
from wasmctr.running.worlds.program import Program
from wasmctr.running.worlds.world import World

BUILTIN: tuple[World, ...] = (HttpProxy(), CommandModule(), CommandComponent())
_registered: list[World] = []


def register(world: World) -> None:
    """Consider `world` before every world registered earlier and every built-in one."""
    _registered.insert(0, world)


def unregister(world: World) -> None:
    _registered.remove(world)


def select(program: Program, spec: RunSpec) -> World:
    """The first world that matches the program."""
    for world in (*_registered, *BUILTIN):
        if world.matches(program, spec):
            return world
    raise ExecutorError(f"{spec.wasm}: no world runs this {program.kind}")
