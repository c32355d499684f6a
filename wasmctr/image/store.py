"""The local content store: an OCI image layout on disk, shared safely by concurrent wasmctr processes.

Layout (image-spec `image-layout.md`): `oci-layout`, `index.json` and `blobs/sha256/<hex>`; tags are
`org.opencontainers.image.ref.name` annotations on `index.json` entries, so `skopeo`, `oci-image-tool`
and `ctr import` read the store as it is. Blobs are written to `ingest/` and renamed into place only
after their digest checks out, so a blob path always holds the bytes its name promises.

Two advisory locks keep concurrent processes correct: `index.lock` serialises read-modify-write of
`index.json` (replaced atomically, never edited in place), and `gc.lock` is held shared by anything
that writes blobs before tagging them and exclusively by garbage collection, so `rmi` never deletes
the blobs of a build still in flight. It imports no part above the image model: never layers, a registry,
building, running or anything above them (pyproject.toml's `parts` import contract).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from wasmctr.errors import DigestMismatch, ImageNotFound, StoreError, UsageError, parameter
from wasmctr.image import atomic, home
from wasmctr.image import digest as digests
from wasmctr.image import mediatypes as mt
from wasmctr.image.model import Descriptor, Index, Manifest, canonical_json
from wasmctr.image.reference import Reference, image_id, parse
from wasmctr.record import record

MAX_DOCUMENT = 4 << 20
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
# the largest blob the store takes (WASMCTR_MAX_BLOB_MIB): a wasm image's blobs are megabytes, one that
# carries a model a few GiB; a registry or archive that declares more is refused before a byte arrives
DEFAULT_MAX_BLOB_MIB = 16 << 10


def max_blob_size() -> int:
    """WASMCTR_MAX_BLOB_MIB in bytes, else 16 GiB; a value that is not a positive whole number of MiB is
    an error (a typo must not silently keep, or drop, the bound)."""
    text = os.environ.get("WASMCTR_MAX_BLOB_MIB", "")
    if not text:
        return DEFAULT_MAX_BLOB_MIB << 20
    if not text.isascii() or not text.isdigit() or int(text) == 0:
        raise UsageError(f"WASMCTR_MAX_BLOB_MIB={text!r}: expected a positive whole number of MiB")
    return int(text) << 20


def _named(desc: Descriptor, name: str) -> bool:
    return desc.annotations.get(mt.ANNOTATION_REF_NAME) == name


@record(frozen=True)
class Tagged:
    """One `index.json` entry: a name (`hello:1`) and the manifest or index it points to. An entry with no
    name is a dangling image: one a build, pull, load or tag moved its name away from (Docker's `<none>`),
    kept until `image prune` or `rmi ID`."""

    name: str
    descriptor: Descriptor

    @property
    def dangling(self) -> bool:
        return not self.name


class BlobWriter:
    """Streams one blob into `ingest/`, hashing as it goes; `commit` verifies and renames it in.

    A `resumable` writer (a download of a known digest) writes `ingest/<hex>.partial` under an
    exclusive lock: what an interrupted download left is kept and hashed again, so the next attempt
    asks only for the rest (`size` says how much is there), and a second download of the same blob
    waits for the first instead of fetching it twice.

    No writer grows past `WASMCTR_MAX_BLOB_MIB`, nor past its expected size; one whose size is known is
    refused before it starts when that is over the limit or over the filesystem's free space."""

    def __init__(self, store: Store, expected_digest: str | None = None, expected_size: int | None = None,
                 resumable: bool = False):
        self._store = store
        self._expected_digest = expected_digest
        self._expected_size = expected_size
        self._resumable = resumable and expected_digest is not None
        self._limit = max_blob_size()
        self._file: BinaryIO
        partial = None
        if self._resumable and expected_digest is not None:
            partial = store.ingest_dir / f"{store.blob_path(expected_digest).name}.partial"
        if expected_size is not None:
            kept = 0
            if partial is not None:
                with contextlib.suppress(OSError):
                    kept = min(partial.lstat().st_size, expected_size)
            store.check_room(f"blob {expected_digest}" if expected_digest else "a blob", expected_size, kept)
        if partial is not None:
            self._path = partial
            self._file = os.fdopen(_open_locked(self._path), "r+b")
        else:
            fd, name = tempfile.mkstemp(dir=store.ingest_dir, prefix="blob-")
            self._path = Path(name)
            self._file = os.fdopen(fd, "wb")
        self._hasher = digests.HashingWriter(self._file)
        self.descriptor: Descriptor | None = None
        if self._resumable:
            self._hasher.absorb(self._file)
            if expected_size is not None and self._hasher.size > expected_size:
                self.restart()

    def restart(self) -> None:
        """Throw away what is there and start the blob again (the server would not resume)."""
        self._file.seek(0)
        self._file.truncate()
        self._hasher = digests.HashingWriter(self._file)

    def write(self, data: bytes) -> int:
        if self._expected_size is not None and self._hasher.size + len(data) > self._expected_size:
            raise DigestMismatch(
                f"blob {self._expected_digest} is larger than the {self._expected_size} bytes its descriptor says"
            )
        if self._hasher.size + len(data) > self._limit:  # a blob of no declared size
            raise StoreError(f"a blob is over the {self._limit >> 20} MiB limit (WASMCTR_MAX_BLOB_MIB)")
        return self._hasher.write(data)

    def flush(self) -> None:
        self._file.flush()

    @property
    def size(self) -> int:
        return self._hasher.size

    def commit(self, media_type: str = "application/octet-stream") -> Descriptor:
        """Verify and rename into `blobs/`, then close: a resumable writer's lock goes with the close,
        and a waiting writer must find the partial gone, never half-way renamed."""
        self._file.flush()
        os.fsync(self._file.fileno())
        got = self._hasher.digest
        if self._expected_digest is not None and got != self._expected_digest:
            self.abort()
            raise DigestMismatch(f"digest mismatch: expected {self._expected_digest}, got {got}")
        if self._expected_size is not None and self._hasher.size != self._expected_size:
            self.abort()
            raise DigestMismatch(
                f"size mismatch for {got}: expected {self._expected_size} bytes, got {self._hasher.size}"
            )
        os.replace(self._path, self._store.blob_path(got))
        self._file.close()
        atomic.fsync_dir(self._store.blobs_dir)
        self.descriptor = Descriptor(media_type, got, self._hasher.size)
        return self.descriptor

    def abort(self, keep_partial: bool = False) -> None:
        """Delete and close the ingest file (in that order, for the lock's sake, as in `commit`); a
        resumable one is kept when `keep_partial` (a broken connection or an interrupt, not bad content)."""
        if not (keep_partial and self._resumable) and not self._file.closed:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None or self.descriptor is None:
            self.abort(keep_partial=exc_type is not None and not issubclass(exc_type, DigestMismatch))


def _open_locked(path: Path) -> int:
    """Open (creating) and exclusively lock `path`, making sure the lock is on the file that is still
    at that path: a holder that finished renamed it away (into `blobs/`) while we waited."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _refuse_foreign_directories(root: Path, names: tuple[str, ...]) -> None:
    """Each of `root`'s directories `names` that exists must be a directory (not a link to one) owned by
    this process's user, or by root, and writable by no group or other user."""
    me = os.geteuid()
    for name in names:
        path = root / name if name else root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot use {path}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{path} is not a directory of its own (a link, or a file): refusing to write a "
                             "layout through it")
        if st.st_uid not in (me, 0) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StoreError(f"{path} belongs to uid {st.st_uid} (mode {stat.S_IMODE(st.st_mode):o}): another "
                             "user could choose where its files land; write the layout to a directory of yours")


