"""The HTTP/1.1 server: a listening socket shared by worker processes, a thread per connection, keep-alive.

Each worker (a process forked once the code is loaded, so all share its pages) accepts on the one socket,
links the guest to its own host and keeps its own stores: two cores serve about twice what one does. A
worker holds at most `max_concurrent` connections (each serves one request at a time); one more is
answered 503 at once. SIGINT and SIGTERM stop the accepting, let requests in flight finish (idle
kept-alive connections are closed), then end the process: 0 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

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


def serve(sock: socket.socket, make_guest: Callable[[], Guest], workers: int, access_log: bool) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code (0 or 143)."""
    if workers <= 1:
        return _worker(sock, make_guest(), access_log)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker(sock, make_guest(), access_log)
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
    return 143 if signal.SIGTERM in received else 0


def _worker(sock: socket.socket, guest: Guest, access_log: bool) -> int:
    guest.start_ticker()
    limits = guest.limits
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    stopping: list[int] = []
    signal.set_wakeup_fd(wake_w)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _f: stopping.append(s))
    connections: dict[socket.socket, _Serving] = {}
    lock = threading.Lock()
    sock.setblocking(False)
    while not stopping:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 64)
            continue
        try:
            client, peer = sock.accept()
        except (BlockingIOError, InterruptedError):
            continue  # another worker took it
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with lock:
            if len(connections) >= limits.max_concurrent:
                refuse(client, 503, f"over {limits.max_concurrent} requests in flight")
                client.close()
                continue
            serving = connections[client] = _Serving(client, peer, guest, access_log)
        threading.Thread(target=_run, args=(serving, connections, lock, stopping), daemon=True).start()
    sock.close()
    with lock:
        for serving in connections.values():
            serving.stop()
        pending = list(connections.values())
    for serving in pending:
        serving.done.wait(limits.request_timeout + limits.head_timeout)
    return 143 if signal.SIGTERM in stopping else 0


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


class _Serving:
    """One connection: its requests in turn, until the client closes, errs or the worker stops."""

    def __init__(self, sock: socket.socket, peer: Any, guest: Guest, access_log: bool) -> None:
        self.sock, self.peer, self.guest, self.access_log = sock, peer, guest, access_log
        self.idle = True
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
            response = Response(self.sock, keep_alive, head_only=head.method == "HEAD")
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
