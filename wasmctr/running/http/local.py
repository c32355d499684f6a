"""Requests to a proxy component from this process, with no listening socket: a test client.

Each request is served by the server's own connection code (`server.serve_connection`) on one end of a
socketpair of its own, on a thread, while the other end writes the request as HTTP/1.1 bytes and reads the
response back: the same parser and limits, the same instances (fresh per request unless reused), the same
500 for an error-code, a trap or a deadline, as a client over TCP meets. The request goes out whole
(`content-length`), from a thread of its own, so a guest that answers before it has read the body does not
stall it; the response is read to its end, trailers included. A failure's reason goes to stderr, as the
server logs it.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterable

from wasmctr.errors import ExecutorError, UsageError
from wasmctr.record import field, record

from .conn import RECV
from .guest import Guest
from .server import serve_connection

UNSAFE = re.compile(r"[\r\n\0]")  # what would end a line of the request early


@record(frozen=True)
class HttpResponse:
    """A proxy's answer: `headers` and `trailers` as (lower-case name, value) pairs in the order sent."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of the header `name` (any case), or None."""
        return next((v for k, v in self.headers if k == name.lower()), None)


class ProxyClient:
    """One proxy component's host in this process (`wasmctr.http_proxy`): `request` as often as wanted,
    from any thread, then `close` (or leave the `with` block), which stops its epoch clock."""

    def __init__(self, guest: Guest, on_close: Callable[[], None] = lambda: None) -> None:
        self.guest, self._on_close = guest, on_close
        guest.start_ticker()

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.guest.stop_ticker()
        self._on_close()

    def request(self, method: str, path: str = "/", headers: Iterable[tuple[str, str | bytes]] = (),
                body: bytes = b"") -> HttpResponse:
        """Send one request (`path` with its query, as the request line has it) and wait for the answer."""
        fields = [(name, value.decode("latin-1") if isinstance(value, bytes) else value) for name, value in headers]
        for text in (method, path, *(part for pair in fields for part in pair)):
            if UNSAFE.search(text):
                raise UsageError(f"{text!r}: a method, path or header holds a line break or NUL")
        if not any(name.lower() == "host" for name, _ in fields):
            fields.insert(0, ("host", "localhost"))
        if body:
            fields.append(("content-length", str(len(body))))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n"
        ours, theirs = socket.socketpair()
        server = threading.Thread(target=serve_connection, args=(theirs, self.guest), name="http-local", daemon=True)
        sender = threading.Thread(target=_send, args=(ours, head.encode("latin-1") + body), daemon=True)
        server.start()
        sender.start()
        data = bytearray()
        try:
            while chunk := ours.recv(RECV):
                data += chunk
        except ConnectionResetError:
            pass  # the server answered a refused request and closed with the rest of it unread: the answer is in
        finally:
            sender.join()
            ours.close()
            server.join()
        return _parse(bytes(data), method == "HEAD")


def _send(sock: socket.socket, data: bytes) -> None:
    """The request, then the end of what the client sends: the server's connection ends after one answer."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server answered and closed before it read it all (a refused head, a body over the limit)


def _parse(data: bytes, head_only: bool) -> HttpResponse:
    head, end, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not end or len(parts) < 2 or not parts[1].isdigit():
        raise ExecutorError("the proxy closed the connection without an answer")
    status, fields = int(parts[1]), _fields(lines[1:])
    chunked = any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in fields)
    if head_only or status in (204, 304) or status < 200:
        return HttpResponse(status, fields, b"")
    if not chunked:
        length = next((int(v) for k, v in fields if k == "content-length" and v.isdigit()), None)
        if length is not None and len(rest) < length:
            raise _cut(len(rest), length)
        return HttpResponse(status, fields, rest if length is None else rest[:length])
    body = bytearray()
    while True:
        size_line, crlf, rest = rest.partition(b"\r\n")
        size = size_line.split(b";")[0].strip()
        if not crlf or not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
            raise _cut(len(body), None)
        if int(size, 16) == 0:
            break
        if len(rest) < int(size, 16) + 2:
            raise _cut(len(body) + len(rest), None)
        body += rest[:int(size, 16)]
        rest = rest[int(size, 16) + 2:]
    trailers, end, _ = rest.partition(b"\r\n\r\n") if not rest.startswith(b"\r\n") else (b"", b"\r\n", b"")
    if not end:
        raise _cut(len(body), None)
    return HttpResponse(status, fields, bytes(body), _fields(trailers.decode("latin-1").split("\r\n")))


def _fields(lines: list[str]) -> list[tuple[str, str]]:
    pairs = (line.partition(":") for line in lines if line)
    return [(name.strip().lower(), value.strip()) for name, _, value in pairs]


def _cut(got: int, length: int | None) -> ExecutorError:
    of = f" of {length}" if length is not None else ""
    return ExecutorError(f"the response was cut short after {got}{of} body bytes: the guest failed once it had "
                         "begun to answer (the reason is on stderr)")
