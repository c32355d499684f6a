"""What a `.wasm` file is: module or component, valid or not, and which imports it needs.

Modules are validated without holding their data segments in memory: the file is streamed section by
section, data-segment payloads are skipped (their framing is checked here, their bytes never matter to
validation), custom sections are dropped, and the resulting skeleton is handed to wasmtime's validator.
A 64 MiB module of data therefore costs kilobytes. A component is not compiled either: its sections are
walked, each core module in it validated the same way, and its import and export names read from its
own sections. As the rest of the image model, it imports no part above it (pyproject.toml's `parts` import
contract).
"""

from __future__ import annotations

import io
import os
from typing import IO, BinaryIO, Literal

from wasmctr.errors import InvalidWasm
from wasmctr.image.leb128 import encode_unsigned as _uleb
from wasmctr.record import field, record

MAGIC = b"\0asm"
MODULE_VERSION = b"\x01\x00\x00\x00"
SECTION_CUSTOM, SECTION_IMPORT, SECTION_EXPORT, SECTION_DATA = 0, 2, 7, 11
# the component binary format's sections (component-model Binary.md) this reader looks into
COMPONENT_CORE_MODULE, COMPONENT_COMPONENT, COMPONENT_IMPORT, COMPONENT_EXPORT = 1, 4, 10, 11
COMPONENT_LAST_SECTION = 12
IMPORT_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}

WasmKind = Literal["module", "component"]


@record(frozen=True)
class Import:
    module: str
    name: str
    kind: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module


@record
class WasmInfo:
    """The facts about a wasm binary that images record and the executor's policy checks."""

    kind: WasmKind
    imports: list[Import] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)

    @property
    def os(self) -> str:
        """The CNCF artifact `os`: `wasip1` for modules, `wasip2` for components."""
        return "wasip2" if self.kind == "component" else "wasip1"


def split_entrypoint(arg0: str) -> tuple[str, str | None]:
    """runwasi's entrypoint convention: `/module.wasm#func` runs export `func` instead of `_start` (a
    module's, or a component's plain function). Returns (path, export or None)."""
    path, sep, function = arg0.partition("#")
    return (path, function or None) if sep else (arg0, None)


def world(imports: list[str], exports: list[str]) -> str:
    """The world a component targets, as `inspect` names it: `proxy (wasi:http 0.2.0, 0.2.9)` when it
    exports wasi:http/incoming-handler (with the wasi:http versions it exports and imports), `command`
    when it exports wasi:cli/run, else `library`."""
    if any(e.startswith("wasi:http/incoming-handler@") for e in exports):
        versions = sorted({n.partition("@")[2] for n in [*imports, *exports] if n.startswith("wasi:http/")})
        return f"proxy (wasi:http {', '.join(v for v in versions if v)})"
    return "command" if any(e.startswith("wasi:cli/run@") for e in exports) else "library"


def sniff(head: bytes) -> WasmKind | None:
    """Module, component, or None from the first 8 bytes."""
    if len(head) < 8 or head[:4] != MAGIC:
        return None
    if head[4:8] == MODULE_VERSION:
        return "module"
    if head[6:8] == b"\x01\x00":
        return "component"
    return None


def analyse(path: str | os.PathLike[str]) -> WasmInfo:
    """Validate a wasm file with wasmtime and describe it; InvalidWasm says why it is not valid."""
    try:
        with open(path, "rb") as f:
            kind = sniff(f.read(8))
            if kind is None:
                raise InvalidWasm(f"{os.fspath(path)}: not a WebAssembly binary (no \\0asm magic and version)")
            if kind == "component":
                return _analyse_component(os.fspath(path), f)
            return _analyse_module(os.fspath(path), f)
    except OSError as exc:
        raise InvalidWasm(f"{os.fspath(path)}: {exc.strerror or exc}") from None


def module_imports(stream: IO[bytes]) -> list[Import]:
    """A module's imports read from a stream positioned after the header; stops at the import section."""
    while True:
        section = stream.read(1)
        if not section:
            return []
        size = _read_uleb_stream(stream)
        if section[0] == SECTION_IMPORT:
            return _parse_imports(_read_exact(stream, size))
        if section[0] not in (SECTION_CUSTOM, 1):
            return []
        _skip(stream, size)


def _analyse_module(path: str, f: BinaryIO) -> WasmInfo:
    skeleton, imports, exports = _module_skeleton(path, f, os.fstat(f.fileno()).st_size)
    _validate(path, lambda engine: _wasmtime().Module.validate(engine, skeleton))
    return WasmInfo("module", imports, exports)


