"""The HTTP/1.1 server: a listening socket shared by worker processes, a thread per connection, keep-alive.

Each worker (a process forked once the code is loaded, so all share its pages) accepts on the one socket,
links the guest to its own host and keeps its own stores: two cores serve about twice what one does. A
worker holds at most `max_concurrent` connections (each serves one request at a time); one more closes
an idle one to take its place, or, where every one has a request in flight, is answered 503 at once.
Stopping (SIGINT or SIGTERM) ends the accepting, lets requests in flight finish
(idle kept-alive connections are closed), then the run: 0 for SIGINT, 143 for SIGTERM, as runwasi's
tests expect of a served component. The poll(2) loop, not select(2): the container seccomp allowlist
has poll.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from .conn import Body, Closed, Connection, Refused, Response, body_length, refuse
from .guest import STATUS_OF_ERROR, Guest, log

DRAIN_LIMIT = 1 << 20  # what is read of a body the guest left unread, to keep the connection


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


class Server:
    """The workers serving one socket, until `stop`. Signals are their owner's: the executor's supervisor
    (which holds the process's handlers) calls `stop` with the signal it got. Forked workers are told
    through a pipe each, not by kill(2), which a container's seccomp filter denies; each is also the
    main thread of its own process and stops on its own SIGINT/SIGTERM."""

    def __init__(self, sock: socket.socket, make_guest: Callable[[], Guest], workers: int, access_log: bool) -> None:
        self.sock, self.make_guest, self.workers, self.access_log = sock, make_guest, workers, access_log
        self._children: list[tuple[int, _Worker]] = []
        self._worker: _Worker | None = None
        self._received: list[int] = []
        self._lock = threading.Lock()

    def run(self) -> int:
        """Serve until stopped; the exit code: 0 after SIGINT, 143 after SIGTERM."""
        with self._lock:
            if self._received:
                return _exit_code(self._received)
            if self.workers <= 1:
                self._worker = _Worker(self.sock, self.make_guest(), self.access_log)
            else:
                for _ in range(self.workers):
                    worker = _Worker(self.sock, None, self.access_log)
                    pid = os.fork()
                    if pid == 0:
                        worker.serve_forked(self.make_guest)
                    self._children.append((pid, worker))
                self.sock.close()
        if self._worker is not None:
            return self._worker.run()
        for pid, worker in self._children:
            while True:
                try:
                    os.waitpid(pid, 0)
                    break
                except InterruptedError:
                    continue
            worker.close()
        return _exit_code(self._received)

    def stop(self, signum: int) -> None:
        """Stop accepting and drain: the requests in flight end, kept-alive idle connections close."""
        with self._lock:
            self._received.append(signum)
            for worker in [self._worker, *(w for _, w in self._children)]:
                if worker is not None:
                    worker.stop(signum)


class _Worker:
    """One process's accept loop and its connections, a thread each. `stop` writes the signal's number
    to the worker's pipe, which its loop polls beside the socket."""

    def __init__(self, sock: socket.socket, guest: Guest | None, access_log: bool) -> None:
        self.sock, self.guest, self.access_log = sock, guest, access_log
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._stop_w, False)

    def stop(self, signum: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._stop_w, bytes([signum]))

    def close(self) -> None:
        os.close(self._stop_r)
        os.close(self._stop_w)

    def serve_forked(self, make_guest: Callable[[], Guest]) -> NoReturn:
        """A worker process: ends with its parent (a hard-stopped container process leaves no server
        behind), stops on its own SIGINT/SIGTERM, and never returns into its parent's code."""
        code = 1
        try:
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda s, _f: self.stop(s))
            self.guest = make_guest()
            code = self.run()
        finally:
            os._exit(code)

    def run(self) -> int:
        guest = self.guest
        assert guest is not None
        guest.start_ticker()
        limits = guest.limits
        stopping: list[int] = []
        connections: dict[socket.socket, _Serving] = {}
        lock = threading.Lock()
        sock = self.sock
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while not stopping:
            for fd, _ in poller.poll():
                if fd == self._stop_r:
                    stopping.extend(os.read(self._stop_r, 64))
            if stopping:
                break
            try:
                client, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            client.setblocking(True)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with lock:
                if not _make_room(connections, limits.max_concurrent):
                    refuse(client, 503, f"over {limits.max_concurrent} requests in flight")
                    client.close()
                    continue
                serving = connections[client] = _Serving(client, peer, guest, self.access_log)
            threading.Thread(target=_run, args=(serving, connections, lock, stopping), daemon=True).start()
        sock.close()
        with lock:
            for serving in connections.values():
                serving.stop()
            pending = list(connections.values())
        for serving in pending:
            serving.done.wait(limits.request_timeout + limits.head_timeout)
        return _exit_code(stopping)


