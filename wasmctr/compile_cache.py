"""Compiled code kept between runs, so the second run of an image does not compile.

Entries live in `$WASMCTR_HOME/cache/compiled/`, named by a key over the wasm digest, the wasmtime
version, the host architecture and the engine settings. Deserialising compiled code trusts it as
machine code, so an entry is only loaded if its bytes hash to the digest recorded in its header when
we wrote it; a damaged or foreign entry is discarded and rebuilt, never loaded, never a crash.

The cache is bounded, so that a node running image after image does not fill its disk: past
`WASMCTR_COMPILE_CACHE_MAX_MIB` (default 2048) the least recently used entries are removed when a new
one is written. A hit marks its entry used (its atime), and an evicted entry only costs a compile.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import time
from pathlib import Path

from . import atomic

MAGIC = b"wasmctr-cwasm-1\n"
DIGEST_SIZE = 32
DEFAULT_MAX_MIB = 2048


@functools.cache
def _wasmtime_version() -> str:
    """The installed wasmtime's version, from its dist-info directory's name: importlib.metadata would
    find the same name but costs ~15 ms of imports at every start."""
    import wasmtime

    site = Path(wasmtime.__file__).parent.parent
    names = sorted(p.name.removeprefix("wasmtime-").removesuffix(".dist-info")
                   for p in site.glob("wasmtime-*.dist-info"))
    return "+".join(names) or "unknown"


def key(wasm_digest: str, settings: str) -> str:
    material = "|".join([wasm_digest, _wasmtime_version(), platform.machine(), settings])
    return hashlib.sha256(material.encode()).hexdigest()


class CompileCache:
    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        self.directory = directory
        if max_bytes is None:
            try:
                max_bytes = int(os.environ.get("WASMCTR_COMPILE_CACHE_MAX_MIB", DEFAULT_MAX_MIB)) << 20
            except ValueError:
                max_bytes = DEFAULT_MAX_MIB << 20
        self.max_bytes = max_bytes

    def path(self, cache_key: str) -> Path:
        return self.directory / f"{cache_key}.cwasm"

    def load(self, cache_key: str) -> bytes | None:
        """The serialised code of an entry whose digest checks out; a bad entry is removed."""
        path = self.path(cache_key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        head = len(MAGIC) + DIGEST_SIZE
        if data[: len(MAGIC)] == MAGIC and hashlib.sha256(data[head:]).digest() == data[len(MAGIC):head]:
            with contextlib.suppress(OSError):  # used: set its atime (mtime stays when it was compiled)
                os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
            return data[head:]
        self.discard(cache_key)
        return None

    def save(self, cache_key: str, serialized: bytes) -> None:
        with contextlib.suppress(OSError):  # a read-only store still runs, just without a cache
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic.open_output(self.path(cache_key)) as f:
                f.write(MAGIC + hashlib.sha256(serialized).digest() + serialized)
            self._evict(keep=self.path(cache_key))

    def discard(self, cache_key: str) -> None:
        self.path(cache_key).unlink(missing_ok=True)

    def _evict(self, keep: Path) -> None:
        """Remove least recently used entries until the cache fits `max_bytes` (`keep` stays)."""
        entries = []
        for path in self.directory.glob("*.cwasm"):
            with contextlib.suppress(OSError):
                st = path.stat()
                entries.append((st.st_atime_ns, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                return
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
