"""`subprocess.run`'s stdio arguments, for a guest: where its stdin comes from and its output goes.

stdout and stderr each take what `subprocess.run` takes: None (ours), PIPE (captured and returned),
DEVNULL, STDOUT (stderr only: wherever stdout goes), a file descriptor, a file object, or (beyond
subprocess) a path, created or truncated. A file object with a descriptor is written through the
descriptor, as a child process would write it; one without (io.StringIO, io.BytesIO) gets the bytes
as they come, decoded for a text stream. stdin is closed unless given, as `docker run` without `-i`
leaves it: True (ours), a path, a descriptor, a file object, or `input` bytes.

A guest runs either on a thread of this process or in a child interpreter (`Output.popen`,
`Input.popen`: what `subprocess.Popen` takes); both give the caller the same result. On a thread, wasmtime
is given paths (`wasi_paths`, `Input.path`): a file, or the write end of a pipe of ours (`Pumps`) that a
thread of ours drains into the target as the guest writes. wasmtime's own output callbacks are not
used: its worker threads may still call into Python while the interpreter exits, and panic.
"""

from __future__ import annotations

import codecs
import io
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

from wasmctr.errors import UsageError

PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT
SPECIAL = {PIPE: "PIPE", DEVNULL: "DEVNULL", STDOUT: "STDOUT"}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fileno(target: Any) -> int | None:
    try:
        return int(target.fileno())
    except (AttributeError, OSError, ValueError):  # io.StringIO raises io.UnsupportedOperation (an OSError)
        return None


class Output:
    """Where one of the guest's output streams goes."""

    def __init__(self, target: Any, name: str) -> None:
        if isinstance(target, bool) or (isinstance(target, int) and target < 0 and target not in SPECIAL):
            raise UsageError(f"{name}={target!r}: expected None, PIPE, DEVNULL, a descriptor, a file object or a path")
        if target == STDOUT and name != "stderr":
            raise UsageError(f"{name}=STDOUT: only stderr can go where stdout goes")
        self.target = target
        self.name = name
        self.captured: bytearray | None = bytearray() if target == PIPE else None
        self._opened: IO[bytes] | None = None

    def writer(self) -> Callable[[bytes], object]:
        """A function that delivers each write of the guest to the target (not None or STDOUT)."""
        target = self.target
        if target == PIPE:
            assert self.captured is not None
            return self.captured.extend
        if target == DEVNULL:
            return lambda data: None
        if isinstance(target, int):
            return partial(_write_all, target)
        if isinstance(target, str | os.PathLike):
            self._opened = open(target, "wb")  # noqa: SIM115 - closed by `close`, after the run
            return partial(_write_all, self._opened.fileno())
        fd = _fileno(target)
        if fd is not None:
            target.flush()  # what the caller wrote before goes first
            return partial(_write_all, fd)
        if isinstance(target, io.TextIOBase):
            decoder = codecs.getincrementaldecoder(target.encoding or "utf-8")("replace")
            return lambda data: target.write(decoder.decode(data))
        return target.write  # type: ignore[no-any-return]

    def popen(self) -> Any:
        """For a guest in a child process: what `subprocess.Popen` takes for this stream."""
        target = self.target
        if target is None or isinstance(target, int):
            return target
        if isinstance(target, str | os.PathLike):
            self._opened = open(target, "wb")  # noqa: SIM115 - closed by `close`, after the run
            return self._opened
        if _fileno(target) is not None:
            target.flush()
            return target
        return PIPE  # an object with no descriptor: handed the bytes by `deliver`

    def deliver(self, data: bytes | None) -> None:
        """For a guest in a child process: what came back on a pipe `popen` asked for."""
        if data is None:
            return
        if self.captured is not None:
            self.captured.extend(data)
        elif self.target != PIPE:
            self.writer()(data)

    def wasi_path(self, pumps: Pumps, shared: bool = False) -> str | None:
        """For a guest on a thread: the path wasmtime opens for this stream, or None to inherit ours. A
        path target is opened by wasmtime itself unless another stream shares it (`shared`)."""
        target = self.target
        if target is None:
            return None
        if target == DEVNULL:
            return os.devnull
        if isinstance(target, str | os.PathLike) and not shared:
            return os.fspath(target)
        return pumps.path_for(self.writer())

    def result(self, decode: Callable[[bytes], str] | None) -> bytes | str | None:
        if self.captured is None:
            return None
        return decode(bytes(self.captured)) if decode else bytes(self.captured)

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()