PR_SET_PDEATHSIG = 1


def _exit_code(signals: list[int]) -> int:
    return 143 if signal.SIGTERM in signals else 0


def _make_room(connections: dict[socket.socket, _Serving], most: int) -> bool:
    """Whether a new connection may be served: under `most`, or once an idle one (kept alive between
    requests, or still sending its head) is closed to make room, as nginx reuses its idle connections.
    Otherwise a client that keeps connections open, sending a request now and then, holds every place
    of a worker and everyone else is answered 503. Called with the worker's lock held."""
    open_ = [serving for serving in connections.values() if not serving.evicted]
    if len(open_) < most:
        return True
    idle = next((serving for serving in open_ if serving.idle), None)
    if idle is None:
        return False
    idle.evicted = True
    idle.stop()
    return True


def _run(serving: _Serving, connections: dict[socket.socket, _Serving], lock: threading.Lock,
         stopping: list[int]) -> None:
    try:
        serving.run(stopping)
    finally:
        with lock:
            connections.pop(serving.sock, None)
        with contextlib.suppress(OSError):
            serving.sock.close()
        serving.done.set()


def serve_connection(sock: socket.socket, guest: Guest) -> None:
    """Serve one connected socket's requests on the calling thread until it closes, then close it: what a
    worker does for each connection it accepts, for a caller that connects its own (`local.py`). The
    guest's epoch clock must be running (`Guest.start_ticker`)."""
    try:
        _Serving(sock, None, guest, False).run([])
    finally:
        with contextlib.suppress(OSError):
            sock.close()


class _Serving:
    """One connection: its requests in turn, until the client closes, errs or the worker stops."""

    def __init__(self, sock: socket.socket, peer: Any, guest: Guest, access_log: bool) -> None:
        self.sock, self.peer, self.guest, self.access_log = sock, peer, guest, access_log
        self.idle = True
        self.evicted = False  # closed to make room for another; its thread is ending
        self.done = threading.Event()

    def stop(self) -> None:
        if self.idle:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def run(self, stopping: list[int]) -> None:
        limits = self.guest.limits
        conn = Connection(self.sock, limits)
        while not stopping:
            self.idle = True
            try:
                head = conn.read_head()
                self.idle = False
                length = body_length(head, limits)
            except Closed:
                return
            except Refused as exc:
                refuse(self.sock, exc.status, str(exc))
                self._log("-", "-", exc.status, str(exc))
                return
            started = time.monotonic()
            body = Body(conn, length, started + limits.request_timeout)
            keep_alive = head.keep_alive and not stopping
            response = Response(self.sock, keep_alive, head.method == "HEAD", head.version == "HTTP/1.0")
            outcome = self.guest.handle(head, body, response)
            status = outcome.status
            if outcome.failure and not response.started:
                status = 413 if body.failed and "limit" in body.failed else STATUS_OF_ERROR
                refuse(self.sock, status, "Internal Server Error" if status == STATUS_OF_ERROR else body.failed or "")
            self._log(head.method, head.target, status, outcome.failure, time.monotonic() - started)
            if outcome.failure or not response.keep_alive or not body.drain(DRAIN_LIMIT):
                return

    def _log(self, method: str, target: str, status: int, failure: str, took: float = 0.0) -> None:
        if failure:
            log(f"{method} {target}: {failure}")
        if self.access_log:
            host = self.peer[0] if isinstance(self.peer, tuple) else "-"
            log(f"{host} \"{method} {target}\" {status} {took * 1000:.1f}ms")
