"""ttrpc, containerd's lightweight RPC over unix sockets, in Python (PyPI has no implementation).

Frames are a 10-byte big-endian header (data length u32, stream id u32, type u8, flags u8) and at
most 4 MiB of data. A request frame carries a `ttrpc.Request` (service, method, payload, timeout_nano,
metadata); the response frame on the same stream carries a `ttrpc.Response` with a gRPC status. Only
unary calls, which is all the shim API uses. The server answers each request on its own thread, so a
blocking `Wait` never holds up a `Kill` on the same connection, and closes unanswered every connection
from a user other than root and its own (shim/sockets.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .api import ttrpc_pb2
from .sockets import peer_uid, trusted

HEADER = struct.Struct(">IIBB")
MAX_DATA = 4 << 20
TYPE_REQUEST, TYPE_RESPONSE = 1, 2

log = logging.getLogger("wasmctr.shim.ttrpc")


class Code:
    """gRPC status codes."""

    OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS = 0, 1, 2, 3, 4, 5, 6
    PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE = 7, 8, 9, 10, 11
    UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Call:
    """What a handler learns of its request besides the message: metadata and the deadline.

    A handler whose work has an effect that must not outlive an abandoned request (Create forks a
    process) calls `commit()` just before that effect: once the deadline has been answered with
    DEADLINE_EXCEEDED, `commit()` is False and the handler undoes what it did and stops; once committed,
    the deadline no longer answers first, so the caller learns the outcome it caused."""

    def __init__(self, metadata: dict[str, str], timeout_nano: int) -> None:
        self.metadata = metadata
        self.timeout_nano = timeout_nano
        self._lock = threading.Lock()
        self._state = "running"  # running | committed | expired

    @property
    def namespace(self) -> str:
        return self.metadata.get("containerd-namespace", "")

    def commit(self) -> bool:
        """The handler is about to have its effect; False if the deadline was answered first."""
        return self._settle("committed")

    def expire(self) -> bool:
        """Give up on the request (its deadline passed); False if the handler has committed."""
        return self._settle("expired")

    def _settle(self, state: str) -> bool:
        """Move from running to `state` (committed or expired), once; False if the other came first."""
        with self._lock:
            if self._state not in ("running", state):
                return False
            self._state = state
            return True


Handler = Callable[[Any, Call], Any]


class Service:
    """One ttrpc service: method name -> (request message class, handler)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.methods: dict[str, tuple[Any, Handler]] = {}

    def method(self, name: str, request_type: Any, handler: Handler) -> None:
        self.methods[name] = (request_type, handler)


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes | None] | None:
    """(stream id, type, flags, data) or None at EOF; data is None when over the 4 MiB limit."""
    header = _read_exact(sock, HEADER.size)
    if header is None:
        return None
    length, stream, kind, flags = HEADER.unpack(header)
    if length > MAX_DATA:
        remaining = length
        while remaining:
            chunk = sock.recv(min(remaining, 1 << 20))
            if not chunk:
                return None
            remaining -= len(chunk)
        return stream, kind, flags, None
    data = _read_exact(sock, length) if length else b""
    if data is None:
        return None
    return stream, kind, flags, data


def write_frame(sock: socket.socket, lock: threading.Lock, stream: int, kind: int, data: bytes) -> None:
    if len(data) > MAX_DATA:
        raise RpcError(Code.RESOURCE_EXHAUSTED, f"message of {len(data)} bytes is over the 4 MiB limit")
    with lock:
        sock.sendall(HEADER.pack(len(data), stream, kind, 0) + data)


