"""HTTP/1.1 on one accepted socket: the request head, the request body as a stream, and the response.

Strict where hyper is (the parser behind `wasmtime serve`): a head must arrive whole within its time and
size, with at most so many fields; `Transfer-Encoding` other than a final `chunked`, both it and
`Content-Length`, or two different lengths, are refused (request smuggling), as are bytes a header may not
hold. A body longer than allowed fails: refused at once when its length says so, or the guest's stream
fails when a chunked body grows past it. The body is read only as the guest reads it: a guest that does not
read stalls the client's sends. Responses are chunked unless the guest names their length.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import time
from collections.abc import Callable

from .io import WRITE_BUDGET, InputStream, OutputStream, StreamFailed
from .limits import Limits

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # \Z: `$` would let a final LF through
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
ABSOLUTE = re.compile(r"^https?://([^/?#@]+)([/?].*)?\Z", re.IGNORECASE)  # a target's authority, path
CHUNK_SIZE = re.compile(rb"^[0-9a-fA-F]{1,16}[ \t]*\Z")  # whitespace only before an extension (BWS)
REASONS = {200: "OK", 400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
RECV = 65536


class Refused(Exception):
    """A request the host answers itself with `status` (and then closes the connection)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Closed(Exception):
    """The client went away, or was silent too long between requests: close without an answer."""


class Head:
    """A request head; `path` (path with query) and `authority` are what the guest is given of its target."""

    def __init__(self, method: str, target: str, version: str, fields: list[tuple[str, bytes]]) -> None:
        self.method, self.target, self.version, self.fields = method, target, version, fields
        self.path, self.authority = _route(self)

    def get(self, name: str) -> list[bytes]:
        return [v for k, v in self.fields if k == name]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for v in self.get("connection") for t in v.split(b",")}
        return b"close" not in tokens if self.version == "HTTP/1.1" else b"keep-alive" in tokens


class Connection:
    """The socket and what was read from it and not yet used."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self.sock, self.limits = sock, limits
        self.buffer = bytearray()
        self.eof = False

    def fill(self, deadline: float) -> None:
        """Read more, waiting at most until `deadline` (monotonic): Closed at the end or on a timeout."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(RECV)
        except TimeoutError:
            raise
        except OSError as exc:
            raise Closed(str(exc)) from None
        if not data:
            self.eof = True
            raise Closed("the client closed the connection")
        self.buffer += data

    def pending(self) -> bool:
        """Whether bytes are there to read now (without blocking)."""
        if self.buffer or self.eof:
            return True
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(RECV)
        except (BlockingIOError, ssl.SSLWantReadError):  # a TLS socket (outgoing https) says so this way
            return False
        except OSError:
            self.eof = True
            return True
        finally:
            self.sock.setblocking(True)
        if not data:
            self.eof = True
        self.buffer += data
        return True

    def read_head(self) -> Head:
        """The next request's head. Closed if the client sends nothing more (or waits past the idle time
        before starting one); Refused for a malformed, oversized or too slow head."""
        limits = self.limits
        deadline = time.monotonic() + limits.idle_timeout
        begun = False
        while True:
            if not begun and self.buffer.lstrip(b"\r\n"):  # a head has begun: it has this long, in all
                begun, deadline = True, time.monotonic() + limits.head_timeout
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buffer) > limits.max_header_bytes:
                raise Refused(431, f"request head over {limits.max_header_bytes} bytes")
            try:
                self.fill(deadline)
            except TimeoutError:
                if not self.buffer:
                    raise Closed("idle") from None
                raise Refused(408, f"request head not received within {limits.head_timeout:g}s") from None
        if end > limits.max_header_bytes:
            raise Refused(431, f"request head over {limits.max_header_bytes} bytes")
        raw = bytes(self.buffer[:end]).lstrip(b"\r\n")
        del self.buffer[:end + 4]
        return _parse(raw, limits)


