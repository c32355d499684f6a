"""wasi:io for the HTTP host: streams, pollables and errors, as the guest's wasi:http and wasi:cli share them.

wasmtime's own wasi:io cannot be used beside a Python wasi:http (a body's stream must be the very resource
type `wasi:io/streams` exports), so the whole proxy world's I/O is here. Pollables are real: a stream's
is ready when its socket has bytes (or the stream has ended), a clock's when its time comes, and `poll`
sleeps in `poll` until one is, never past the request's deadline. An outgoing request's response is
waited for on a descriptor its thread signals (client.py). Output is bounded as wasi:io means it to
be: `check-write` allows what the stream's buffer has room for, 0 while a client that does not read keeps
it full; an output stream's pollable is ready when there is room again (the socket took some), and the
blocking calls wait for that, so the guest, not the host's memory, absorbs a slow reader.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Any

from .abi import HostTrap
from .table import Table

WRITE_BUDGET = 1 << 20  # what `check-write` allows at once: a flush sends it before more is taken


class StreamFailed(Exception):
    """The stream's peer failed (a connection reset, a body over its limit): `last-operation-failed`."""


class InputStream:
    """A source of bytes. `read` returns b"" when nothing is there yet (`block=False`), raises EOFError at
    the end, StreamFailed on error. `fileno` is what a pollable waits on (None: always ready)."""

    def read(self, size: int, block: bool) -> bytes:
        raise EOFError

    def ready(self) -> bool:
        return True

    def fileno(self) -> int | None:
        return None

    def before_wait(self) -> None:
        """Called before the guest sleeps on this stream: what it wrote meanwhile must go out first."""


class OutputStream:
    """A sink of bytes; `write` takes at most what `capacity` (`check-write`) allowed, without blocking."""

    def capacity(self) -> int:
        """Bytes a write may take now; 0 while the buffer is full. StreamFailed once the peer is gone."""
        return WRITE_BUDGET

    def write(self, data: bytes) -> None:
        raise StreamFailed("the stream is closed")

    def flush(self) -> None:
        """Start sending what is buffered, without waiting."""

    def flushed(self) -> bool:
        """Whether everything written has gone out (sending more of it, without waiting)."""
        return True

    def fileno(self) -> int | None:
        """What a wait for room selects on for writing (None: nothing to wait on)."""
        return None


