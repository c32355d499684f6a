"""The one extractor: image layers applied to a directory, safe by construction.

Layers come from registries and archives, so every member is hostile. Each member's path is cleaned as
containerd's archive package cleans it (`..` stops at `/`, absolute names are relative to the root),
then its parent directory is opened with `inroot.open_in_root`, which follows symlinks only within the
root; the member itself is created with `*at` calls on that directory fd and never followed. So a
whiteout, a hard link, a file written through a symlinked parent or a chain of links cannot touch
anything outside the root, on any Python version: tarfile's own extraction and its filters are not used.

What an image may hold is what `wasmctr build` can make: directories, regular files, symlinks (their
target is data, resolved in the root when used) and hard links to files already in the root. Device
nodes and FIFOs are refused; setuid and setgid bits are dropped (`layer.safe_mode`). Whiteouts
(`.wh.NAME`, `.wh..wh..opq`) hide what lower layers put there, as the OCI image-spec says, and never
what the same layer adds.

`unpack_image` is the rootfs cache `wasmctr run` uses: a manifest's layers unpacked once into
`$WASMCTR_HOME/rootfs/<manifest hex>`, staged beside it and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from wasmctr.errors import LayerError
from wasmctr.image import stored
from wasmctr.image.atomic import fsync_dir
from wasmctr.image.inroot import DIRECTORY, fd_path, open_in_root
from wasmctr.image.store import Store
from wasmctr.layers.layer import safe_mode

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_NAME = 4096  # PATH_MAX: longer member names or link targets cannot be created anyway
MAX_DEPTH = 256  # directories below the root: deeper trees could not be removed again (rmtree recurses)
CHUNK = 1 << 20


def unpack_image(store: Store, image: stored.Image) -> Path:
    """The image's layers unpacked into a directory of the store (once per manifest digest)."""
    from wasmctr.layers.layer import open_layer

    target = store.rootfs_path(image.descriptor.digest)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # private, as the blobs are: each rootfs's `/` is 0755 below for a --user guest (whose preopen is
    # opened before it becomes that user), so this directory is what keeps other users out of them
    target.parent.chmod(0o700)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        staging.chmod(0o755)  # the rootfs's `/`, as a snapshotter makes it: mkdtemp's 0700 shut out `--user`
        for layer in image.manifest.layers:
            with open_layer(store, layer.digest) as tar:
                apply_layer(tar, staging, layer.digest)
        os.rename(staging, target)
        fsync_dir(target.parent)
    except FileExistsError:
        shutil.rmtree(staging, ignore_errors=True)  # another run unpacked it first
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LayerError(f"cannot unpack the image's rootfs: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def apply_layer(tar: tarfile.TarFile, root: Path, name: str = "layer") -> None:
    """Apply one layer's tar stream on top of the directory `root`."""
    root_fd = os.open(root, DIRECTORY | os.O_CLOEXEC)
    root_path = _fd_path(root_fd)
    written: set[str] = set()  # paths this layer created: whiteouts of the same layer leave them alone
    try:
        for member in tar:
            try:
                path = _clean(member.name)
                if path == "/":
                    continue
                _apply_member(tar, member, root_fd, root_path, path, written)
            except (OSError, ValueError, LayerError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise LayerError(f"{name}: cannot unpack {member.name[:200]!r}: {reason}") from None
    finally:
        os.close(root_fd)


def _clean(member_name: str) -> str:
    if len(member_name) > MAX_NAME or "\0" in member_name:
        raise LayerError(f"a member name of {len(member_name)} characters is not a valid path")
    return posixpath.normpath("/" + member_name.lstrip("/"))


def _apply_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int, root_path: str, path: str,
                  written: set[str]) -> None:
    parent, base = posixpath.split(path)
    if base.startswith(WHITEOUT):
        _whiteout(root_fd, parent, base, written)
        return
    if member.ischr() or member.isblk() or member.isfifo():
        raise LayerError("a device or FIFO; an image may hold only files, directories and links")
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        raise LayerError(f"unsupported tar entry type {member.type!r}")
    parent_fd = _make_dirs(root_fd, root_path, parent, 1 if member.isdir() else 0)
    try:
        existing = _lstat(base, parent_fd)
        if member.isdir() and existing is not None and stat.S_ISDIR(existing.st_mode):
            os.chmod(base, safe_mode(member.mode, True), dir_fd=parent_fd)
        else:
            if existing is not None:
                _remove(parent_fd, base, existing)
            _create(tar, member, root_fd, parent_fd, base)
        written.add(path)
    finally:
        os.close(parent_fd)


def _create(tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int, parent_fd: int, base: str) -> None:
    if member.isdir():
        os.mkdir(base, safe_mode(member.mode, True), dir_fd=parent_fd)
        os.chmod(base, safe_mode(member.mode, True), dir_fd=parent_fd)  # mkdir's mode is masked by the umask
    elif member.issym():
        if not member.linkname or len(member.linkname) > MAX_NAME:
            raise LayerError("a symlink with an empty or over-long target")
        os.symlink(member.linkname, base, dir_fd=parent_fd)
    elif member.islnk():
        _hard_link(member, root_fd, parent_fd, base)
    else:
        _write_file(tar, member, parent_fd, base)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, base: str) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has a data stream
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=parent_fd)
    try:
        while chunk := source.read(CHUNK):
            os.write(fd, chunk)
        os.fchmod(fd, safe_mode(member.mode, False))
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _hard_link(member: tarfile.TarInfo, root_fd: int, parent_fd: int, base: str) -> None:
    """A hard link to an entry already in the root: its parent resolved in the root, the entry itself
    taken as it is (a link to a symlink links the symlink), never a directory."""
    target = _clean(member.linkname)
    target_parent, target_base = posixpath.split(target)
    try:
        target_fd = open_in_root(root_fd, target_parent)
    except FileNotFoundError:
        raise LayerError(f"a hard link to {member.linkname[:200]!r}, which is not in the image") from None
    try:
        found = _lstat(target_base, target_fd)
        if found is None or stat.S_ISDIR(found.st_mode) or not target_base or target_base in (".", ".."):
            raise LayerError(f"a hard link to {member.linkname[:200]!r}, which is not a file in the image")
        os.link(target_base, base, src_dir_fd=target_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(target_fd)


def _whiteout(root_fd: int, parent: str, base: str, written: set[str]) -> None:
    if base[len(WHITEOUT):] in ("", ".", ".."):
        raise LayerError("an invalid whiteout")
    try:
        parent_fd = open_in_root(root_fd, parent)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing below to hide
    try:
        if base == OPAQUE:
            for child in os.listdir(parent_fd):
                if posixpath.join(parent, child) not in written:
                    _remove(parent_fd, child, os.stat(child, dir_fd=parent_fd, follow_symlinks=False))
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply
        victim = base[len(WHITEOUT):]
        found = _lstat(victim, parent_fd)
        if found is not None and posixpath.join(parent, victim) not in written:
            _remove(parent_fd, victim, found)
    finally:
        os.close(parent_fd)


def _make_dirs(root_fd: int, root_path: str, path: str, below: int) -> int:
    """An fd for directory `path` (clean, absolute) in the root, creating missing directories (0755) as
    containerd does; `below` more levels are about to go under it, and no directory may end up deeper
    than MAX_DEPTH. A name under a dangling symlink is refused (mkdir does not follow the link)."""
    missing: list[str] = []
    while True:
        try:
            fd = open_in_root(root_fd, path)
            break
        except FileNotFoundError:
            path, base = posixpath.split(path)
            missing.append(base)
    try:
        depth = len(_fd_path(fd)[len(root_path):].split("/")) - 1
        if depth + len(missing) + below > MAX_DEPTH:
            raise LayerError(f"directories nest deeper than {MAX_DEPTH} levels")
        for base in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o755, dir_fd=fd)
            child = os.open(base, DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fd_path(fd: int) -> str:
    """Where an open directory is; a path too long for /proc to give is too deep."""
    try:
        return fd_path(fd)
    except OSError as exc:
        raise LayerError(f"directories nest too deep ({exc.strerror})") from None


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(parent_fd: int, name: str, found: os.stat_result) -> None:
    if stat.S_ISDIR(found.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)  # fd-based: never follows a link inside the tree
    else:
        os.unlink(name, dir_fd=parent_fd)
