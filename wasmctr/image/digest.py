"""Content digests, computed while bytes stream past: nothing here holds a whole blob in memory."""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Protocol

CHUNK = 1 << 20


class Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class HashingWriter:
    """A write-through file object that counts and sha256-hashes what passes through it."""

    def __init__(self, sink: Writable | None = None) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)

    def absorb(self, stream: BinaryIO) -> None:
        """Count and hash the rest of `stream` without writing it: what a resumed download already has."""
        while chunk := stream.read(CHUNK):
            self._hash.update(chunk)
            self.size += len(chunk)

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def of_stream(stream: BinaryIO) -> tuple[str, int]:
    """Digest and size of the rest of a stream, read in chunks."""
    writer = HashingWriter()
    while chunk := stream.read(CHUNK):
        writer.write(chunk)
    return writer.digest, writer.size

