"""Push and pull: moving images between the local store and a registry.

Pull fetches the manifest (or index, and every manifest and config under it), then the layers of the
chosen platform (all with `all_platforms`), each streamed into a verifying store writer; blobs the
store already has are skipped, and a blob an interrupted pull left half-fetched in `ingest/` is
resumed with a range request. If anything fails, the complete blobs this pull added are discarded and
no tag changes; the image is tagged before the store's GC lock is released, so a concurrent `rmi`
never collects it half-way.

Push sends blobs first (skipping those the registry has, trying a cross-repository mount from another
repository of ours on the same registry), then child manifests by digest, then the tagged manifest or
index. Blobs move in parallel, a few at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from wasmctr.errors import ImageNotFound, RegistryError, WasmctrError, parameter
from wasmctr.image import digest as digests
from wasmctr.image import mediatypes as mt
from wasmctr.image.model import WASI_WASM, Descriptor, Index, Manifest, Platform, parse_config
from wasmctr.image.reference import Reference, parse
from wasmctr.image.store import MAX_DOCUMENT, Store
from wasmctr.registry.client import Registry

PARALLEL_BLOBS = 4


class Progress(Protocol):
    """Where transfers report; the CLI draws bars or lines, the API default says nothing."""

    def begin(self, desc: Descriptor, action: str) -> Callable[[int], None]: ...

    def end(self, desc: Descriptor, outcome: str) -> None: ...


class Silent:
    def begin(self, desc: Descriptor, action: str) -> Callable[[int], None]:
        return lambda n: None

    def end(self, desc: Descriptor, outcome: str) -> None:
        pass


def pull(store: Store, ref: Reference, client: Registry, platform: Platform | None = None,
         all_platforms: bool = False, progress: Progress | None = None,
         admit: Callable[[Descriptor], None] | None = None) -> Descriptor:
    """Fetch an image into the store and tag it with `ref`; returns the top descriptor. `admit` sees the top
    descriptor before anything is stored, and raises to refuse the image (the signature policy): every other
    blob is reached from it by digest."""
    progress = progress or Silent()
    raw, header_type = client.get_manifest_raw(ref.repository, ref.locator)
    top = Descriptor(_media_type(raw, header_type), digests.of_bytes(raw), len(raw))
    if admit is not None:
        admit(top)
    added: set[str] = set()
    try:
        with store.writing():
            _put(store, raw, top, added)
            layers: list[Descriptor] = []
            if top.media_type in mt.INDEXES:
                index = Index.parse(raw, top.media_type)
                chosen = _choose(index, platform, ref)
                for child in index.manifests:
                    if child.media_type not in mt.MANIFESTS:
                        continue
                    manifest = _fetch_manifest(store, client, ref, child, added)
                    _fetch_small(store, client, ref, manifest.config, added)
                    if all_platforms or child.digest == chosen.digest:
                        layers.extend(manifest.layers)
            elif top.media_type in mt.MANIFESTS:
                manifest = Manifest.parse(raw, top.media_type)
                _fetch_small(store, client, ref, manifest.config, added)
                if platform is not None:
                    _check_platform(store, ref, manifest, platform)
                layers = manifest.layers
            else:
                raise RegistryError(f"{ref}: unsupported manifest media type {top.media_type!r}")
            todo = []
            for d in {d.digest: d for d in layers}.values():
                if store.has_blob(d.digest):
                    progress.end(d, "already present")
                else:
                    todo.append(d)
            _parallel(lambda d: _download(store, client, ref, d, progress, added), todo)
            store.set_tag(ref, top)
    except BaseException:
        store.discard(added)
        raise
    return top


def push(store: Store, local: Reference, target: Reference, client: Registry,
         progress: Progress | None = None) -> Descriptor:
    """Send an image of the store to `target`; returns the pushed top descriptor."""
    progress = progress or Silent()
    top = store.resolve(local)
    store.ensure_complete(top, local.familiar())
    mount_sources = _mount_sources(store, target)
    children: list[Descriptor] = []
    if top.media_type in mt.INDEXES:
        children = store.read_index_blob(top).manifests
    manifests = children or [top]
    blobs: dict[str, Descriptor] = {}
    for m in manifests:
        manifest = store.read_manifest(m)
        for d in (manifest.config, *manifest.layers):
            blobs.setdefault(d.digest, d)
    _parallel(lambda d: _upload(store, client, target, d, mount_sources.get(d.digest, []), progress),
              list(blobs.values()))
    for child in children:
        client.put_manifest(target.repository, child.digest, store.read_document(child), child.media_type)
    client.put_manifest(target.repository, target.tag or top.digest, store.read_document(top), top.media_type)
    return top


def _media_type(raw: bytes, header_type: str) -> str:
    try:
        declared = json.loads(raw).get("mediaType")
    except (ValueError, AttributeError):
        raise RegistryError("the registry sent a manifest that is not a JSON object") from None
    if declared is not None and not isinstance(declared, str):
        raise RegistryError("the registry sent a manifest whose mediaType is not a string")
    return declared or header_type or mt.OCI_MANIFEST


def _put(store: Store, raw: bytes, desc: Descriptor, added: set[str]) -> None:
    if not store.has_blob(desc.digest):
        store.put_bytes(raw, desc.media_type)
        added.add(desc.digest)


def _choose(index: Index, platform: Platform | None, ref: Reference) -> Descriptor:
    chosen = index.select(platform or WASI_WASM)
    if chosen is None and platform is None and len(index.manifests) == 1:
        chosen = index.manifests[0]
    if chosen is None:
        available = ", ".join(str(m.platform) for m in index.manifests if m.platform) or "none"
        raise ImageNotFound(f"{ref.familiar()} has no manifest for platform {platform or WASI_WASM} "
                            f"(available: {available}); choose one with {parameter('platform')}")
    return chosen


def _check_platform(store: Store, ref: Reference, manifest: Manifest, platform: Platform) -> None:
    """A single-manifest image must be of the platform asked for (a variant is only checked if asked)."""
    if manifest.config.media_type in mt.WASM_CONFIGS:
        found = WASI_WASM
    else:
        config = parse_config(store.read_document(manifest.config))
        found = Platform(str(config.get("os", "")), str(config.get("architecture", "")), config.get("variant"))
    if (found.os, found.architecture) != (platform.os, platform.architecture) or (
            platform.variant and platform.variant != found.variant):
        raise ImageNotFound(f"{ref.familiar()} is a {found} image, not {platform}")


def _fetch_manifest(store: Store, client: Registry, ref: Reference, desc: Descriptor,
                    added: set[str]) -> Manifest:
    if store.has_blob(desc.digest):
        return store.read_manifest(desc)
    raw, _ = client.get_manifest_raw(ref.repository, desc.digest)
    _put(store, raw, desc, added)
    return Manifest.parse(raw, desc.media_type)


def _fetch_small(store: Store, client: Registry, ref: Reference, desc: Descriptor, added: set[str]) -> None:
    """A config: a document, read whole later, so one over the documents' limit is refused unfetched."""
    if desc.size > MAX_DOCUMENT:
        raise RegistryError(f"{ref.familiar()}: config {desc.digest} is {desc.size} bytes, over the "
                            f"{MAX_DOCUMENT >> 20} MiB limit")
    if not store.has_blob(desc.digest):
        _download(store, client, ref, desc, Silent(), added)


