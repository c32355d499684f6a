"""Compiled code kept between runs, so the second run of an image does not compile.

Entries live in `$WASMCTR_HOME/cache/compiled/`, named by a key over the wasm digest, the wasmtime
version, the host architecture and the engine settings: `KEY.cwasm` is wasmtime's serialised code as it
is, loaded by mapping the file (a 35 MB Python component costs no copy), and `KEY.sha256` the digest of
its bytes, recorded when we wrote it. Deserialising compiled code trusts it as machine code, so an entry
is only loaded if the file hashes to that digest, and the very file descriptor that was checked is the
one loaded; a damaged or foreign entry is discarded and rebuilt, never loaded, never a crash.

An entry is only ever a miss, never a failure: one wasmtime refuses to load (written by another
wasmtime version; the key names the version, so only a copied or planted file gets there) is discarded
and compiled again by the executor, as a damaged one is (wasmtime #11685 is that bug in wasmtime's own
cache). Keys name every setting that changes generated code (`EngineSettings.cache_text`), since
wasmtime loads code compiled at another optimisation level without a word.

The cache is bounded, so that a node running image after image does not fill its disk: past
`WASMCTR_CACHE_MAX` (a size as `-m` takes it, `512m`, `4g`; default 2g) the least recently used entries
are removed when a new one is written. A hit marks its entry used (its atime), and an evicted entry only
costs a compile. `survey` is the one reading of its state (the node doctor reports it), `clear` empties
it (`wasmctr image prune --cache`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from wasmctr.errors import UsageError
from wasmctr.image import atomic
from wasmctr.record import record
from wasmctr.running.units import parse_size

MAX_VARIABLE = "WASMCTR_CACHE_MAX"
DEFAULT_MAX = "2g"


@record(frozen=True)
class Survey:
    """The cache as it stands: its entries, their bytes, the keys of those that do not hash to their
    recorded digest (each recompiled at its next use), and the bound."""

    entries: int
    size: int
    damaged: tuple[str, ...]
    max_bytes: int


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
        """`max_bytes` default: `WASMCTR_CACHE_MAX`, which a bad value of makes a UsageError (not ignored)."""
        self.directory = directory
        if max_bytes is None:
            text = os.environ.get(MAX_VARIABLE) or DEFAULT_MAX
            try:
                max_bytes = parse_size(text)
            except UsageError:
                raise UsageError(f"{MAX_VARIABLE}={text!r}: expected a size such as 512m or 4g") from None
        self.max_bytes = max_bytes

    def path(self, cache_key: str) -> Path:
        return self.directory / f"{cache_key}.cwasm"

    def _digest_path(self, cache_key: str) -> Path:
        return self.directory / f"{cache_key}.sha256"

    @contextlib.contextmanager
    def entry(self, cache_key: str) -> Iterator[str | None]:
        """The path to load an entry from (`/proc/self/fd/N` of the file that was checked), while the
        block runs; None if there is no entry or its bytes do not hash to its digest (then it is removed)."""
        try:
            fd = os.open(self.path(cache_key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield None
            return
        try:
            if self._intact(cache_key, fd):
                with contextlib.suppress(OSError):  # used: set its atime (mtime stays when it was compiled)
                    os.utime(fd, ns=(time.time_ns(), os.fstat(fd).st_mtime_ns))
                yield f"/proc/self/fd/{fd}"
                return
        finally:
            os.close(fd)
        self.discard(cache_key)
        yield None

    def survey(self) -> Survey:
        """Every entry, checked as a load checks it."""
        entries = sorted(self.directory.glob("*.cwasm")) if self.directory.is_dir() else []
        size, damaged = 0, []
        for path in entries:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # evicted meanwhile
            try:
                size += os.fstat(fd).st_size
                if not self._intact(path.stem, fd):
                    damaged.append(path.stem)
            finally:
                os.close(fd)
        return Survey(len(entries), size, tuple(damaged), self.max_bytes)

    def clear(self) -> tuple[int, int]:
        """Remove every entry, and what interrupted writes left; (entries removed, bytes freed). A guest
        running from a removed entry keeps its mapping; the next run compiles again."""
        removed = freed = 0
        if not self.directory.is_dir():
            return 0, 0
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                size = path.lstat().st_size
                path.unlink()
                freed += size
                removed += path.suffix == ".cwasm"
        return removed, freed

    def _intact(self, cache_key: str, fd: int) -> bool:
        try:
            recorded = self._digest_path(cache_key).read_text().strip()
            if not os.fstat(fd).st_size:
                return False
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                return hashlib.sha256(mapped).hexdigest() == recorded
        except (OSError, ValueError):
            return False

    def save(self, cache_key: str, serialized: bytes) -> None:
        with contextlib.suppress(OSError):  # a read-only store still runs, just without a cache
            self.directory.mkdir(parents=True, exist_ok=True)
            # the digest first: an entry without its digest, or with another's, is never loaded
            with atomic.open_output(self._digest_path(cache_key)) as f:
                f.write(hashlib.sha256(serialized).hexdigest().encode() + b"\n")
            with atomic.open_output(self.path(cache_key)) as f:
                f.write(serialized)
            self._evict(keep=self.path(cache_key))

    def discard(self, cache_key: str) -> None:
        self.path(cache_key).unlink(missing_ok=True)
        self._digest_path(cache_key).unlink(missing_ok=True)

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
                self.discard(path.stem)
                total -= size
