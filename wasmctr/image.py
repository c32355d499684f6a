"""Reading images back out of the store: which manifest serves a platform, what format an image is,
where its wasm program lives, and the summaries `images` and `inspect` show.

Layers are only ever streamed: finding a program inside a compat rootfs walks the layer's tar stream
and stops at the member. Imports the store and model, never the CLI or the network.
"""

from __future__ import annotations

import contextlib
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import mediatypes as mt
from . import wasm
from .errors import ImageNotFound, StoreError
from .model import WASI_WASM, Descriptor, Manifest, Platform, parse_config
from .record import field, record
from .store import Store

if TYPE_CHECKING:  # layers are read only for a program inside a rootfs layer
    import tarfile


@record
class Image:
    """One platform's manifest and config, as stored."""

    descriptor: Descriptor
    manifest: Manifest
    config: dict[str, Any]
    platform: Platform

    @property
    def format(self) -> str:
        """`artifact` (CNCF wasm), `compat` (wasm rootfs image), or what else it is."""
        ctype = self.manifest.config.media_type
        if ctype in mt.WASM_CONFIGS:
            return "artifact"
        if ctype in mt.IMAGE_CONFIGS:
            labels = (self.config.get("config") or {}).get("Labels") or {}
            if (self.platform.os == "wasi" or self.manifest.annotations.get(mt.ANNOTATION_VARIANT)
                    or labels.get(mt.ANNOTATION_VARIANT)):
                return "compat"
            return f"{self.platform} container image (not wasm)"
        return f"unknown ({ctype})"

    @property
    def is_wasm(self) -> bool:
        return self.format in ("artifact", "compat")

    @property
    def runtime_config(self) -> dict[str, Any]:
        return self.config.get("config") or {}

    @property
    def program(self) -> str | None:
        """The path of the wasm program: the entrypoint (or first Cmd word) resolved against WorkingDir."""
        if self.format == "artifact":
            layer = self.wasm_layer
            return "/" + layer.annotations.get(mt.ANNOTATION_TITLE, "module.wasm") if layer else None
        rc = self.runtime_config
        argv = (rc.get("Entrypoint") or []) + (rc.get("Cmd") or [])
        if not argv:
            return None
        return posixpath.normpath(posixpath.join(rc.get("WorkingDir") or "/", argv[0]))

    @property
    def wasm_layer(self) -> Descriptor | None:
        return next((layer for layer in self.manifest.layers if layer.media_type in mt.WASM_LAYERS), None)

    @property
    def size(self) -> int:
        return self.manifest.config.size + sum(layer.size for layer in self.manifest.layers)


def load(store: Store, desc: Descriptor, platform: Platform | None = None) -> Image:
    """The image for a platform under a manifest or index (default `wasi/wasm`, else the only one)."""
    if desc.media_type in mt.INDEXES:
        index = store.read_index_blob(desc)
        chosen = index.select(platform or WASI_WASM)
        if chosen is None and platform is None and len(index.manifests) == 1:
            chosen = index.manifests[0]
        if chosen is None:
            available = ", ".join(str(m.platform) for m in index.manifests if m.platform) or "none"
            raise ImageNotFound(f"no manifest for platform {platform or WASI_WASM} (available: {available})")
        desc = chosen
    if desc.media_type not in mt.MANIFESTS:
        raise StoreError(f"{desc.digest} has unsupported media type {desc.media_type}")
    manifest = store.read_manifest(desc)
    config = parse_config(store.read_document(manifest.config))
    found = desc.platform or Platform(str(config.get("os", "")), str(config.get("architecture", "")),
                                      config.get("variant"))
    if manifest.config.media_type in mt.WASM_CONFIGS:
        found = WASI_WASM
    return Image(desc, manifest, config, found)


def platforms(store: Store, desc: Descriptor) -> list[Platform]:
    if desc.media_type in mt.INDEXES:
        return [m.platform for m in store.read_index_blob(desc).manifests if m.platform]
    return [load(store, desc).platform]


def program_key(image: Image, program: str) -> str:
    """What names a program in a compat image's rootfs for the compile cache: the image's layers, which
    fix the rootfs unpacked from them, and the program's absolute path there. Hashing the file at every
    run (18 MB for a Python component) is what it saves."""
    return "rootfs:" + ",".join(layer.digest for layer in image.manifest.layers) + ":" + program


@contextlib.contextmanager
def open_program(store: Store, image: Image) -> Iterator[IO[bytes]]:
    """A stream of the image's wasm program: the artifact layer, or the member of the rootfs layers."""
    from .layer import open_layer

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