def _download(store: Store, client: Registry, ref: Reference, desc: Descriptor, progress: Progress,
              added: set[str]) -> None:
    with store.writer(desc.digest, desc.size, resumable=True) as writer:
        if store.has_blob(desc.digest):  # another pull fetched it while we waited for its ingest lock
            progress.end(desc, "already present")
            return
        client.download_blob(ref.repository, desc, writer, progress.begin(desc, "pulling"))
        writer.commit(desc.media_type)
    added.add(desc.digest)
    progress.end(desc, "pulled")


def _upload(store: Store, client: Registry, target: Reference, desc: Descriptor, sources: list[str],
            progress: Progress) -> None:
    if client.has_blob(target.repository, desc.digest):
        progress.end(desc, "already on the registry")
        return
    location = None
    for source in sources:
        location = client.mount_blob(target.repository, desc.digest, source)
        if location is None:
            progress.end(desc, f"mounted from {source}")
            return
        break
    location = location or client.start_upload(target.repository)
    advance = progress.begin(desc, "pushing")
    with store.open_blob(desc.digest) as f:
        client.upload_blob(location, desc, f, advance)
    progress.end(desc, "pushed")


def _mount_sources(store: Store, target: Reference) -> dict[str, list[str]]:
    """For each blob, other repositories of ours on the target's registry that hold it."""
    sources: dict[str, list[str]] = {}
    for tagged in store.tags():
        try:
            other = parse(tagged.name)
        except WasmctrError:
            continue
        if other.registry != target.registry or other.repository == target.repository:
            continue
        for digest in store.referenced(tagged.descriptor):
            repos = sources.setdefault(digest, [])
            if other.repository not in repos:
                repos.append(other.repository)
    return sources


def _parallel(work: Callable[[Descriptor], None], items: list[Descriptor]) -> None:
    if len(items) <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(min(PARALLEL_BLOBS, len(items))) as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()