class Server:
    def __init__(self, services: list[Service]) -> None:
        self.services = {s.name: s for s in services}
        self._stopping = threading.Event()

    def serve(self, listener: socket.socket) -> None:
        listener.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            if not trusted(uid := peer_uid(conn)):
                log.warning("closed a connection from uid %d: only root and uid %d may call", uid, os.geteuid())
                conn.close()
                continue
            conn.settimeout(None)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _connection(self, conn: socket.socket) -> None:
        lock = threading.Lock()
        with conn:
            while True:
                try:
                    frame = read_frame(conn)
                except OSError:
                    return
                if frame is None:
                    return
                stream, kind, _flags, data = frame
                if kind != TYPE_REQUEST:
                    continue
                threading.Thread(target=self._request, args=(conn, lock, stream, data), daemon=True).start()

    def _request(self, conn: socket.socket, lock: threading.Lock, stream: int, data: bytes | None) -> None:
        response = ttrpc_pb2.Response()
        started = time.monotonic()
        name = "?"
        try:
            if data is None:
                raise RpcError(Code.RESOURCE_EXHAUSTED, "request over the 4 MiB limit")
            request = ttrpc_pb2.Request.FromString(data)
            name = f"{request.service}/{request.method}"
            service = self.services.get(request.service)
            method = service.methods.get(request.method) if service else None
            if method is None:
                raise RpcError(Code.UNIMPLEMENTED, f"{request.service}/{request.method} is not implemented")
            request_type, handler = method
            call = Call({kv.key: kv.value for kv in request.metadata}, request.timeout_nano)
            result = _within_deadline(handler, request_type.FromString(request.payload), call)
            response.payload = result.SerializeToString()
        except RpcError as exc:
            response.status.code, response.status.message = exc.code, exc.message
        except Exception as exc:  # a bug of ours: report it to the caller instead of dropping the stream
            log.exception("handler failed")
            response.status.code, response.status.message = Code.INTERNAL, f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError, RpcError):
            write_frame(conn, lock, stream, TYPE_RESPONSE, response.SerializeToString())
        log.debug("%s: code %d in %.1f ms", name, response.status.code, (time.monotonic() - started) * 1000)


def _within_deadline(handler: Handler, message: Any, call: Call) -> Any:
    """Run a handler; past the caller's `timeout_nano` answer DEADLINE_EXCEEDED (the work goes on, and
    a handler that has not committed yet then finds it cannot)."""
    if call.timeout_nano <= 0:
        return handler(message, call)
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = handler(message, call)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc
        done.set()

    threading.Thread(target=work, daemon=True).start()
    if not done.wait(call.timeout_nano / 1e9):
        if call.expire():
            raise RpcError(Code.DEADLINE_EXCEEDED, f"no answer within {call.timeout_nano / 1e9:g}s")
        done.wait()  # committed to an effect: the caller hears how it went
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class Client:
    """A unary ttrpc client on one connection (used to forward events to containerd)."""

    def __init__(self, address: str) -> None:
        self.path = address.removeprefix("unix://")
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stream = 1

    def call(self, service: str, method: str, message: Any, response_type: Any, namespace: str = "",
             timeout: float = 5.0) -> Any:
        request = ttrpc_pb2.Request(service=service, method=method, payload=message.SerializeToString(),
                                    timeout_nano=int(timeout * 1e9))
        if namespace:
            request.metadata.add(key="containerd-namespace", value=namespace)
        frame: tuple[int, int, int, bytes | None] | None = None
        with self._lock:
            for attempt in range(2):
                try:
                    sock = self._connect(timeout)
                    stream, self._stream = self._stream, self._stream + 2
                    write_frame(sock, self._write_lock, stream, TYPE_REQUEST, request.SerializeToString())
                    while True:
                        frame = read_frame(sock)
                        if frame is None:
                            raise ConnectionError("connection closed")
                        if frame[0] == stream and frame[1] == TYPE_RESPONSE:
                            break
                    break
                except OSError:
                    self.close()
                    if attempt:
                        raise
        assert frame is not None
        response = ttrpc_pb2.Response.FromString(frame[3] or b"")
        if response.status.code != Code.OK:
            raise RpcError(response.status.code, response.status.message)
        return response_type.FromString(response.payload)

    def _connect(self, timeout: float) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.path)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
