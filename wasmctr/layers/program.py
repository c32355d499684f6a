"""An image's wasm program, read out of its layers without unpacking them, for `inspect`: streamed (the
artifact layer, or the member of a compat rootfs layer) and described (its kind and WASI imports).

Layers are only ever streamed: finding a program inside a compat rootfs walks the layer's tar stream
and stops at the member. The tar and decompression modules are imported only for that walk, so
inspecting an artifact image does not load them.
"""

from __future__ import annotations

import contextlib
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from wasmctr.errors import StoreError
from wasmctr.image import wasm
from wasmctr.image.model import Descriptor
from wasmctr.image.store import Store
from wasmctr.image.stored import Image
from wasmctr.record import field, record

if TYPE_CHECKING:
    import tarfile


@contextlib.contextmanager
def open_program(store: Store, image: Image) -> Iterator[IO[bytes]]:
    """A stream of the image's wasm program: the artifact layer, or the member of the rootfs layers."""
    from wasmctr.layers.layer import open_layer  # tar, gzip, zstd: only for a compat rootfs

    layer = image.wasm_layer
    if layer is not None:
        with store.open_blob(layer.digest) as f:
            yield f
        return
    program = image.program
    if program is None:
        raise StoreError("the image has no entrypoint")
    found: Descriptor | None = None
    for candidate in image.manifest.layers:
        with open_layer(store, candidate.digest) as tar:
            if _find_member(tar, program) is not None:
                found = candidate
    if found is None:
        raise StoreError(f"entrypoint {program} is not in the image's layers")
    with open_layer(store, found.digest) as tar:
        member = _find_member(tar, program)
        assert member is not None
        stream = tar.extractfile(member)
        if stream is None:
            raise StoreError(f"entrypoint {program} is not a regular file")
        yield stream


@record
class WasmSummary:
    kind: str
    path: str
    imports: list[str] = field(default_factory=list)
    world: str = ""  # a component's: proxy, command or library (`wasm.world`)


def describe_program(store: Store, image: Image) -> WasmSummary | None:
    """What the program is and the WASI imports it needs: its syscall surface."""
    if not image.is_wasm or image.program is None:
        return None
    with open_program(store, image) as stream:
        head = stream.read(8)
        kind = wasm.sniff(head)
        if kind == "module":
            return WasmSummary("module", image.program, [str(i) for i in wasm.module_imports(stream)])
        if kind is None:
            return WasmSummary("not wasm", image.program)
        component = image.config.get("component")
        if (isinstance(component, dict) and isinstance(component.get("imports"), list)
                and isinstance(component.get("exports"), list)):
            imports = [str(i) for i in component["imports"]]
            return WasmSummary("component", image.program, imports,
                               wasm.world(imports, [str(e) for e in component["exports"]]))
        with tempfile.NamedTemporaryFile(suffix=".wasm") as tmp:
            tmp.write(head)
            shutil.copyfileobj(stream, tmp)
            tmp.flush()
            info = wasm.analyse(Path(tmp.name))
        imports = [str(i) for i in info.imports]
        return WasmSummary("component", image.program, imports, wasm.world(imports, info.exports))


def _find_member(tar: tarfile.TarFile, path: str) -> tarfile.TarInfo | None:
    wanted = path.lstrip("/")
    for member in tar:
        if posixpath.normpath(member.name.lstrip("/").removeprefix("./")) == wanted and member.isfile():
            return member
    return None
