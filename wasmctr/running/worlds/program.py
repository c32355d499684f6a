"""A guest's code as the engine loaded it, in whichever of WebAssembly's two binary formats it came.

A core module and a component are compiled, cached and inspected through different wasmtime classes
(`wasmtime.Module`, `wasmtime.component.Component`); a `Program` of the right subclass hides which, so
the executor and the worlds ask a loaded program for its imports and exports without asking what it is.
The formats are the two a binary's header can name (`wasm.sniff`), a closed set; what a program is
*for* (a command, an HTTP server) is a world's question (`world.py`), an open one. wasmtime.component
(~10 ms of imports) is imported only for components. Imports wasmtime, the wasm header reader and
wasmctr's errors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from wasmctr.errors import ExecutorError
from wasmctr.image import wasm


class Program(ABC):
    """Loaded code: the `engine` it was compiled for and wasmtime's `code` object."""

    kind: ClassVar[wasm.WasmKind]

    def __init__(self, engine: Any, code: Any) -> None:
        self.engine = engine
        self.code = code

    @classmethod
    @abstractmethod
    def code_class(cls) -> Any:
        """The wasmtime class that compiles, serializes and deserializes this format."""

    @classmethod
    def compile(cls, engine: Any, data: bytes) -> Program:
        return cls(engine, cls.code_class()(engine, data))

    @classmethod
    def deserialize(cls, engine: Any, data: bytes) -> Program:
        return cls(engine, cls.code_class().deserialize(engine, data))

    @classmethod
    def deserialize_file(cls, engine: Any, path: str) -> Program:
        """Mapped from the file, not copied (wasmtime keeps the file open)."""
        return cls(engine, cls.code_class().deserialize_file(engine, path))

    def serialize(self) -> bytes:
        return bytes(self.code.serialize())

    @abstractmethod
    def imports(self) -> list[tuple[str, str]]:
        """(module or interface, name) for each import, as the policy matches them (a component's
        imports are whole interfaces: name "")."""

    @abstractmethod
    def exports(self) -> dict[str, Any]:
        """Each export's name and its wasmtime type."""

    @abstractmethod
    def is_function(self, export_type: Any) -> bool:
        """Whether an export type from `exports` is a function of this format."""

    def check_function(self, name: str) -> None:
        """A `path#name` entrypoint must name a function the guest exports that takes no arguments."""
        exports = self.exports()
        found = exports.get(name)
        if found is None:
            raise ExecutorError(f"the guest has no export {name!r}; it exports: "
                                f"{', '.join(sorted(exports)) or 'nothing'}")
        if not self.is_function(found):
            raise ExecutorError(f"export {name!r} is not a function")
        if list(found.params):
            raise ExecutorError(f"export {name!r} takes arguments; an entrypoint function must take none")


class Module(Program):
    """A core module (WASI preview 1)."""

    kind = "module"

    @classmethod
    def code_class(cls) -> Any:
        import wasmtime

        return wasmtime.Module

    def imports(self) -> list[tuple[str, str]]:
        return [(imp.module, imp.name or "") for imp in self.code.imports]

    def exports(self) -> dict[str, Any]:
        return {e.name: e.type for e in self.code.exports}

    def is_function(self, export_type: Any) -> bool:
        import wasmtime

        return isinstance(export_type, wasmtime.FuncType)


class Component(Program):
    """A component (WASI preview 2)."""

    kind = "component"

    @classmethod
    def code_class(cls) -> Any:
        from wasmtime import component

        return component.Component

    def imports(self) -> list[tuple[str, str]]:
        return [(name, "") for name in self.code.type.imports(self.engine)]

    def exports(self) -> dict[str, Any]:
        return {name: item.ty for name, item in self.code.type.exports(self.engine).items()}

    def is_function(self, export_type: Any) -> bool:
        from wasmtime import component

        return isinstance(export_type, component.FuncType)


FORMATS: dict[wasm.WasmKind, type[Program]] = {"module": Module, "component": Component}


def format_of(path: Path) -> type[Program]:
    """The Program class for the file's binary format, read from its header."""
    try:
        with open(path, "rb") as f:
            kind = wasm.sniff(f.read(8))
    except OSError as exc:
        raise ExecutorError(f"{path}: {exc.strerror}") from None
    if kind is None:
        raise ExecutorError(f"{path} is not WebAssembly (no \\0asm header); run it with a Linux runtime such as runc")
    return FORMATS[kind]
