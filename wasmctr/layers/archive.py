"""OCI archives and layout directories in and out of the store (`save`, `load`).

An OCI archive is a tar of an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`), the
format of `skopeo copy oci-archive:` and `ctr import`. Output is deterministic (sorted members, fixed
mtime). Input is streamed: each blob member goes into the store through a verifying writer, so a
damaged archive adds nothing; its `index.json` is applied last, only names whose every blob arrived
are tagged, and blobs of the archive that no tagged image references are not kept.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wasmctr.errors import ArchiveError, StoreError, WasmctrError, parameter
from wasmctr.image import mediatypes as mt
from wasmctr.image import reference
from wasmctr.image.model import Descriptor, Index, canonical_json
from wasmctr.image.store import LAYOUT_VERSION, MAX_DOCUMENT, Store, Tagged
from wasmctr.layers.layer import TAR_ERRORS
from wasmctr.record import record


def save_archive(store: Store, desc: Descriptor, ref: reference.Reference | None, output: BinaryIO,
                 attachments: list[Tagged]) -> None:
    """Write one image and everything it references as an OCI archive; unnamed in it when saved by ID, as
    `docker save ID` leaves it. `attachments` (its signatures' entries) go with it, under their names."""
    store.ensure_complete(desc, ref.familiar() if ref else desc.digest)
    blobs = sorted(set().union(*(store.referenced(d) for d in [desc, *(t.descriptor for t in attachments)])))
    entries = [_entry(desc, ref), *(_entry(t.descriptor, reference.parse(t.name)) for t in attachments)]
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_dict() for e in entries]}
    with tarfile.open(fileobj=output, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", canonical_json(LAYOUT_VERSION))
        _add_bytes(tar, "index.json", canonical_json(index))
        _add_dir(tar, "blobs/")
        _add_dir(tar, "blobs/sha256/")
        for digest in blobs:
            path = store.blob_path(digest)
            info = tarfile.TarInfo("blobs/sha256/" + path.name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)


def save_layout(store: Store, desc: Descriptor, ref: reference.Reference | None, directory: Path,
                attachments: list[Tagged]) -> None:
    """Copy one image into an OCI layout directory (created, or added to if it exists); unnamed there when
    saved by ID. `attachments` (its signatures' entries) go with it, under their names."""
    store.ensure_complete(desc, ref.familiar() if ref else desc.digest)
    with Store.for_export(directory) as target:
        with target.writing():
            for d in [desc, *(t.descriptor for t in attachments)]:
                for digest in sorted(store.referenced(d)):
                    if not target.has_blob(digest):
                        with store.open_blob(digest) as f:
                            target.put_stream(f, "application/octet-stream", digest)
            for tagged in attachments:
                target.set_tag(reference.parse(tagged.name), tagged.descriptor)
            if ref is None:
                target.keep_unnamed(desc)
            else:
                target.set_tag(ref, desc)


@record(frozen=True)
class Loaded:
    name: str
    descriptor: Descriptor


def load(store: Store, source: Path, tag: reference.Reference | None = None) -> list[Loaded]:
    """Import every image of an OCI archive (tar, optionally compressed) or OCI layout directory."""
    added: set[str] = set()
    try:
        with store.writing():
            return _load(store, source, tag, added)
    finally:  # on failure everything it added; on success what no image of the archive references
        store.discard(added)


def _load(store: Store, source: Path, tag: reference.Reference | None, added: set[str]) -> list[Loaded]:
    index_raw: bytes | None = None
    docker_archive = False
    try:
        members = _layout_dir(source) if source.is_dir() else _tar_members(source)
        for name, size, stream in members:
            if name.startswith("blobs/sha256/") and len(name) == len("blobs/sha256/") + 64:
                digest = "sha256:" + name.rsplit("/", 1)[1]
                if not store.has_blob(digest):
                    store.put_stream(stream, "application/octet-stream", digest, size)
                    added.add(digest)
            elif name == "index.json":
                index_raw = stream.read(MAX_DOCUMENT + 1)
            elif name == "manifest.json":
                docker_archive = True
    except TAR_ERRORS + (OSError,) as exc:
        raise ArchiveError(f"{source}: cannot read archive: {getattr(exc, 'strerror', None) or exc}") from None
    if index_raw is None and docker_archive:
        raise ArchiveError(f"{source} is a Docker archive (docker save); convert it with "
                           f"`skopeo copy docker-archive:{source} oci-archive:OUT.tar`")
    if index_raw is None:
        raise ArchiveError(f"{source}: no index.json, so not an OCI archive or layout")
    if len(index_raw) > MAX_DOCUMENT:  # read no further: parsed cut short, it would look like broken JSON
        raise ArchiveError(f"{source}: index.json is over the {MAX_DOCUMENT >> 20} MiB limit")
    try:
        entries = Index.parse(index_raw).manifests
    except StoreError as exc:
        raise ArchiveError(f"{source}: malformed index.json: {exc}") from None
    images = [e for e in entries if not _is_attachment(e)]  # signatures travel as named entries of their own
    if tag is not None and len(images) != 1:
        raise ArchiveError(f"{source} holds {len(images)} images; {parameter('tag')} needs exactly one")
    named = []
    for entry in entries:
        _check_complete(store, entry, source)
        named.append((tag if tag is not None and entry in images else _name_of(entry, source), entry))
    for ref, entry in named:
        store.set_tag(ref, entry)
    return [Loaded(ref.familiar(), entry) for ref, entry in named]


def _is_attachment(entry: Descriptor) -> bool:
    """Whether an archive entry holds signatures (`repo:sha256-<hex>.sig`), not an image."""
    try:
        return reference.signed_digest(reference.parse(entry.annotations.get(mt.ANNOTATION_REF_NAME, ""))) is not None
    except WasmctrError:
        return False


def _entry(desc: Descriptor, ref: reference.Reference | None) -> Descriptor:
    if ref is None:
        return desc.with_annotations({})
    return desc.with_annotations({mt.ANNOTATION_REF_NAME: ref.familiar(), mt.ANNOTATION_CONTAINERD_NAME: str(ref)})


def _name_of(entry: Descriptor, source: Path) -> reference.Reference:
    for key in (mt.ANNOTATION_CONTAINERD_NAME, mt.ANNOTATION_REF_NAME):
        name = entry.annotations.get(key, "")
        if name and (":" in name or "/" in name or key == mt.ANNOTATION_CONTAINERD_NAME):
            try:
                return reference.parse(name)
            except WasmctrError:
                continue
    raise ArchiveError(f"{source}: image {entry.digest} has no repository name (ref.name "
                       f"{entry.annotations.get(mt.ANNOTATION_REF_NAME)!r}); give one with {parameter('tag')}")


def _check_complete(store: Store, entry: Descriptor, source: Path) -> None:
    for absent in store.missing(entry):
        raise ArchiveError(f"{source}: blob {absent.digest} ({absent.media_type}) is missing; nothing was tagged")


def _tar_members(path: Path) -> Iterator[tuple[str, int, BinaryIO]]:
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                stream = tar.extractfile(member)
                if stream is not None:
                    yield member.name.removeprefix("./"), member.size, stream  # type: ignore[misc]


def _layout_dir(path: Path) -> Iterator[tuple[str, int, BinaryIO]]:
    files = [path / "index.json", *sorted((path / "blobs" / "sha256").glob("*"))]
    for file in files:
        if file.is_file():
            with open(file, "rb") as f:
                yield file.relative_to(path).as_posix(), file.stat().st_size, f


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)
