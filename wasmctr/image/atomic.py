"""The one way wasmctr writes a file: whole or not at all, and never through a link someone planted.

A new path, a regular file or a symbolic link is replaced: the content goes to a temporary file beside
it (created with O_EXCL and O_NOFOLLOW), is fsynced and renamed over the name (then the directory is
fsynced), so a reader sees the old content or the new, never half of each, a crash leaves no torn file,
and a link another user made in a shared directory (`out.tar -> /etc/shadow`) is replaced, as
`docker save -o` replaces it, never written through. `-` is standard output, and so is a link whose
text is `/proc/self/fd/1` (`/dev/stdout`; `/proc/self/fd/2` is standard error): the stream itself, so
that `-o /dev/stdout` does not replace the node's link.

A FIFO or character device (`/dev/null`, a pipe) is written *into*, as a shell redirection would:
renaming over it would replace a node that other programs rely on. It is opened with O_NOFOLLOW, and
`fstat` must find the very node `lstat` saw, so swapping it for a link or a file between the two is
refused, not followed. A private output (`devices=False`: credentials) never goes into a node someone
else may read from: it replaces those too. A directory, a block device or a socket is refused.

Imports only the standard library, nothing of wasmctr (pyproject.toml's `standalone` import contract): the
runtime CLI writes its state through here on every call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO

# the text of the links /dev/stdout and /dev/stderr: this process's own stream, not a path to follow
STANDARD_STREAMS = {"/proc/self/fd/1": "stdout", "/proc/self/fd/2": "stderr"}


@contextlib.contextmanager
def open_output(path: str | os.PathLike[str], mode: int = 0o644, *, devices: bool = True) -> Iterator[BinaryIO]:
    """A binary stream to write `path` through; committed when the block ends without an exception.
    `devices=False` replaces a FIFO or character device instead of writing into it."""
    stream = standard_stream(path)
    if stream is not None:
        yield stream
        stream.flush()
        return
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    kind = stat.S_IFMT(found.st_mode) if found is not None else stat.S_IFREG
    if kind == stat.S_IFDIR:
        raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(path))
    if kind in (stat.S_IFBLK, stat.S_IFSOCK):
        raise OSError(errno.EINVAL, "not a file, FIFO or character device to write to", os.fspath(path))
    if found is not None and devices and kind in (stat.S_IFIFO, stat.S_IFCHR):
        with open(_open_node(path, found), "wb") as node:
            yield node
        return
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # name what the user asked for, not our temp file
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
    try:
        with open(fd, "wb") as new:
            yield new
            new.flush()
            os.fchmod(new.fileno(), mode)
            os.fsync(new.fileno())
        os.replace(tmp, path)  # replaces a link itself, never what it points at
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def standard_stream(path: str | os.PathLike[str]) -> BinaryIO | None:
    """Our stdout for `-`; our stdout or stderr for a link that names it (`/dev/stdout`); else None."""
    if os.fspath(path) == "-":
        return sys.stdout.buffer
    try:
        text = os.readlink(path)
    except OSError:
        return None
    name = STANDARD_STREAMS.get(text)
    return getattr(sys, name).buffer if name else None


def _open_node(path: str | os.PathLike[str], found: os.stat_result) -> int:
    """Open the FIFO or device `lstat` found, for writing: not through a link (O_NOFOLLOW), not
    truncating, and only if it is still that node once open."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, stat.S_IFMT(opened.st_mode)) != \
            (found.st_dev, found.st_ino, stat.S_IFMT(found.st_mode)):
        os.close(fd)
        raise OSError(errno.EAGAIN, "was replaced while being opened; not written", os.fspath(path))
    return fd


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, devices: bool = True) -> None:
    with open_output(path, mode, devices=devices) as stream:
        stream.write(data)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename into `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