def _parse(raw: bytes, limits: Limits) -> Head:
    lines = raw.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "malformed request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(505 if version.startswith("HTTP/") else 400, f"unsupported version {version[:20]!r}")
    if not TOKEN.match(method.encode()) or not target or any(c <= " " or c == "\x7f" for c in target):
        raise Refused(400, "malformed request line")
    return Head(method, target, version, parse_fields(lines[1:], limits))


def _route(head: Head) -> tuple[str | None, str | None]:
    """The path and authority of a request by its target's form (RFC 9112 3.2): one `host` field, none
    only in HTTP/1.0 (two could be read two ways); an absolute target's authority wins over it."""
    hosts = head.get("host")
    if len(hosts) > 1 or (not hosts and head.version == "HTTP/1.1"):
        raise Refused(400, "a request needs exactly one host field")
    authority = hosts[0].decode("latin-1") if hosts else None
    target = head.target
    if target.startswith("/") or (target == "*" and head.method == "OPTIONS"):
        return target, authority
    if found := ABSOLUTE.match(target):
        path = found.group(2) or "/"
        return ("/" + path if path.startswith("?") else path), found.group(1)
    if head.method == "CONNECT":
        return None, target
    raise Refused(400, "malformed request target")


def parse_fields(lines: list[bytes], limits: Limits) -> list[tuple[str, bytes]]:
    """A head's field lines (names lowercased), as strict for a response the host reads as for a request."""
    if len(lines) > limits.max_headers:
        raise Refused(431, f"more than {limits.max_headers} header fields")
    fields: list[tuple[str, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.match(name):
            raise Refused(400, "malformed header field")
        value = value.strip(b" \t")
        if BAD_VALUE.search(value):
            raise Refused(400, "control character in a header value")
        fields.append((name.decode("ascii").lower(), value))
    return fields


def body_length(head: Head, limits: Limits) -> int | None:
    """The body's length, or None for a chunked body; refuses what could be read two ways."""
    codings = [t.strip().lower() for v in head.get("transfer-encoding") for t in v.split(b",")]
    lengths = set(head.get("content-length"))
    if codings:
        if codings != [b"chunked"] or lengths or head.version != "HTTP/1.1":
            raise Refused(501 if b"chunked" not in codings else 400, "unsupported transfer-encoding")
        return None
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths.copy().pop().isdigit():
        raise Refused(400, "invalid content-length")
    length = int(lengths.pop())
    if length > limits.max_body:
        raise Refused(413, f"request body of {length} bytes, over the limit of {limits.max_body}")
    return length


class Body(InputStream):
    """A body as the guest's input-stream: the connection's bytes, decoded from chunks if it came chunked,
    counted against the limit; trailers are kept for `future-trailers`. A request body, or the response
    body of an outgoing request (`what`), which may also end where the server closes (`to_close`)."""

    def __init__(self, conn: Connection, length: int | None, deadline: float, what: str = "request body",
                 to_close: bool = False) -> None:
        self.conn, self.deadline, self.what, self.to_close = conn, deadline, what, to_close
        self.left = length  # bytes left in the body, or in the current chunk when chunked
        self.chunked = length is None and not to_close
        self.done = length == 0
        self.total = 0
        self.trailers: list[tuple[str, bytes]] = []
        self.failed: str | None = None
        self.waiting: Callable[[], None] = lambda: None  # before a read blocks: the response's flush

    def before_wait(self) -> None:
        self.waiting()

    def _fill(self) -> None:
        self.waiting()
        try:
            self.conn.fill(min(self.deadline, time.monotonic() + self.conn.limits.idle_timeout))
        except Closed:
            if not (self.to_close and self.conn.eof):
                raise
            self.done = True

    def fileno(self) -> int | None:
        return self.conn.sock.fileno()

    def ready(self) -> bool:
        return self.done or self.failed is not None or self.conn.pending()

    def read(self, size: int, block: bool) -> bytes:
        if self.failed is not None:
            raise StreamFailed(self.failed)
        try:
            return self._read(size, block)
        except (Closed, TimeoutError, Refused) as exc:
            self.failed = f"{self.what}: {exc or 'timed out'}"
            raise StreamFailed(self.failed) from None

    def _read(self, size: int, block: bool) -> bytes:
        conn = self.conn
        while not self.done:
            if self.chunked and (self.left is None or self.left <= 0):  # -2: a chunk's CRLF is next
                if not self._chunk_header(block):
                    return b""
                continue
            if not conn.buffer:
                if not block and not conn.pending():
                    return b""
                if not conn.buffer:
                    self._fill()
                continue
            take = min(size, len(conn.buffer))
            if self.left is not None:
                take = min(take, self.left)
            data = bytes(conn.buffer[:take])
            del conn.buffer[:take]
            self.total += take
            if self.left is None:  # to the connection's close
                return data
            self.left -= take
            if self.chunked and self.left == 0:
                self.left = -2  # the CRLF after the chunk's data, read with the next chunk's header
            elif not self.chunked and self.left == 0:
                self.done = True
            return data
        raise EOFError

    def _chunk_header(self, block: bool) -> bool:
        """Read a chunk's size line (and the CRLF closing the chunk before it); the last one's trailers."""
        conn = self.conn
        while True:
            start = 2 if self.left == -2 else 0
            end = conn.buffer.find(b"\r\n", start)
            if end >= 0:
                break
            if len(conn.buffer) > 4096:
                raise Refused(400, "malformed chunk size")
            if not block and not conn.pending():
                return False
            self._fill()
        if start and conn.buffer[:2] != b"\r\n":
            raise Refused(400, "chunk data longer than its size")
        size, _, extension = bytes(conn.buffer[start:end]).partition(b";")
        del conn.buffer[:end + 2]
        if not CHUNK_SIZE.match(size) or BAD_VALUE.search(extension):  # a bare LF: a line's end to some
            raise Refused(400, "malformed chunk size")
        self.left = int(size, 16)
        if self.total + self.left > conn.limits.max_body:
            raise Refused(413, f"request body over the limit of {conn.limits.max_body} bytes")
        if self.left == 0:
            self._trailers()
        return True

    def _trailers(self) -> None:
        conn = self.conn
        while conn.buffer.find(b"\r\n\r\n") < 0 and not conn.buffer.startswith(b"\r\n"):
            if len(conn.buffer) > conn.limits.max_header_bytes:
                raise Refused(431, "trailers too large")
            self._fill()
        if conn.buffer.startswith(b"\r\n"):
            del conn.buffer[:2]
        else:
            end = conn.buffer.find(b"\r\n\r\n")
            self.trailers = parse_fields(bytes(conn.buffer[:end]).split(b"\r\n"), conn.limits)
            del conn.buffer[:end + 4]
        self.done = True

    def drain(self, limit: int) -> bool:
        """Read and drop the rest (at most `limit` more bytes), so the connection can serve the next
        request; False if that is not possible."""
        try:
            while not self.done and self.total <= limit:
                self._read(RECV, True)
        except (EOFError, Closed, TimeoutError, Refused, StreamFailed):
            pass
        return self.done and self.failed is None  # after a framing error, what follows is not a request


class Response(OutputStream):
    """The response's head and body on the socket: chunked unless the guest gave `content-length`, or, to an
    HTTP/1.0 client (which knows no chunks), ended by the connection's close. No body goes out after a
    HEAD or with a 204 or 304 (RFC 9110 6.4.1), whatever the guest writes. What the guest writes is sent as
    the socket takes it, never waiting (`capacity` is the room left in the buffer); `send_rest` waits for a
    slow client, up to a deadline."""

    def __init__(self, sock: socket.socket, keep_alive: bool, head_only: bool = False, http10: bool = False) -> None:
        self.sock, self.keep_alive, self.head_only, self.http10 = sock, keep_alive, head_only, http10
        self.chunked = False
        self.status = 0
        self.fields: list[tuple[str, bytes]] = []
        self.started = False
        self.length: int | None = None
        self.sent = 0
        self.pending = bytearray()
        self.finished = False
        self.failed: str | None = None

    def start(self, status: int, fields: list[tuple[str, bytes]]) -> None:
        self.status, self.fields = status, fields
        lengths = [v for k, v in fields if k == "content-length"]
        self.length = int(lengths[0]) if len(lengths) == 1 and lengths[0].isdigit() else None
        self.head_only = self.head_only or status in (204, 304)
        self.chunked = self.length is None and not self.head_only and not self.http10
        if self.length is None and not self.head_only and self.http10:
            self.keep_alive = False

    def _head(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}".encode()]
        for name, value in self.fields:
            if name in ("transfer-encoding", "connection", "keep-alive") or (
                    name == "content-length" and (self.length is None or self.status == 204)):
                continue
            lines.append(name.encode() + b": " + value)
        if self.chunked:
            lines.append(b"transfer-encoding: chunked")
        if not self.keep_alive:
            lines.append(b"connection: close")
        elif self.http10:
            lines.append(b"connection: keep-alive")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def capacity(self) -> int:
        if len(self.pending) >= WRITE_BUDGET:  # full: make room if the socket takes some (else no send: a
            self.flush()                      # small answer goes out whole, in one send with its head)
        return max(0, WRITE_BUDGET - len(self.pending))

    def write(self, data: bytes) -> None:
        if self.finished or not self.status:
            raise StreamFailed("the response body is finished")
        if self.length is not None and self.sent + len(data) > self.length:
            raise StreamFailed(f"the response body is longer than its content-length {self.length}")
        self.sent += len(data)
        if self.head_only:
            return
        if self.chunked and data:
            self.pending += b"%x\r\n" % len(data) + data + b"\r\n"
        else:
            self.pending += data
        if len(self.pending) >= RECV:
            self.flush()

    def flush(self) -> None:
        """Send what the socket takes now (the head first), without waiting; StreamFailed once the client
        is gone."""
        if self.failed is not None:
            raise StreamFailed(self.failed)
        if not self.started:
            self.pending[:0] = self._head()
            self.started = True
        if not self.pending:
            return
        try:
            self.sock.setblocking(True)  # no timeout: Python then sends at once, MSG_DONTWAIT not waiting
            sent = self.sock.send(self.pending, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self.failed = f"the client is gone: {exc}"
            raise StreamFailed(self.failed) from None
        del self.pending[:sent]

    def flushed(self) -> bool:
        self.flush()
        return not self.pending

    def fileno(self) -> int | None:
        return self.sock.fileno()

    def send_rest(self, deadline: float) -> None:
        """Send everything written, waiting for the client to read it until `deadline` (monotonic)."""
        while not self.flushed():
            left = deadline - time.monotonic()
            if left <= 0:
                self.failed = "the client did not read the response before the request's deadline"
                raise StreamFailed(self.failed)
            waiting = select.poll()  # poll(2): the container seccomp allowlist has no select(2)
            waiting.register(self.sock, select.POLLOUT)
            waiting.poll(int(left * 1000) + 1)

    def finish(self, trailers: list[tuple[str, bytes]] | None = None) -> None:
        """The body's end: the last chunk (with the trailers), or a check that the length was met."""
        if self.length is not None and self.sent != self.length and not self.head_only:
            self.keep_alive = False
            self.flush()
            raise StreamFailed(f"the response body has {self.sent} of its {self.length} bytes")
        if self.chunked:
            self.pending += b"0\r\n" + b"".join(k.encode() + b": " + v + b"\r\n" for k, v in trailers or []) + b"\r\n"
        self.finished = True
        self.flush()


def refuse(sock: socket.socket, status: int, message: str) -> None:
    """The host's own answer (a limit, a malformed request, a guest that failed), then close."""
    body = (message + "\n").encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    try:
        sock.sendall(head + body)
    except OSError:
        pass