def wasi_paths(stdout: Output, stderr: Output, pumps: Pumps) -> tuple[str | None, str | None]:
    """The paths wasmtime opens for the guest's stdout and stderr (None: ours). stderr=STDOUT shares
    stdout's pipe: two opens of one file would each start at its beginning and overwrite each other."""
    if stderr.target != STDOUT:
        return stdout.wasi_path(pumps), stderr.wasi_path(pumps)
    path = stdout.wasi_path(pumps, shared=True)
    return path, path if path is not None else pumps.path_for(partial(_write_all, 1))


class Pumps:
    """Pipes that carry the guest's output to its targets, each drained by a thread of ours. wasmtime
    opens a pipe's write end by its /proc/self/fd path (so a forked child that runs the guest reaches it
    too); `finish`, once the guest's store is gone, closes ours and waits for what is left to arrive."""

    def __init__(self) -> None:
        self._pipes: list[tuple[int, threading.Thread]] = []

    def path_for(self, write: Callable[[bytes], object]) -> str:
        read_end, write_end = os.pipe()
        drain = threading.Thread(target=_drain, args=(read_end, write), name="wasmctr-output", daemon=True)
        drain.start()
        self._pipes.append((write_end, drain))
        return f"/proc/self/fd/{write_end}"

    def finish(self, timeout: float) -> None:
        """Close our write ends and wait up to `timeout` for each pipe's last bytes: a guest left blocked
        in a host call (stopped, not ended) still holds its end, and is not waited for."""
        for write_end, _ in self._pipes:
            os.close(write_end)
        for _, drain in self._pipes:
            drain.join(timeout)
        self._pipes.clear()


def _drain(read_end: int, write: Callable[[bytes], object]) -> None:
    delivering = True
    with open(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            if delivering:
                try:
                    write(chunk)
                except Exception:  # noqa: BLE001 - a target that fails (closed pipe): the rest is dropped
                    delivering = False


class Input:
    """Where the guest's stdin comes from."""

    def __init__(self, stdin: Any, data: bytes | str | None, encoding: str | None) -> None:
        if data is not None and stdin not in (None, False):
            raise UsageError("stdin and input cannot both be given")
        if isinstance(data, str):
            data = data.encode(encoding or "utf-8")
        if isinstance(stdin, int) and not isinstance(stdin, bool) and stdin < 0 and stdin != DEVNULL:
            raise UsageError(f"stdin={SPECIAL.get(stdin, stdin)}: expected True, DEVNULL, a descriptor, a file "
                             "object, a path, or input=")
        self.stdin = stdin
        self.data = data
        self.fd: int | None = None  # a descriptor, given or a file object's, to read from
        if data is None and stdin not in (None, False, True, DEVNULL) and not isinstance(stdin, str | os.PathLike):
            self.fd = stdin if isinstance(stdin, int) else _fileno(stdin)
            if self.fd is None:
                raise UsageError("stdin: a file object needs a file descriptor; give its bytes as input=")

    def path(self, cleanup: list[Path]) -> bool | str:
        """For a guest on a thread: closed (False), ours (True), or a path the engine opens."""
        stdin = self.stdin
        if self.data is not None:
            scratch = Path(tempfile.mkdtemp(prefix="wasmctr-input-"))
            cleanup.append(scratch)
            (scratch / "input").write_bytes(self.data)
            return str(scratch / "input")
        if stdin in (None, False, DEVNULL):
            return False
        if stdin is True:
            return True
        if isinstance(stdin, str | os.PathLike):
            return str(stdin)
        return f"/proc/self/fd/{self.fd}"

    def popen(self) -> tuple[bool | str, Any]:
        """For a guest in a child process: what its spec says (closed, ours or a path) and what Popen takes."""
        stdin = self.stdin
        if self.data is not None:
            return True, PIPE
        if stdin in (None, False, DEVNULL):
            return False, DEVNULL
        if stdin is True:
            return True, None
        if isinstance(stdin, str | os.PathLike):
            return str(stdin), DEVNULL
        return True, stdin


def decoder(text: bool, encoding: str | None, errors: str | None) -> Callable[[bytes], str] | None:
    """How captured bytes become str, as `subprocess.run(text=True)` decodes them (newlines translated)."""
    if not (text or encoding or errors):
        return None
    return lambda data: io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors=errors).read()
