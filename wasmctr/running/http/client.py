"""One outgoing HTTP/1.1 request of a guest (`outgoing-handler.handle`), exchanged on a host thread of its own.

The thread resolves the name once and connects to an address it resolved, so a name cannot point elsewhere
between the allowlist's check (of the name, outgoing.py) and the connect; for https it speaks TLS, the
certificate checked against that name with the system's CAs. It sends the head, then the body as the guest
writes it through a `Pipe` (a write waits while the host holds PIPE_BYTES of it), then reads the response
head, as strictly and within the same limits as a request head. The guest then reads the response body on
its own thread, from the same socket, as it reads a request body (`conn.Body`). Every wait ends at the
incoming request's deadline, or before it at the request-options' timeouts. One connection per request
(`connection: close`): nothing is pooled, so nothing one request leaves reaches another's.

As http.client does, the response is read once the request body is sent: a server that answers before the
body's end (or closes the connection on it) is heard then.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .abi import HostTrap
from .conn import Body, Closed, Connection, Refused, parse_fields
from .io import OutputStream, StreamFailed
from .limits import Limits

PIPE_BYTES = 1 << 20
UNBOUNDED = 1 << 62  # a response body has no size limit: it is streamed, and its time is the deadline's
ErrorCode = tuple[str, Any]  # a wasi:http error-code, as abi.py lowers a variant


class Failed(Exception):
    """The exchange ended with this error-code."""

    def __init__(self, code: str, payload: Any = None) -> None:
        super().__init__(code)
        self.code: ErrorCode = (code, payload)


class Target:
    """Where a request goes and what it says, as outgoing.py checked it. `length`: its content-length."""

    def __init__(self, method: str, scheme: str, host: str, port: int, authority: str, path: str,
                 fields: list[tuple[str, bytes]], length: int | None) -> None:
        self.method, self.scheme, self.host, self.port = method, scheme, host, port
        self.authority, self.path, self.fields, self.length = authority, path, fields, length


class Timeouts:
    """The request-options' timeouts, in seconds (None: the deadline's alone)."""

    def __init__(self, connect: float | None, first_byte: float | None, between_bytes: float | None) -> None:
        self.connect, self.first_byte, self.between_bytes = connect, first_byte, between_bytes


class Reply:
    """A response head, and its body as the guest's input-stream."""

    def __init__(self, status: int, fields: list[tuple[str, bytes]], body: Body) -> None:
        self.status, self.fields, self.body = status, fields, body


class Pipe(OutputStream):
    """A request body between the guest's thread, which writes it, and the exchange's, which sends it. Before
    the exchange starts nothing takes from it: what is written is held for the request (`hold`), and a
    write past PIPE_BYTES fails instead of waiting."""

    def __init__(self, deadline: float, hold: Callable[[int], None]) -> None:
        self.deadline, self.hold = deadline, hold
        self.sending = False
        self.ended = False
        self.trailers: list[tuple[str, bytes]] | None = None
        self.failed: str | None = None
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._held = 0

    def write(self, data: bytes) -> None:
        with self._cond:
            while self.failed is None and self._held and self._held + len(data) > PIPE_BYTES:
                if not self.sending:
                    raise StreamFailed(f"over {PIPE_BYTES} bytes of body written before outgoing-handler.handle")
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise HostTrap("request deadline exceeded")
                self._cond.wait(left)
            if self.failed is not None:
                raise StreamFailed(self.failed)
            if not self.sending:
                self.hold(len(data))
            if data:
                self._chunks.append(data)
                self._held += len(data)
                self._cond.notify_all()

    def finish(self, trailers: list[tuple[str, bytes]] | None = None) -> None:
        with self._cond:
            self.ended, self.trailers = True, trailers
            self._cond.notify_all()

    def start(self) -> None:
        with self._cond:
            self.sending = True

    def fail(self, reason: str) -> None:
        with self._cond:
            if self.failed is None:
                self.failed = reason
            self._cond.notify_all()

    def take(self) -> bytes | None:
        """The next piece of the body, None at its end; waits for the guest, at most to the deadline."""
        with self._cond:
            while not self._chunks and not self.ended:
                left = self.deadline - time.monotonic()
                if left <= 0 or self.failed is not None:
                    raise Failed("internal-error", "the request body was not finished")
                self._cond.wait(left)
            if not self._chunks:
                return None
            data = self._chunks.popleft()
            self._held -= len(data)
            self._cond.notify_all()
            return data


