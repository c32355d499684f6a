"""Turn a build plan into an image in the store, in either wasm image format.

- `compat`: an OCI image whose one tar+gzip layer holds the files and whose config says `wasi/wasm`
  (or a Linux platform, for engines that reject `os: wasi`) with Entrypoint, Cmd, Env, WorkingDir and
  Labels; the manifest carries `module.wasm.image/variant=compat`. Several platforms make an OCI index
  whose manifests share the layer.
- `artifact`: the CNCF TAG-Runtime wasm artifact: config `application/vnd.wasm.config.v0+json`, one
  `application/wasm` layer that is the module or component itself.

Every wasm file is validated before anything is written, and the build is reproducible: every time
stamp comes from SOURCE_DATE_EPOCH (default 0), every document is canonical JSON.
"""

from __future__ import annotations

import os
import posixpath
from datetime import UTC, datetime
from typing import Any, Literal

from wasmctr.building.dockerfile import BuildPlan
from wasmctr.errors import BuildError, UsageError, parameter
from wasmctr.image import mediatypes as mt
from wasmctr.image import wasm
from wasmctr.image.model import WASI_WASM, Descriptor, Index, Manifest, Platform, canonical_json
from wasmctr.image.store import Store
from wasmctr.layers.layer import LayerEntry, write_tar_gzip
from wasmctr.record import record

Format = Literal["compat", "artifact"]
FORMATS: tuple[Format, ...] = ("compat", "artifact")


@record(frozen=True)
class Built:
    """What a build produced: the descriptor to tag, and what it holds."""

    descriptor: Descriptor
    format: Format
    platforms: list[Platform]
    program: str
    wasm: wasm.WasmInfo


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds") from None


def timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(store: Store, plan: BuildPlan, fmt: Format = "compat", platforms: list[Platform] | None = None,
          author: str | None = None) -> Built:
    """Write the image's blobs; the caller holds `store.writing()` until it has tagged the result."""
    platforms = platforms or [WASI_WASM]
    epoch = source_date_epoch()
    infos = {path: wasm.analyse(entry.source) for path, entry in sorted(plan.files.items())
             if entry.source is not None and _looks_like_wasm(entry)}
    program = _program(plan, infos)
    if fmt == "artifact":
        descriptor = _artifact(store, plan, program, infos[program], epoch, author, platforms)
    else:
        descriptor = _compat(store, plan, epoch, platforms)
    return Built(descriptor, fmt, platforms, program, infos[program])


def _looks_like_wasm(entry: LayerEntry) -> bool:
    assert entry.source is not None
    if entry.source.suffix == ".wasm":
        return True
    with open(entry.source, "rb") as f:
        return f.read(4) == wasm.MAGIC


def _program(plan: BuildPlan, infos: dict[str, wasm.WasmInfo]) -> str:
    argv = (plan.entrypoint or []) + (plan.cmd or [])
    if not argv:
        raise BuildError("the image has no ENTRYPOINT or CMD: nothing says which .wasm file to run")
    program = posixpath.normpath(posixpath.join(plan.workdir, argv[0]))
    if program not in plan.files:
        raise BuildError(f"entrypoint {argv[0]} is not a file in the image (copied files: "
                         f"{', '.join(sorted(p for p, e in plan.files.items() if not e.is_dir)) or 'none'})")
    if program not in infos:
        raise BuildError(f"entrypoint {argv[0]} is not WebAssembly; wasm images run a .wasm module or component")
    return program


def _compat(store: Store, plan: BuildPlan, epoch: int, platforms: list[Platform]) -> Descriptor:
    layer = write_tar_gzip(store, list(plan.files.values()), epoch)
    created = timestamp(epoch)
    runtime: dict[str, Any] = {"Labels": {**plan.labels, mt.ANNOTATION_VARIANT: "compat"}}
    for key, value in (("Entrypoint", plan.entrypoint), ("Cmd", plan.cmd), ("Env", plan.env_list),
                       ("WorkingDir", plan.workdir), ("User", plan.user)):
        if value:
            runtime[key] = value
    manifests = []
    for platform in platforms:
        config = {
            **platform.to_dict(),
            "created": created,
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": created, "created_by": "wasmctr build", "comment": "wasm rootfs"}],
        }
        config_desc = store.put_bytes(canonical_json(config), mt.OCI_CONFIG)
        manifest = Manifest.build(config_desc, [layer.descriptor],
                                  {mt.ANNOTATION_VARIANT: "compat", mt.ANNOTATION_CREATED: created})
        manifests.append(store.put_bytes(manifest.raw, mt.OCI_MANIFEST))
    if len(platforms) == 1:
        return manifests[0]
    index = Index.build([Descriptor(m.media_type, m.digest, m.size, platform=p)
                         for m, p in zip(manifests, platforms, strict=True)], {})
    return store.put_bytes(index.raw, mt.OCI_INDEX)


def _artifact(store: Store, plan: BuildPlan, program: str, info: wasm.WasmInfo, epoch: int,
              author: str | None, platforms: list[Platform]) -> Descriptor:
    if platforms != [WASI_WASM]:
        raise UsageError(f"{parameter('format')} artifact is platform-neutral (wasm/wasip1 or wasip2); drop "
                         f"{parameter('platforms')} or use {parameter('format')} compat")
    files = [p for p, e in plan.files.items() if not e.is_dir]
    if len(files) != 1:
        raise BuildError(f"{parameter('format')} artifact holds exactly one wasm file, this build has {len(files)} "
                         f"({', '.join(sorted(files))}); use {parameter('format')} compat for several files")
    for instruction in ("ENV", "WORKDIR", "USER", "CMD"):
        if instruction in plan.origins:
            raise BuildError(f"{plan.origins[instruction]}: {instruction} has no place in the wasm artifact "
                             f"config; use {parameter('format')} compat")
    entry = plan.files[program]
    assert entry.source is not None
    with open(entry.source, "rb") as f:
        layer = store.put_stream(f, mt.WASM_LAYER)
    layer = layer.with_annotations({mt.ANNOTATION_TITLE: posixpath.basename(program)})
    created = timestamp(epoch)
    config: dict[str, Any] = {
        "created": created,
        "architecture": "wasm",
        "os": info.os,
        "layerDigests": [layer.digest],
    }
    if author:
        config["author"] = author
    if info.kind == "component":
        config["component"] = {
            "imports": sorted(str(i) for i in info.imports),
            "exports": sorted(info.exports),
            "target": None,
        }
    config_desc = store.put_bytes(canonical_json(config), mt.WASM_CONFIG_V0)
    manifest = Manifest.build(config_desc, [layer], {**plan.labels, mt.ANNOTATION_CREATED: created})
    return store.put_bytes(manifest.raw, mt.OCI_MANIFEST)