def _module_skeleton(path: str, f: BinaryIO, end: int) -> tuple[bytes, list[Import], list[str]]:
    """The module from `f`'s position (after its header) to `end`, data payloads and custom sections left
    out, as wasmtime's validator needs it; and its imports and exports."""
    begin = f.tell()
    skeleton = io.BytesIO()
    skeleton.write(MAGIC + MODULE_VERSION)
    imports: list[Import] = []
    exports: list[str] = []
    try:
        while f.tell() < end:
            section_id, size, start = _section(path, f, end, "module")
            if section_id == SECTION_CUSTOM:
                f.seek(size, io.SEEK_CUR)
                continue
            if section_id == SECTION_DATA:
                body = _data_skeleton(f, start + size)
            else:
                body = _read_exact(f, size)
                if section_id == SECTION_IMPORT:
                    imports = _parse_imports(body)
                elif section_id == SECTION_EXPORT:
                    exports = _parse_exports(body)
            skeleton.write(bytes([section_id]) + _uleb(len(body)) + body)
    except _Exotic:
        f.seek(begin)
        skeleton = io.BytesIO(MAGIC + MODULE_VERSION + _read_exact(f, end - begin))
    except (EOFError, IndexError, UnicodeDecodeError):
        raise InvalidWasm(f"{path}: malformed module (truncated or corrupt section)") from None
    return skeleton.getvalue(), imports, exports


def _section(path: str, f: BinaryIO, end: int, what: str) -> tuple[int, int, int]:
    """A section's header, read at `f`'s position: its id, its size and where its body starts; a section
    that runs past `end` (the module's or component's) is refused."""
    section_id = _read_exact(f, 1)[0]
    size = _read_uleb_stream(f)
    start = f.tell()
    if start + size > end:
        raise InvalidWasm(f"{path}: section {section_id} runs past the end of the {what} (truncated?)")
    return section_id, size, start


def _analyse_component(path: str, f: BinaryIO) -> WasmInfo:
    """A component validated without compiling it (which takes seconds to minutes for a large one): its
    structure read here, every core module inside it validated by wasmtime's validator as a module is;
    its own imports and exports from its import and export sections. A construct this reader does not
    know is validated by compiling, as before."""
    imports: list[Import] = []
    exports: list[str] = []
    try:
        _component_sections(path, f, os.fstat(f.fileno()).st_size, imports, exports)
    except _Exotic:
        return _compile_component(path, f)
    except (EOFError, IndexError, UnicodeDecodeError):
        raise InvalidWasm(f"{path}: malformed component (truncated or corrupt section)") from None
    return WasmInfo("component", imports, exports)


def _component_sections(path: str, f: BinaryIO, end: int, imports: list[Import] | None,
                        exports: list[str] | None) -> None:
    """Walk a component's sections from after its preamble to `end`: core modules are validated, nested
    components walked; the names of the outermost component's imports and exports are collected."""
    while f.tell() < end:
        section_id, size, start = _section(path, f, end, "component")
        if section_id == COMPONENT_CORE_MODULE:
            if _read_exact(f, 8) != MAGIC + MODULE_VERSION:
                raise InvalidWasm(f"{path}: a core module inside the component has no module header")
            skeleton, _, _ = _module_skeleton(path, f, start + size)
            _validate(path, lambda engine, code=skeleton: _wasmtime().Module.validate(engine, code))
        elif section_id == COMPONENT_COMPONENT:
            if sniff(_read_exact(f, 8)) != "component":
                raise InvalidWasm(f"{path}: a component inside the component has no component header")
            _component_sections(path, f, start + size, None, None)
        elif section_id == COMPONENT_IMPORT and imports is not None:
            imports.extend(Import(name, "", "instance") for name in _component_names(_read_exact(f, size), False))
        elif section_id == COMPONENT_EXPORT and exports is not None:
            exports.extend(_component_names(_read_exact(f, size), True))
        elif section_id > COMPONENT_LAST_SECTION:
            raise InvalidWasm(f"{path}: unknown component section {section_id}")
        else:
            f.seek(start + size)
        if f.tell() != start + size:
            raise InvalidWasm(f"{path}: component section {section_id} is not the size it says")


def _component_names(body: bytes, exported: bool) -> list[str]:
    """The names in a component's import or export section (the binary format's `import` and `export`)."""
    c = _Cursor(body)
    names = []
    for _ in range(c.uleb()):
        if c.byte() != 0x00:  # a version-suffixed or older name form
            raise _Exotic()
        names.append(c.name())
        if exported:
            if c.byte() == 0x00:  # sortidx: a core sort has a second byte
                c.byte()
            c.uleb()
            if c.byte() == 0x01:  # an optional externdesc (ascribed type)
                c.externdesc()
        else:
            c.externdesc()
    if c.pos != len(body):
        raise EOFError
    return names


