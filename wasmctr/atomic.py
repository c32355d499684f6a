"""The one way wasmctr writes a file: whole or not at all, and never in place of what is not ours.

A new path or a regular file is written to a temporary file beside it, fsynced, and renamed over it
(then the directory is fsynced), so a reader sees the old content or the new, never half of each, and
a crash leaves no torn file. Anything else the user names is written *into*, as a shell redirection
would: `-` is standard output, a FIFO or character device (`/dev/null`, a pipe) is opened as it is,
and a symlink is followed to what it points at. Renaming over those would replace a device node or a
link that other programs rely on. A directory is refused.

Imports only the standard library (the runtime CLI writes its state through here on every call).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def open_output(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary stream to write `path` through; committed when the block ends without an exception."""
    if os.fspath(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise IsADirectoryError(21, "Is a directory", os.fspath(path))
    if found is not None and not stat.S_ISREG(found.st_mode):
        with open(os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC), "wb") as stream:  # FIFO, device, link
            yield stream
        return
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # name what the user asked for, not our temp file
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
    try:
        with open(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    with open_output(path, mode) as stream:
        stream.write(data)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename into `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
