"""A container's stdio as containerd hands it to a shim: FIFO paths, `file://` URIs and `binary://` URIs.

A `binary://PATH?k=v` URI names a logging binary that the shim starts, as containerd's own runc shim
does: the query becomes its arguments (`k v`), its environment is `CONTAINER_ID` and
`CONTAINER_NAMESPACE`, the guest's stdout and stderr arrive as the read ends of two pipes on fds 3 and
4, and it closes (or writes to) fd 5 when it is ready to read. Loggers written for containerd
(nerdctl's, containerd's `logging` package) therefore work unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import stat
import time
import urllib.parse
from dataclasses import dataclass

from wasmctr.errors import WasmctrError

READY_TIMEOUT = 10.0  # containerd's own bound on a logging binary's start
STOP_TIMEOUT = 5.0
FIFO_READER_SECONDS = 10.0  # as long as a logging binary may take to start: ctr opens its end meanwhile


def is_binary_uri(uri: str) -> bool:
    return uri.startswith("binary://")


def redirect(path: str, fd: int, mode: int) -> None:
    """Put a stdio path on fd 0, 1 or 2 (see `open_stdio`)."""
    move(open_stdio(path, mode), fd)


def open_stdio(path: str, mode: int) -> int:
    """Open a stdio path (FIFO, file, or `file://` URI) for reading (stdin) or writing; /dev/null when
    there is none.

    A FIFO for stdin is opened non-blocking (nobody may ever write to it without `-i`) and then made
    blocking, so that the guest reads what arrives and sees EOF when containerd closes its end. A FIFO
    for output waits for its reader (ctr opens its end while Create is under way) at most
    `FIFO_READER_SECONDS`, then fails with ENXIO: a client that gave up on its Create leaves no reader, and
    a blocking open would wait forever, and Create with it.
    """
    if not path:
        return os.open(os.devnull, os.O_RDWR)
    path = path.removeprefix("file://")
    if mode == os.O_RDONLY:
        target = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(target, True)
        return target
    if _is_fifo(path):
        return _open_fifo_for_writing(path, FIFO_READER_SECONDS)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _open_fifo_for_writing(path: str, wait: float) -> int:
    """The FIFO opened for writing, blocking, once it has a reader; OSError(ENXIO) if none comes in `wait`
    seconds. (A non-blocking open is the only one that does not wait; it is retried.)"""
    deadline = time.monotonic() + wait
    while True:
        try:
            target = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
            continue
        os.set_blocking(target, True)
        return target


def move(source: int, fd: int) -> None:
    os.dup2(source, fd)
    if source != fd:
        os.close(source)


@dataclass
class BinaryLogger:
    """A running logging binary and the write ends of its stdout and stderr pipes, which the container
    process takes over; the shim keeps neither, so the logger sees EOF when the guest is gone."""

    pid: int
    stdout: int
    stderr: int

    @classmethod
    def start(cls, uri: str, container_id: str, namespace: str) -> BinaryLogger:
        parsed = urllib.parse.urlsplit(uri)
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith("/"):
            raise WasmctrError(f"log URI {uri!r}: the logging binary must be an absolute path")
        argv = [path]
        for key, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
            argv += [key, value] if value else [key]
        env = {"CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ready_r, ready_w = os.pipe()
        # above any fd the dup2s below write to, so that none of them overwrites a source
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (out_r, err_r, ready_w)]
        try:
            pid = os.posix_spawn(path, argv, env, file_actions=[
                (os.POSIX_SPAWN_DUP2, source, target) for target, source in enumerate(sources, start=3)])
        except OSError as exc:
            for fd in (out_w, err_w, ready_r):
                os.close(fd)
            raise WasmctrError(f"logging binary {path}: {exc.strerror}") from None
        finally:
            for fd in (*sources, out_r, err_r, ready_w):
                os.close(fd)
        logger = cls(pid, out_w, err_w)
        try:
            poller = select.poll()  # not select(): a busy shim's fds pass FD_SETSIZE
            poller.register(ready_r, select.POLLIN)
            if not poller.poll(READY_TIMEOUT * 1000):
                raise WasmctrError(f"logging binary {path} was not ready within {READY_TIMEOUT:.0f} s")
        except BaseException:
            logger.release()
            logger.stop()
            raise
        finally:
            os.close(ready_r)
        return logger

    def release(self) -> None:
        """Close the shim's copies of the write ends (after the container process has its own); once
        only, since a second close could hit a number reused for something else."""
        for fd in (self.stdout, self.stderr):
            if fd >= 0:
                os.close(fd)
        self.stdout = self.stderr = -1

    def stop(self) -> None:
        """SIGTERM, so it can flush; SIGKILL if it is still there after STOP_TIMEOUT; reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def close_inherited_fds(keep: set[int], keep_files_under: str | os.PathLike[str] | None = None) -> None:
    """Close every fd above 2 but `keep` in a forked child: a container process that kept its shim's
    sockets, or a shim that kept the template's, would hold connections open that its parent's peers
    wait to see close (containerd notices a dead shim by its connection closing). Files below
    `keep_files_under` stay open too: the compile cache entries wasmtime maps code from, and maps the
    guest's memory image from when it instantiates it."""
    prefix = os.path.join(os.path.realpath(keep_files_under), "") if keep_files_under is not None else None
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in keep:
            continue
        with contextlib.suppress(OSError):
            if prefix is not None and os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                continue
            os.close(fd)