def _compile_component(path: str, f: BinaryIO) -> WasmInfo:
    f.seek(0)
    data = f.read()
    wasmtime = _wasmtime()
    from wasmtime.component import Component

    engine = wasmtime.Engine()
    component = _validate(path, lambda _e: Component(engine, data))
    ctype = component.type
    imports = [Import(name, "", "instance") for name in ctype.imports(engine)]
    exports = list(ctype.exports(engine))
    return WasmInfo("component", imports, exports)


def _validate(path: str, check):  # type: ignore[no-untyped-def]
    wasmtime = _wasmtime()
    try:
        return check(wasmtime.Engine())
    except wasmtime.WasmtimeError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise InvalidWasm(f"{path}: invalid WebAssembly: {reason}") from None


def _wasmtime():  # type: ignore[no-untyped-def]
    import wasmtime

    return wasmtime


class _Exotic(Exception):
    """A data segment offset expression we do not parse; fall back to validating the whole file."""


def _data_skeleton(f: BinaryIO, end: int) -> bytes:
    """The data section with every segment's payload replaced by an empty one."""
    out = io.BytesIO()
    count = _read_uleb_stream(f)
    out.write(_uleb(count))
    for _ in range(count):
        flags = _read_uleb_stream(f)
        out.write(_uleb(flags))
        if flags == 2:
            out.write(_uleb(_read_uleb_stream(f)))
        if flags in (0, 2):
            out.write(_const_expr(f))
        elif flags != 1:
            raise _Exotic()
        length = _read_uleb_stream(f)
        if f.tell() + length > end:
            raise InvalidWasm("data segment runs past the end of its section")
        f.seek(length, io.SEEK_CUR)
        out.write(_uleb(0))
    if f.tell() != end:
        raise InvalidWasm("data section size does not match its segments")
    return out.getvalue()


def _const_expr(f: BinaryIO) -> bytes:
    out = bytearray()
    while True:
        op = _read_exact(f, 1)[0]
        out.append(op)
        if op == 0x0B:
            return bytes(out)
        if op in (0x41, 0x42, 0x23):
            out += _read_leb_bytes(f)
        elif op not in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):
            raise _Exotic()


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def name(self) -> str:
        n = self.uleb()
        raw = self.data[self.pos:self.pos + n]
        if len(raw) != n:
            raise EOFError
        self.pos += n
        return raw.decode("utf-8")

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()
        if flags & 8:
            self.uleb()

    def externdesc(self) -> None:
        """Skip a component `externdesc`: what kind of thing is imported or exported, and its type."""
        kind = self.byte()
        if kind == 0x00 and self.byte() == 0x11:  # a core module type
            self.uleb()
        elif kind in (0x01, 0x04, 0x05):  # func, component, instance: a type index
            self.uleb()
        elif kind == 0x02:  # value bound: an eq index, or a value type (an s33): one LEB either way
            self.byte()
            self.uleb()
        elif kind == 0x03:  # type bound: eq index, or `sub resource`
            if self.byte() == 0x00:
                self.uleb()
        else:
            raise _Exotic()

    def reftype(self) -> None:
        if self.byte() in (0x63, 0x64):
            self.uleb()


def _parse_imports(body: bytes) -> list[Import]:
    c = _Cursor(body)
    imports = []
    for _ in range(c.uleb()):
        module, name, kind = c.name(), c.name(), c.byte()
        if kind == 0:
            c.uleb()
        elif kind == 1:
            c.reftype()
            c.limits()
        elif kind == 2:
            c.limits()
        elif kind == 3:
            c.reftype()
            c.byte()
        elif kind == 4:
            c.byte()
            c.uleb()
        else:
            raise InvalidWasm(f"unknown import kind {kind:#x} for {module}.{name}")
        imports.append(Import(module, name, IMPORT_KINDS[kind]))
    return imports


def _parse_exports(body: bytes) -> list[str]:
    c = _Cursor(body)
    exports = []
    for _ in range(c.uleb()):
        exports.append(c.name())
        c.byte()
        c.uleb()
    return exports


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _skip(f: IO[bytes], n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        n -= len(chunk)


def _read_leb_bytes(f: IO[bytes]) -> bytes:
    out = bytearray()
    while True:
        b = _read_exact(f, 1)[0]
        out.append(b)
        if not b & 0x80:
            return bytes(out)
        if len(out) > 10:
            raise EOFError


def _read_uleb_stream(f: IO[bytes]) -> int:
    result = shift = 0
    for b in _read_leb_bytes(f):
        result |= (b & 0x7F) << shift
        shift += 7
    return result