class Console(OutputStream):
    """The guest's stdout or stderr: the host's own descriptor, as `wasmtime serve` passes them on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


class Pollable:
    """Ready when `at` (monotonic seconds) has come, when `stream` has something to read, when `sink` has
    room for a write, or when `ready()` says so; `fd`, if given, becomes readable when it may (a wait
    sleeps on it)."""

    def __init__(self, at: float | None = None, stream: InputStream | None = None, ready: Any = None,
                 sink: OutputStream | None = None, fd: int | None = None) -> None:
        self.at, self.stream, self._ready, self.sink, self.fd = at, stream, ready, sink, fd

    def fileno(self) -> int | None:
        return self.stream.fileno() if self.stream is not None else self.fd

    def ready(self) -> bool:
        try:
            if self._ready is not None:
                return bool(self._ready())
            if self.sink is not None:
                return self.sink.capacity() > 0
        except StreamFailed:
            return True  # the guest's next call on the stream says why
        if self.at is not None:
            return time.monotonic() >= self.at
        return self.stream is None or self.stream.ready()


class IoError:
    def __init__(self, message: str) -> None:
        self.message = message


def wait(table: Table, pollables: list[Pollable]) -> list[int]:
    """The indexes of the ready pollables, after sleeping until at least one is (never past the deadline)."""
    scope = table.scope
    while True:
        ready = [i for i, p in enumerate(pollables) if p.ready()]
        if ready:
            return ready
        timeout = scope.remaining()
        timers = [p.at for p in pollables if p.at is not None]
        if timers:
            timeout = min(timeout, max(0.0, min(timers) - time.monotonic()))
        readers = [fd for p in pollables if (fd := p.fileno()) is not None]
        writers = [fd for p in pollables if p.sink is not None and (fd := p.sink.fileno()) is not None]
        if readers or writers:
            for p in pollables:
                if p.stream is not None:
                    p.stream.before_wait()
            events: dict[int, int] = {}
            for fd in readers:
                events[fd] = events.get(fd, 0) | select.POLLIN
            for fd in writers:
                events[fd] = events.get(fd, 0) | select.POLLOUT
            waiting = select.poll()  # poll(2): the container seccomp allowlist has no select(2)
            for fd, mask in events.items():
                waiting.register(fd, mask)
            waiting.poll(max(0, int(timeout * 1000) + 1))
        else:
            time.sleep(timeout)


def stream_error(table: Table, exc: Exception) -> tuple[str, Any]:
    if isinstance(exc, StreamFailed):
        return ("err", ("last-operation-failed", table.add(IoError(str(exc)))))
    return ("err", ("closed", None))


def define(fns: Any, root: Any, table: Table, add_resource: Any, at: Callable[[str], str]) -> None:
    """Define wasi:io/error, poll and streams, each under the name `at` gives it (versions.py)."""
    with root.add_instance(at("wasi:io/error")) as error:
        add_resource(error, "error")
        fns.add(error, "[method]error.to-debug-string", lambda rep: table.get(rep, IoError).message)
    with root.add_instance(at("wasi:io/poll")) as poll:
        add_resource(poll, "pollable")
        fns.add(poll, "[method]pollable.ready", lambda rep: table.get(rep, Pollable).ready())
        fns.add(poll, "[method]pollable.block", lambda rep: wait(table, [table.get(rep, Pollable)]) and None)
        fns.add(poll, "poll", lambda reps: wait(table, [table.get(r, Pollable) for r in reps]))
    with root.add_instance(at("wasi:io/streams")) as streams:
        add_resource(streams, "input-stream")
        add_resource(streams, "output-stream")
        _define_input(fns, streams, table)
        _define_output(fns, streams, table)


def _define_input(fns: Any, streams: Any, table: Table) -> None:
    def read(rep: int, size: int, block: bool) -> tuple[str, Any]:
        stream = table.get(rep, InputStream)
        try:
            if block:
                table.scope.remaining()
            return ("ok", stream.read(min(size, 1 << 20), block))
        except (EOFError, StreamFailed) as exc:
            return stream_error(table, exc)

    def skip(rep: int, size: int, block: bool) -> tuple[str, Any]:
        result = read(rep, size, block)
        return ("ok", len(result[1])) if result[0] == "ok" else result

    fns.add(streams, "[method]input-stream.read", lambda rep, size: read(rep, size, False))
    fns.add(streams, "[method]input-stream.blocking-read", lambda rep, size: read(rep, size, True))
    fns.add(streams, "[method]input-stream.skip", lambda rep, size: skip(rep, size, False))
    fns.add(streams, "[method]input-stream.blocking-skip", lambda rep, size: skip(rep, size, True))
    fns.add(streams, "[method]input-stream.subscribe",
            lambda rep: table.add(Pollable(stream=table.get(rep, InputStream))))


def _define_output(fns: Any, streams: Any, table: Table) -> None:
    def call(rep: int, action: Any) -> tuple[str, Any]:
        stream = table.get(rep, OutputStream)
        try:
            return ("ok", action(stream))
        except (EOFError, StreamFailed, OSError) as exc:
            return stream_error(table, exc)

    def write(stream: OutputStream, size: int, data: Callable[[], bytes]) -> None:
        """A non-blocking write: `data` is made only once `size` is known to fit."""
        room = stream.capacity()
        if size > room:  # as in wasmtime: a guest that ignores check-write traps
            raise HostTrap(f"a write of {size} bytes, more than check-write allowed ({room})")
        stream.write(data())

    def blocking_write(stream: OutputStream, data: bytes) -> None:
        """Write all of `data`, waiting for room, then wait until it has gone out (up to the deadline)."""
        view = memoryview(data)
        while view:
            wait(table, [Pollable(sink=stream)])
            taken = min(len(view), stream.capacity())
            stream.write(bytes(view[:taken]))
            view = view[taken:]
        blocking_flush(stream)

    def blocking_zeroes(stream: OutputStream, size: int) -> None:
        """All `size` zeroes, made a budget's worth at a time (a guest may ask for 2**64)."""
        while size:
            piece = min(size, WRITE_BUDGET)
            blocking_write(stream, bytes(piece))
            size -= piece

    def blocking_flush(stream: OutputStream) -> None:
        stream.flush()
        wait(table, [Pollable(ready=stream.flushed, sink=stream)])

    def splice(rep: int, source: int, size: int, block: bool) -> tuple[str, Any]:
        sink = table.get(rep, OutputStream)
        try:
            if block:
                wait(table, [Pollable(sink=sink)])
            data = table.get(source, InputStream).read(min(size, sink.capacity()), block)
        except (EOFError, StreamFailed) as exc:
            return stream_error(table, exc)
        result = call(rep, lambda s: s.write(data))
        return ("ok", len(data)) if result[0] == "ok" else result

    fns.add(streams, "[method]output-stream.check-write", lambda rep: call(rep, lambda s: s.capacity()))
    fns.add(streams, "[method]output-stream.write",
            lambda rep, data: call(rep, lambda s: write(s, len(data), lambda: data)))
    fns.add(streams, "[method]output-stream.blocking-write-and-flush",
            lambda rep, data: call(rep, lambda s: blocking_write(s, data)))
    fns.add(streams, "[method]output-stream.flush", lambda rep: call(rep, lambda s: s.flush()))
    fns.add(streams, "[method]output-stream.blocking-flush", lambda rep: call(rep, blocking_flush))
    fns.add(streams, "[method]output-stream.subscribe",
            lambda rep: table.add(Pollable(sink=table.get(rep, OutputStream))))
    fns.add(streams, "[method]output-stream.write-zeroes",
            lambda rep, n: call(rep, lambda s: write(s, n, lambda: bytes(n))))
    fns.add(streams, "[method]output-stream.blocking-write-zeroes-and-flush",
            lambda rep, n: call(rep, lambda s: blocking_zeroes(s, n)))
    fns.add(streams, "[method]output-stream.splice", lambda rep, src, n: splice(rep, src, n, False))
    fns.add(streams, "[method]output-stream.blocking-splice", lambda rep, src, n: splice(rep, src, n, True))