class Store:
    """An OCI image layout used as wasmctr's local image store."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else home.store_root()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        self.index_path = self.root / "index.json"
        try:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            self.ingest_dir.mkdir(exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                atomic.write_bytes(layout, canonical_json(LAYOUT_VERSION))
            if not self.index_path.exists():
                with self._locked("index.lock"):
                    if not self.index_path.exists():
                        self._write_index([])
        except OSError as exc:
            raise StoreError(f"cannot use store {self.root}: {exc.strerror or exc}") from None

    @classmethod
    @contextlib.contextmanager
    def for_export(cls, directory: Path) -> Iterator[Store]:
        """A layout written for others to read (`save --oci-dir`): the lock files and `ingest/` a store
        works with are removed afterwards, unless they were there before (the directory is a store in use,
        whose other users hold them). Blobs are renamed into its directories, so each that exists must be
        ours and no one else's to change: a symlink there (`blobs/sha256 -> /etc/cron.d`), or a directory
        another user owns or may write, would let that user choose where root's files land."""
        _refuse_foreign_directories(directory, ("", "blobs", "blobs/sha256", "ingest"))
        work = [directory / name for name in ("gc.lock", "index.lock", "ingest")]
        new = [path for path in work if not os.path.lexists(path)]
        try:
            yield cls(directory)
        finally:
            for path in new:
                with contextlib.suppress(OSError):  # ingest/ holding a write of someone else's stays
                    path.rmdir() if path.name == "ingest" else path.unlink()

    # -- blobs -------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64 or not all(c in "0123456789abcdef" for c in hex_digest):
            raise StoreError(f"unsupported digest {digest!r}")
        return self.blobs_dir / hex_digest

    def rootfs_path(self, manifest_digest: str) -> Path:
        """Where `run` keeps the rootfs unpacked from an image's layers (`unpack.py`), by manifest digest."""
        return self.root / "rootfs" / manifest_digest.split(":", 1)[1]

    def prune_rootfs(self) -> None:
        """Remove the unpacked rootfs of every manifest no longer in the store (after garbage collection).
        Staging directories of unpacks in progress (`.unpack-*`) are left alone."""
        with contextlib.suppress(FileNotFoundError):
            for unpacked in (self.root / "rootfs").iterdir():
                if not unpacked.name.startswith(".") and not self.has_blob(f"sha256:{unpacked.name}"):
                    shutil.rmtree(unpacked, ignore_errors=True)

    def check_room(self, name: str, size: int, kept: int = 0) -> None:
        """Refuse a blob over the size limit, or one whose missing `size - kept` bytes the store's
        filesystem cannot hold, before any of it is written: a registry that declares a huge blob and
        streams it endlessly must not fill the node's disk first."""
        limit = max_blob_size()
        if size > limit:
            raise StoreError(f"{name} is {size} bytes, over the {limit >> 20} MiB limit (WASMCTR_MAX_BLOB_MIB)")
        try:
            fs = os.statvfs(self.ingest_dir)
        except OSError as exc:
            raise StoreError(f"cannot use store {self.root}: {exc.strerror}") from None
        free = fs.f_bavail * fs.f_frsize
        if size - kept > free:
            raise StoreError(f"{name} is {size} bytes, and {self.root} has only {free >> 20} MiB free")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def writer(self, expected_digest: str | None = None, expected_size: int | None = None,
               resumable: bool = False) -> BlobWriter:
        return BlobWriter(self, expected_digest, expected_size, resumable)

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        desc = Descriptor.of(media_type, data)
        if not self.has_blob(desc.digest):
            with self.writer(desc.digest, desc.size) as w:
                w.write(data)
                w.commit(media_type)
        return desc

    def put_stream(self, stream: BinaryIO, media_type: str, expected_digest: str | None = None,
                   expected_size: int | None = None) -> Descriptor:
        with self.writer(expected_digest, expected_size) as w:
            while chunk := stream.read(digests.CHUNK):
                w.write(chunk)
            return w.commit(media_type)

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store {self.root}") from None

    def read_document(self, desc: Descriptor) -> bytes:
        """A manifest, index or config: small, read whole, and checked against its digest."""
        if desc.size > MAX_DOCUMENT:
            raise StoreError(f"{desc.media_type} {desc.digest} is {desc.size} bytes, over the 4 MiB limit")
        with self.open_blob(desc.digest) as f:
            data = f.read(MAX_DOCUMENT + 1)
        if digests.of_bytes(data) != desc.digest:
            raise DigestMismatch(f"blob {desc.digest} in {self.root} is corrupt (its content has another digest)")
        return data

    def read_manifest(self, desc: Descriptor) -> Manifest:
        return Manifest.parse(self.read_document(desc), desc.media_type)

    def read_index_blob(self, desc: Descriptor) -> Index:
        return Index.parse(self.read_document(desc), desc.media_type)

    # -- tags (index.json) -------------------------------------------------------------------------

    def tags(self) -> list[Tagged]:
        return [Tagged(d.annotations.get(mt.ANNOTATION_REF_NAME, ""), d) for d in self._read_index()]

    def set_tag(self, ref: Reference, desc: Descriptor) -> None:
        """Name an image; the image the name leaves, if nothing else names it, stays as a dangling entry."""
        name = ref.familiar()
        entry = desc.with_annotations({mt.ANNOTATION_REF_NAME: name, mt.ANNOTATION_CONTAINERD_NAME: str(ref)})
        with self._locked("index.lock"):
            entries = self._read_index()
            keep = [d for d in entries if not _named(d, name)
                    and not (d.digest == desc.digest and not d.annotations.get(mt.ANNOTATION_REF_NAME))]
            for left in entries:
                if _named(left, name) and all(d.digest != left.digest for d in [*keep, desc]):
                    keep.append(left.with_annotations({}))
            keep.append(entry)
            self._write_index(keep)

    def keep_unnamed(self, desc: Descriptor) -> None:
        """List an image in `index.json` without a name, unless an entry already holds it."""
        with self._locked("index.lock"):
            entries = self._read_index()
            if all(d.digest != desc.digest for d in entries):
                self._write_index([*entries, desc.with_annotations({})])

    def remove(self, match: Callable[[Tagged], bool]) -> list[Tagged]:
        """Drop the `index.json` entries that match (names, or dangling images); blobs stay until `gc`."""
        with self._locked("index.lock"):
            entries = self.tags()
            removed = [t for t in entries if match(t)]
            if removed:
                self._write_index([t.descriptor for t in entries if not match(t)])
        return removed

    def resolve(self, ref: Reference) -> Descriptor:
        """The descriptor a reference names: by tag from `index.json`, or by digest from the blobs."""
        if ref.digest:
            for tagged in self.tags():
                if tagged.descriptor.digest == ref.digest:
                    return tagged.descriptor
            if self.has_blob(ref.digest):
                return self._describe_blob(ref.digest)
            raise ImageNotFound(f"no image {ref.familiar()} in the store {self.root}")
        name = ref.familiar()
        for tagged in self.tags():
            if tagged.name == name:
                return tagged.descriptor
        raise ImageNotFound(f"no image {name} in the store {self.root} (see `wasmctr images`)")

    def lookup(self, text: str) -> tuple[Descriptor, Reference | None]:
        """What a user's word names, as Docker reads it: an image ID (`sha256:<64 hex>`, or the hex or a
        unique prefix of it, as `wasmctr images` shows it) or a reference; a name wins over an ID prefix.
        Returns the descriptor and the reference (None for an ID)."""
        hex_id = image_id(text)
        if hex_id is not None and len(hex_id) == 64:
            return self._resolve_id(hex_id, text), None
        ref = parse(text)
        try:
            return self.resolve(ref), ref
        except ImageNotFound:
            if hex_id is None:
                raise
        return self._resolve_id(hex_id, text), None

    def _resolve_id(self, hex_id: str, text: str) -> Descriptor:
        found = {t.descriptor.digest: t.descriptor for t in self.tags()
                 if t.descriptor.digest.removeprefix("sha256:").startswith(hex_id)}
        if len(found) > 1:
            raise UsageError(f"image ID {text} is ambiguous: it begins {len(found)} images' IDs; give more digits")
        if found:
            return next(iter(found.values()))
        if len(hex_id) == 64 and self.has_blob("sha256:" + hex_id):  # a platform's manifest inside an index
            return self._describe_blob("sha256:" + hex_id)
        raise ImageNotFound(f"no image {text} in the store {self.root} (see `wasmctr images`)")

    def _describe_blob(self, digest: str) -> Descriptor:
        size = self.blob_path(digest).stat().st_size
        data = self.read_document(Descriptor("application/octet-stream", digest, size))
        try:
            media_type = json.loads(data).get("mediaType") or ""
        except (ValueError, AttributeError):
            media_type = ""
        if media_type not in mt.MANIFESTS | mt.INDEXES:
            raise ImageNotFound(f"{digest} is not a manifest or index")
        return Descriptor(media_type, digest, size)

    # -- garbage collection ------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while writing blobs that are not yet tagged, so that `gc` cannot remove them."""
        with self._locked("gc.lock", shared=True):
            yield

    def referenced(self, desc: Descriptor) -> set[str]:
        """Every blob digest reachable from a descriptor that is present in the store."""
        seen: set[str] = set()
        stack = [desc]
        while stack:
            d = stack.pop()
            if d.digest in seen or not self.has_blob(d.digest):
                continue
            seen.add(d.digest)
            if d.media_type in mt.INDEXES:
                stack.extend(self.read_index_blob(d).manifests)
            elif d.media_type in mt.MANIFESTS:
                m = self.read_manifest(d)
                stack.append(m.config)
                stack.extend(m.layers)
        return seen

    def missing(self, desc: Descriptor) -> list[Descriptor]:
        """Blobs that the descriptor reaches but the store lacks (layers of platforms not pulled, say)."""
        absent = []
        stack = [desc]
        while stack:
            d = stack.pop()
            if not self.has_blob(d.digest):
                absent.append(d)
            elif d.media_type in mt.INDEXES:
                stack.extend(self.read_index_blob(d).manifests)
            elif d.media_type in mt.MANIFESTS:
                m = self.read_manifest(d)
                stack.extend([m.config, *m.layers])
        return absent

    def ensure_complete(self, desc: Descriptor, name: str) -> None:
        absent = self.missing(desc)
        if absent:
            raise StoreError(f"{name} is incomplete in the store ({len(absent)} blobs missing, such as "
                             f"{absent[0].digest}); pull it again with {parameter('all_platforms=True')}")

    def gc(self) -> tuple[int, int]:
        """Remove blobs no image (named or dangling) reaches, and what interrupted writes left in `ingest/`
        (no writer is active while this holds the lock); returns (blobs removed, bytes freed)."""
        with self._locked("gc.lock"):
            freed = 0
            for path in self.ingest_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
            removed, blob_bytes = self._remove_unreferenced({"sha256:" + p.name for p in self.blobs_dir.iterdir()})
            return removed, freed + blob_bytes

    def discard(self, digests: set[str]) -> None:
        """Remove those of these blobs that no image reaches (others stay): after a failed pull or load, or
        the blobs of an archive that none of its images uses."""
        with self._locked("gc.lock"):
            self._remove_unreferenced(digests)

    def _remove_unreferenced(self, candidates: set[str]) -> tuple[int, int]:
        live: set[str] = set()
        for tagged in self.tags():
            live |= self.referenced(tagged.descriptor)
        removed = freed = 0
        for digest in candidates - live:
            path = self.blob_path(digest)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
                removed += 1
        return removed, freed

    # -- internals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str, shared: bool = False) -> Iterator[None]:
        try:  # not through a link: planted in a layout an `--oci-dir` names, it would have us create its target
            fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            why = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise StoreError(f"cannot lock store {self.root}: {name}: {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_index(self) -> list[Descriptor]:
        try:
            return Index.parse(self.index_path.read_bytes()).manifests
        except OSError as exc:
            raise StoreError(f"cannot read {self.index_path}: {exc.strerror}") from None
        except StoreError as exc:
            raise StoreError(f"{self.index_path} is damaged: {exc}") from None

    def _write_index(self, entries: list[Descriptor]) -> None:
        entries = sorted(entries, key=lambda d: (d.annotations.get(mt.ANNOTATION_REF_NAME, ""), d.digest))
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [d.to_dict() for d in entries]}
        atomic.write_bytes(self.index_path, json.dumps(doc, indent=2).encode() + b"\n")

