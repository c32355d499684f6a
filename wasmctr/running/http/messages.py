"""wasi:http/types for incoming requests: fields, the request and its body, the response the guest builds
and the outparam it answers through, with wasmtime's rules (forbidden and immutable fields, one body, the
response sent once). The outgoing side's own types are outgoing.py's; it shares the fields and bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .client import Pipe
from .conn import BAD_VALUE, TOKEN, Body, Head, Response
from .io import WRITE_BUDGET, OutputStream, Pollable, StreamFailed
from .table import Table

FORBIDDEN = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
             "transfer-encoding", "upgrade", "host", "http2-settings"}
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
DENIED = ("HTTP-request-denied", None)  # the error-code of an outgoing request the host may not make


class Fields:
    def __init__(self, entries: list[tuple[str, bytes]], immutable: bool = False) -> None:
        self.entries, self.immutable = entries, immutable


class IncomingRequest:
    def __init__(self, head: Head, body: Body, scheme: str) -> None:
        self.head, self.body, self.scheme = head, body, scheme
        self.consumed = False


class IncomingBody:
    def __init__(self, body: Body) -> None:
        self.body = body
        self.streamed = False


class FutureTrailers:
    def __init__(self, body: Body) -> None:
        self.body = body
        self.taken = False


class Outparam:
    def __init__(self, response: Response) -> None:
        self.response = response
        self.error: Any = None  # the error-code the guest answered with
        self.interim = 0  # a 1xx status the guest answered with: no final response, so a 500
        self.set = False


class OutgoingResponse:
    def __init__(self, fields: Fields) -> None:
        self.status = 200
        self.fields = fields
        self.body: OutgoingBody | None = None


class OutgoingBody:
    def __init__(self) -> None:
        self.target: Response | Pipe | None = None  # where the body goes: the response once set
        self.buffer = bytearray()  # what is written before that
        self.streamed = False
        self.finished = False
        self.trailers: list[tuple[str, bytes]] | None = None

    def attach(self, target: Response | Pipe) -> None:
        """From now on the body goes to `target` (the response, an outgoing request's pipe): what was
        written before goes first, and the end, if the guest has finished the body already."""
        self.target = target
        if self.buffer:
            target.write(bytes(self.buffer))
            self.buffer.clear()
        if self.finished:
            target.finish(self.trailers)


class BodySink(OutputStream):
    """The output-stream of an outgoing body: its target once there is one, a buffer before, held for the
    request (`hold`)."""

    def __init__(self, body: OutgoingBody, hold: Callable[[int], None]) -> None:
        self.body, self.hold = body, hold

    def capacity(self) -> int:
        if self.body.finished:
            raise StreamFailed("the body is finished")
        if self.body.target is None:  # room in the buffer, which the host keeps to its budget too
            return max(0, WRITE_BUDGET - len(self.body.buffer))
        return self.body.target.capacity()

    def write(self, data: bytes) -> None:
        if self.body.finished:
            raise StreamFailed("the body is finished")
        if self.body.target is None:
            self.hold(len(data))
            self.body.buffer += data
        else:
            self.body.target.write(data)

    def flush(self) -> None:
        if self.body.target is not None:
            self.body.target.flush()

    def flushed(self) -> bool:
        """Before the body has its target, there is nowhere to send to: what is buffered goes out with it."""
        return self.body.target is None or self.body.target.flushed()

    def fileno(self) -> int | None:
        return None if self.body.target is None else self.body.target.fileno()


def define(fns: Any, types: Any, table: Table, add_resource: Any) -> None:
    """Define this side's resources and functions in the `wasi:http/types` instance."""
    for name in ("fields", "incoming-request", "response-outparam", "incoming-body", "future-trailers",
                 "outgoing-response", "outgoing-body"):
        add_resource(types, name)
    fns.add(types, "http-error-code", lambda rep: None)
    _define_fields(fns, types, table)
    _define_request(fns, types, table)
    _define_response(fns, types, table)


def _define_fields(fns: Any, types: Any, table: Table) -> None:
    def checked(name: str, values: list[bytes]) -> tuple[str, Any] | None:
        if not TOKEN.match(name.encode()):
            return ("err", ("invalid-syntax", None))
        if any(BAD_VALUE.search(v) for v in values):
            return ("err", ("invalid-syntax", None))
        if name.lower() in FORBIDDEN:
            return ("err", ("forbidden", None))
        return None

    def from_list(entries: list[tuple[str, bytes]]) -> tuple[str, Any]:
        for name, value in entries:
            error = checked(name, [value])
            if error:
                return error
        table.scope.hold(sum(len(name) + len(value) for name, value in entries))
        return ("ok", table.add(Fields([(n.lower(), v) for n, v in entries])))

    def mutate(rep: int, name: str, values: list[bytes] | None, keep_old: bool) -> tuple[str, Any]:
        fields = table.get(rep, Fields)
        if fields.immutable:
            return ("err", ("immutable", None))
        error = checked(name, values or [])
        if error:
            return error
        key = name.lower()
        table.scope.hold(sum(len(key) + len(v) for v in values or []))
        if not keep_old:
            fields.entries = [(n, v) for n, v in fields.entries if n != key]
        fields.entries += [(key, v) for v in values or []]
        return ("ok", None)

    fns.add(types, "[constructor]fields", lambda: table.add(Fields([])))
    fns.add(types, "[static]fields.from-list", from_list)
    fns.add(types, "[method]fields.get",
            lambda rep, name: [v for n, v in table.get(rep, Fields).entries if n == name.lower()])
    fns.add(types, "[method]fields.has",
            lambda rep, name: any(n == name.lower() for n, _ in table.get(rep, Fields).entries))
    fns.add(types, "[method]fields.set", lambda rep, name, values: mutate(rep, name, values, False))
    fns.add(types, "[method]fields.delete", lambda rep, name: mutate(rep, name, None, False))
    fns.add(types, "[method]fields.get-and-delete", lambda rep, name: _get_and_delete(table, rep, name))
    fns.add(types, "[method]fields.append", lambda rep, name, value: mutate(rep, name, [value], True))
    fns.add(types, "[method]fields.entries", lambda rep: list(table.get(rep, Fields).entries))
    fns.add(types, "[method]fields.clone", lambda rep: table.add(Fields(list(table.get(rep, Fields).entries))))


def _get_and_delete(table: Table, rep: int, name: str) -> tuple[str, Any]:
    fields = table.get(rep, Fields)
    if fields.immutable:
        return ("err", ("immutable", None))
    values = [v for n, v in fields.entries if n == name.lower()]
    fields.entries = [(n, v) for n, v in fields.entries if n != name.lower()]
    return ("ok", values)


def _define_request(fns: Any, types: Any, table: Table) -> None:
    def method(rep: int) -> tuple[str, Any]:
        name = table.get(rep, IncomingRequest).head.method
        return (name.lower(), None) if name in METHODS else ("other", name)

    def consume(rep: int) -> tuple[str, Any]:
        request = table.get(rep, IncomingRequest)
        if request.consumed:
            return ("err", None)
        request.consumed = True
        return ("ok", table.add(IncomingBody(request.body)))

    def body_stream(rep: int) -> tuple[str, Any]:
        body = table.get(rep, IncomingBody)
        if body.streamed:
            return ("err", None)
        body.streamed = True
        return ("ok", table.add(body.body))

    def trailers(rep: int) -> Any:
        future = table.get(rep, FutureTrailers)
        if not future.body.done:
            return None
        if future.taken:
            return ("err", None)
        future.taken = True
        fields = future.body.trailers
        return ("ok", ("ok", table.add(Fields(fields, immutable=True)) if fields else None))

    def finish(rep: int) -> int:
        body = table.take(rep, IncomingBody).body
        return table.add(FutureTrailers(body))

    def trailers_ready(future: FutureTrailers) -> bool:
        body = future.body
        try:
            while not body.done and body.ready():  # the guest no longer reads it: the host reads on to the trailers
                body.read(1 << 16, False)
        except (EOFError, StreamFailed):
            pass
        return body.done or body.failed is not None

    fns.add(types, "[method]incoming-request.method", method)
    fns.add(types, "[method]incoming-request.path-with-query", lambda rep: table.get(rep, IncomingRequest).head.path)
    fns.add(types, "[method]incoming-request.scheme",
            lambda rep: (table.get(rep, IncomingRequest).scheme.upper(), None))
    fns.add(types, "[method]incoming-request.authority",
            lambda rep: table.get(rep, IncomingRequest).head.authority)
    fns.add(types, "[method]incoming-request.headers",
            lambda rep: table.add(Fields(table.get(rep, IncomingRequest).head.fields, immutable=True)))
    fns.add(types, "[method]incoming-request.consume", consume)
    fns.add(types, "[method]incoming-body.stream", body_stream)
    fns.add(types, "[static]incoming-body.finish", finish)
    def subscribe(rep: int) -> int:
        future = table.get(rep, FutureTrailers)
        return table.add(Pollable(ready=lambda: trailers_ready(future), fd=future.body.fileno()))

    fns.add(types, "[method]future-trailers.subscribe", subscribe)
    fns.add(types, "[method]future-trailers.get", trailers)


def _define_response(fns: Any, types: Any, table: Table) -> None:
    def new_response(fields_rep: int) -> int:
        fields = table.take(fields_rep, Fields)
        fields.immutable = True
        return table.add(OutgoingResponse(fields))

    def set_status(rep: int, status: int) -> tuple[str, None]:
        if not 100 <= status <= 999:
            return ("err", None)
        table.get(rep, OutgoingResponse).status = status
        return ("ok", None)

    def response_body(rep: int) -> tuple[str, Any]:
        response = table.get(rep, OutgoingResponse)
        if response.body is not None:
            return ("err", None)
        response.body = OutgoingBody()
        return ("ok", table.add(response.body))

    def body_write(rep: int) -> tuple[str, Any]:
        body = table.get(rep, OutgoingBody)
        if body.streamed:
            return ("err", None)
        body.streamed = True
        return ("ok", table.add(BodySink(body, table.scope.hold)))

    def body_finish(rep: int, trailers: int | None) -> tuple[str, Any]:
        body = table.take(rep, OutgoingBody)
        fields = table.take(trailers, Fields).entries if trailers is not None else None
        body.finished = True
        if body.target is None:  # finished before the response is set: sent when it is
            body.trailers = fields
            return ("ok", None)
        try:
            body.target.finish(fields)
        except StreamFailed as exc:
            return ("err", ("internal-error", str(exc)))
        return ("ok", None)

    def outparam_set(rep: int, result: tuple[str, Any]) -> None:
        out = table.take(rep, Outparam)
        out.set = True
        tag, value = result
        if tag == "err":
            out.error = value
            return
        response = table.take(value, OutgoingResponse)
        if response.status < 200:  # hyper answers these 500 too: the client would wait for the final one
            out.interim = response.status
            return
        out.response.start(response.status, response.fields.entries)
        if response.body is None:  # the guest never asked for a body: an empty one
            response.body = OutgoingBody()
            response.body.finished = True
            out.response.finish()
            return
        response.body.attach(out.response)

    fns.add(types, "[constructor]outgoing-response", new_response)
    fns.add(types, "[method]outgoing-response.status-code", lambda rep: table.get(rep, OutgoingResponse).status)
    fns.add(types, "[method]outgoing-response.set-status-code", set_status)
    fns.add(types, "[method]outgoing-response.headers",
            lambda rep: table.add(table.get(rep, OutgoingResponse).fields))
    fns.add(types, "[method]outgoing-response.body", response_body)
    fns.add(types, "[method]outgoing-body.write", body_write)
    fns.add(types, "[static]outgoing-body.finish", body_finish)
    fns.add(types, "[static]response-outparam.set", outparam_set)