class Exchange:
    """The request's exchange on its thread. `result` is set once, ("ok", Reply) or ("err", error-code);
    then `fd`, an eventfd the guest's poll waits on, is signalled."""

    def __init__(self, target: Target, timeouts: Timeouts, pipe: Pipe | None, deadline: float,
                 limits: Limits) -> None:
        self.target, self.timeouts, self.pipe, self.deadline = target, timeouts, pipe, deadline
        # the response's head within a request head's limits; its body unbounded but for the time between reads
        self.limits = Limits(max_headers=limits.max_headers, max_header_bytes=limits.max_header_bytes,
                             max_body=UNBOUNDED, idle_timeout=timeouts.between_bytes or limits.request_timeout)
        self.fd: int | None = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.result: tuple[str, Any] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def start(self) -> None:
        if self.pipe is not None:
            self.pipe.start()
        threading.Thread(target=self._run, name="wasi-http-outgoing", daemon=True).start()

    def cancel(self) -> None:
        """The incoming request is over: stop the exchange, or close the connection its response came on."""
        with self._lock:
            self._cancelled = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            if self._sock is not None:
                if self.result is None:
                    _shutdown(self._sock)  # wakes the thread, which closes it
                else:
                    self._sock.close()
        if self.pipe is not None:
            self.pipe.fail("the request is over")

    def _run(self) -> None:
        reply: Reply | None = None
        error: ErrorCode | None = None
        try:
            reply = self._exchange()
        except Failed as exc:
            error = exc.code
        except Exception as exc:  # a host bug fails this request, never the worker
            error = ("internal-error", f"{type(exc).__name__}: {exc}")
        if error is not None and self.pipe is not None:
            self.pipe.fail(f"the request failed: {error[0]}")
        with self._lock:
            self.result = ("ok", reply) if error is None else ("err", error)
            if self._sock is not None and (self._cancelled or error is not None):
                self._sock.close()
            if self.fd is not None:
                os.eventfd_write(self.fd, 1)

    def _exchange(self) -> Reply:
        sock = self._connect()
        if self.target.scheme == "https":
            sock = self._tls(sock)
        self._send(sock)
        return self._receive(sock)

    def _within(self, timeout: float | None, code: str) -> float:
        """Seconds left to wait: to the deadline, or less as `timeout` says; Failed(code) when none are."""
        left = self.deadline - time.monotonic()
        if timeout is not None:
            left = min(left, timeout)
        if left <= 0:
            raise Failed(code)
        return left

    def _hold(self, sock: socket.socket | None) -> None:
        with self._lock:
            if self._cancelled and sock is not None:
                sock.close()
                raise Failed("connection-terminated")
            self._sock = sock

    def _connect(self) -> socket.socket:
        target = self.target
        try:
            addresses = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Failed("DNS-error", {"rcode": exc.strerror, "info-code": None}) from None
        error = Failed("destination-not-found")
        for family, kind, proto, _, address in addresses:  # only what was resolved: never the name again
            sock = socket.socket(family, kind, proto)
            self._hold(sock)
            try:
                sock.settimeout(self._within(self.timeouts.connect, "connection-timeout"))
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except TimeoutError:
                error = Failed("connection-timeout")
            except ConnectionRefusedError:
                error = Failed("connection-refused")
            except OSError:
                error = Failed("destination-unavailable")
            self._hold(None)
            sock.close()
        raise error

    def _tls(self, sock: socket.socket) -> socket.socket:
        context = ssl.create_default_context()
        try:
            tls = context.wrap_socket(sock, server_hostname=self.target.host, do_handshake_on_connect=False)
            self._hold(tls)  # it took the descriptor over from sock
            tls.settimeout(self._within(self.timeouts.connect, "connection-timeout"))
            tls.do_handshake()
        except ssl.SSLCertVerificationError:
            raise Failed("TLS-certificate-error") from None
        except ssl.SSLError:
            raise Failed("TLS-protocol-error") from None
        except TimeoutError:
            raise Failed("connection-timeout") from None
        except OSError:
            raise Failed("connection-terminated") from None
        return tls

    def _send(self, sock: socket.socket) -> None:
        target, pipe = self.target, self.pipe
        chunked = pipe is not None and target.length is None
        lines = [f"{target.method} {target.path} HTTP/1.1".encode(), b"host: " + target.authority.encode()]
        lines += [name.encode() + b": " + value for name, value in target.fields]
        lines += [b"transfer-encoding: chunked"] if chunked else []
        head = b"\r\n".join([*lines, b"connection: close"]) + b"\r\n\r\n"
        try:
            self._write(sock, head)
            if pipe is None:
                return
            sent = 0
            while (data := pipe.take()) is not None:
                sent += len(data)
                if target.length is not None and sent > target.length:
                    raise Failed("HTTP-request-body-size", sent)
                self._write(sock, b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if target.length is not None and sent != target.length:
                raise Failed("HTTP-request-body-size", sent)
            if chunked:
                trailers = b"".join(k.encode() + b": " + v + b"\r\n" for k, v in pipe.trailers or [])
                self._write(sock, b"0\r\n" + trailers + b"\r\n")
        except TimeoutError:
            raise Failed("connection-write-timeout") from None
        except OSError as exc:  # the server closed its end: its answer, if it sent one, is read next
            if pipe is not None:
                pipe.fail(f"the server closed the connection: {exc}")

    def _write(self, sock: socket.socket, data: bytes) -> None:
        sock.settimeout(self._within(None, "connection-write-timeout"))
        sock.sendall(data)

    def _receive(self, sock: socket.socket) -> Reply:
        conn = Connection(sock, self.limits)
        deadline = time.monotonic() + self._within(self.timeouts.first_byte, "connection-read-timeout")
        status, fields = self._head(conn, deadline)
        while 100 <= status < 200 and status != 101:  # interim answers (100 Continue): the final one follows
            status, fields = self._head(conn, deadline)
        if status == 101:
            raise Failed("HTTP-upgrade-failed")
        codings = [t.strip().lower() for name, v in fields if name == "transfer-encoding" for t in v.split(b",")]
        lengths = {v for name, v in fields if name == "content-length"}
        length: int | None = None
        to_close = False
        if self.target.method == "HEAD" or status in (204, 304):
            length = 0
        elif codings:
            if codings != [b"chunked"]:
                raise Failed("HTTP-response-transfer-coding", b", ".join(codings).decode("latin-1"))
        elif lengths:
            value = lengths.pop()
            if lengths or not value.isdigit():
                raise Failed("HTTP-protocol-error")
            length = int(value)
        else:
            to_close = True  # HTTP/1.1's last framing: the body ends where the server closes
        body = Body(conn, length, self.deadline, what="response body", to_close=to_close)
        return Reply(status, fields, body)

    def _head(self, conn: Connection, deadline: float) -> tuple[int, list[tuple[str, bytes]]]:
        limit = self.limits.max_header_bytes
        while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
            if len(conn.buffer) > limit:
                raise Failed("HTTP-response-header-section-size", limit)
            try:
                conn.fill(min(deadline, self.deadline))
            except TimeoutError:
                raise Failed("connection-read-timeout") from None
            except Closed:
                raise Failed("HTTP-response-incomplete") from None
        if end > limit:
            raise Failed("HTTP-response-header-section-size", limit)
        lines = bytes(conn.buffer[:end]).split(b"\r\n")
        del conn.buffer[:end + 4]
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit() or len(code) != 3 or rest[3:4] not in (
                b"", b" "):
            raise Failed("HTTP-protocol-error")
        try:
            return int(code), parse_fields(lines[1:], self.limits)
        except Refused as exc:
            if exc.status == 431:
                raise Failed("HTTP-response-header-section-size", limit) from None
            raise Failed("HTTP-protocol-error") from None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
