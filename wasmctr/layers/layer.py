"""Rootfs layers: written reproducibly (a sorted tar, gzip-compressed, streamed straight into the store)
and read back as a tar stream whatever they were compressed with.

One pass over each input file feeds three things at once: the tar stream, the sha256 of the
uncompressed tar (the layer's diff ID, which the image config records) and, after gzip, the sha256 of
the compressed blob (its digest). Entries are sorted, owned by uid/gid given (0 by default) with empty
user and group names, stamped with one mtime (SOURCE_DATE_EPOCH), and the gzip header carries mtime 0
and no file name; compression runs on every core in fixed blocks (`pgzip.py`): the same files give the
same bytes on any machine.
"""

from __future__ import annotations

import contextlib
import gzip
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wasmctr.errors import LayerError
from wasmctr.image import digest as digests
from wasmctr.image import mediatypes as mt
from wasmctr.image.model import Descriptor
from wasmctr.image.store import Store
from wasmctr.layers.pgzip import ParallelGzipWriter
from wasmctr.record import record

GZIP_LEVEL = 6
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@record(frozen=True)
class LayerEntry:
    """One path of the image filesystem: a file copied from `source`, a symlink, or a directory."""

    path: str
    source: Path | None = None
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    link_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.source is None and self.link_target is None


@record(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str


def with_parents(entries: list[LayerEntry]) -> list[LayerEntry]:
    """Entries sorted by path, with every missing parent directory added (mode 0755, root-owned)."""
    by_path = {e.path: e for e in entries}
    for entry in entries:
        parent = posixpath.dirname(entry.path)
        while parent not in ("/", "") and parent not in by_path:
            by_path[parent] = LayerEntry(parent)
            parent = posixpath.dirname(parent)
    return [by_path[p] for p in sorted(by_path)]


def write_tar_gzip(store: Store, entries: list[LayerEntry], mtime: int) -> Layer:
    """Stream the entries into a new tar+gzip blob in the store and return its descriptor and diff ID."""
    with store.writer() as blob:
        with ParallelGzipWriter(blob, GZIP_LEVEL) as gz:
            tar_hash = digests.HashingWriter(gz)
            with tarfile.open(fileobj=tar_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for entry in with_parents(entries):
                    _add(tar, entry, mtime)
        descriptor = blob.commit(mt.OCI_LAYER_TAR_GZIP)
    return Layer(descriptor, tar_hash.digest)


def _add(tar: tarfile.TarFile, entry: LayerEntry, mtime: int) -> None:
    info = tarfile.TarInfo(entry.path.lstrip("/") + ("/" if entry.is_dir else ""))
    info.mtime = mtime
    info.mode = safe_mode(entry.mode, entry.is_dir)
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    if entry.is_dir:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.link_target is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.link_target
        tar.addfile(info)
    else:
        assert entry.source is not None
        with open(entry.source, "rb") as f:
            info.size = entry.source.stat().st_size
            tar.addfile(info, f)


# what reading a damaged tar stream raises: a bad header or PAX record (not UTF-8), a cut-off stream,
# bad deflate data
TAR_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, zlib.error, UnicodeDecodeError)


def safe_mode(mode: int, is_dir: bool) -> int:
    """The permission bits an image entry may carry: never setuid or setgid (sticky only on directories).
    `build` writes and `run` unpacks with this one rule, so the two agree on what an image may hold."""
    return mode & (0o1777 if is_dir else 0o777)


@contextlib.contextmanager
def open_layer(store: Store, digest: str) -> Iterator[tarfile.TarFile]:
    """A stored layer blob as a streaming tar: gzip, zstd (including zstd:chunked's extra frames) or
    uncompressed, told apart by the blob's first bytes, as containerd does, not by its media type.
    A corrupt stream (bad compression, not a tar, cut short) is a `LayerError` naming the layer."""
    corrupt: tuple[type[BaseException], ...] = (*TAR_ERRORS, gzip.BadGzipFile)
    with store.open_blob(digest) as raw:
        head = raw.read(len(ZSTD_MAGIC))
        raw.seek(0)
        stream: BinaryIO = raw
        if head.startswith(GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        elif head == ZSTD_MAGIC:
            import zstandard  # only images with zstd layers need it

            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[assignment]
            corrupt += (zstandard.ZstdError,)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                yield tar
        except corrupt as exc:
            raise LayerError(f"layer {digest} is corrupt: {exc or type(exc).__name__}") from None
