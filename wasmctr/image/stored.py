"""Reading images back out of the store: which manifest serves a platform, what format an image is,
and the path of its wasm program.

It reads manifests and configs, never layers: the program's bytes inside a compat rootfs are found by
`wasmctr.layers.program`, in a part above this one (pyproject.toml's import contracts keep it so).
"""

from __future__ import annotations

import posixpath
from typing import Any

from wasmctr.errors import ImageNotFound, StoreError
from wasmctr.image import mediatypes as mt
from wasmctr.image.model import WASI_WASM, Descriptor, Manifest, Platform, parse_config
from wasmctr.image.store import Store
from wasmctr.record import record


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
    def labels(self) -> dict[str, Any]:
        """The image's labels: a compat image's config `Labels` (Dockerfile LABEL, `build --label`), an
        artifact's manifest annotations (where its builder puts them); {} when they are not an object."""
        labels = self.manifest.annotations if self.format == "artifact" else self.runtime_config.get("Labels")
        return dict(labels) if isinstance(labels, dict) else {}

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
