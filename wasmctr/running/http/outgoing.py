"""wasi:http/types for outgoing requests, their options and responses, and `outgoing-handler.handle`, which
sends a request (client.py) only to a host the allowlist names by the name the guest gave, with the port
it gave or its scheme's; any other is answered `HTTP-request-denied` before anything is resolved or
connected. The allowlist is empty unless the network was granted (serving.py).
"""

from __future__ import annotations

from typing import Any

from . import client
from .conn import TOKEN
from .hosts import Allowed, allows, split_host_port
from .io import Pollable
from .limits import Limits
from .messages import DENIED, FORBIDDEN, METHODS, Fields, IncomingBody, OutgoingBody
from .table import Table

SCHEMES = {"HTTP": "http", "HTTPS": "https"}
MAX_OUTGOING = 64  # outgoing requests per incoming request: past it, `connection-limit-reached`
PORTS = {"http": 80, "https": 443}


class OutgoingRequest:
    def __init__(self, fields: Fields) -> None:
        self.fields = fields
        self.method = "GET"
        self.scheme: tuple[str, Any] | None = None
        self.authority: str | None = None
        self.path: str | None = None
        self.pipe: client.Pipe | None = None  # once the guest asked for the body: where it goes


class RequestOptions:
    def __init__(self) -> None:
        self.timeouts: dict[str, int | None] = {"connect": None, "first-byte": None, "between-bytes": None}


class IncomingResponse:
    def __init__(self, reply: client.Reply) -> None:
        self.reply = reply
        self.consumed = False


class FutureResponse:
    def __init__(self, exchange: client.Exchange) -> None:
        self.exchange = exchange
        self.taken = False


def define_types(fns: Any, types: Any, table: Table, add_resource: Any) -> None:
    for name in ("outgoing-request", "request-options", "incoming-response", "future-incoming-response"):
        add_resource(types, name)
    _define_request(fns, types, table)
    _define_options(fns, types, table)
    _define_response(fns, types, table)


def define_handler(fns: Any, handler: Any, table: Table, allowed: list[Allowed], limits: Limits) -> None:
    def handle(request_rep: int, options_rep: int | None) -> tuple[str, Any]:
        request = table.take(request_rep, OutgoingRequest)
        options = table.take(options_rep, RequestOptions) if options_rep is not None else RequestOptions()
        try:
            target = _target(request)
        except client.Failed as exc:
            return ("err", exc.code)
        if not allows(allowed, target.host, target.port):
            return ("err", DENIED)
        scope = table.scope
        if scope.outgoing >= MAX_OUTGOING:
            return ("err", ("connection-limit-reached", None))
        scope.outgoing += 1
        seconds = {k: None if ns is None else ns / 1e9 for k, ns in options.timeouts.items()}
        timeouts = client.Timeouts(seconds["connect"], seconds["first-byte"], seconds["between-bytes"])
        exchange = client.Exchange(target, timeouts, request.pipe, scope.deadline, limits)
        scope.on_close.append(exchange.cancel)
        exchange.start()
        return ("ok", table.add(FutureResponse(exchange)))

    fns.add(handler, "handle", handle)


def _target(request: OutgoingRequest) -> client.Target:
    # no scheme: https, as wasmtime defaults to it; another scheme is a protocol this host does not speak
    scheme = SCHEMES.get((request.scheme or ("HTTPS", None))[0])
    if scheme is None:
        raise client.Failed("HTTP-protocol-error")
    if request.authority is None:
        raise client.Failed("HTTP-request-URI-invalid")
    host, port = split_host_port(request.authority)
    lengths = [v for n, v in request.fields.entries if n == "content-length"]
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        raise client.Failed("HTTP-protocol-error")
    return client.Target(request.method, scheme, host, port or PORTS[scheme], request.authority,
                         request.path or "/", request.fields.entries, int(lengths[0]) if lengths else None)


def _define_request(fns: Any, types: Any, table: Table) -> None:
    def new_request(fields_rep: int) -> int:
        fields = table.take(fields_rep, Fields)
        fields.immutable = True
        return table.add(OutgoingRequest(fields))

    def body(rep: int) -> tuple[str, Any]:
        request = table.get(rep, OutgoingRequest)
        if request.pipe is not None:
            return ("err", None)
        request.pipe = client.Pipe(table.scope.deadline, table.scope.hold)
        out = OutgoingBody()
        out.attach(request.pipe)
        return ("ok", table.add(out))

    def method(rep: int) -> tuple[str, Any]:
        name = table.get(rep, OutgoingRequest).method
        return (name.lower(), None) if name in METHODS else ("other", name)

    def set_method(rep: int, value: tuple[str, Any]) -> tuple[str, None]:
        tag, other = value
        name = other if tag == "other" else tag.upper()
        if not TOKEN.match(name.encode()):
            return ("err", None)
        table.get(rep, OutgoingRequest).method = name
        return ("ok", None)

    def set_path(rep: int, path: str | None) -> tuple[str, None]:
        if path is not None and (not path.startswith("/") or any(c <= " " or c == "\x7f" for c in path)):
            return ("err", None)
        table.get(rep, OutgoingRequest).path = path
        return ("ok", None)

    def set_scheme(rep: int, scheme: tuple[str, Any] | None) -> tuple[str, None]:
        if scheme is not None and scheme[0] == "other" and not _is_scheme(scheme[1]):
            return ("err", None)
        table.get(rep, OutgoingRequest).scheme = scheme
        return ("ok", None)

    def set_authority(rep: int, authority: str | None) -> tuple[str, None]:
        if authority is not None:
            try:
                split_host_port(authority)
            except ValueError:
                return ("err", None)
        table.get(rep, OutgoingRequest).authority = authority
        return ("ok", None)

    fns.add(types, "[constructor]outgoing-request", new_request)
    fns.add(types, "[method]outgoing-request.body", body)
    fns.add(types, "[method]outgoing-request.method", method)
    fns.add(types, "[method]outgoing-request.set-method", set_method)
    fns.add(types, "[method]outgoing-request.path-with-query", lambda rep: table.get(rep, OutgoingRequest).path)
    fns.add(types, "[method]outgoing-request.set-path-with-query", set_path)
    fns.add(types, "[method]outgoing-request.scheme", lambda rep: table.get(rep, OutgoingRequest).scheme)
    fns.add(types, "[method]outgoing-request.set-scheme", set_scheme)
    fns.add(types, "[method]outgoing-request.authority", lambda rep: table.get(rep, OutgoingRequest).authority)
    fns.add(types, "[method]outgoing-request.set-authority", set_authority)
    fns.add(types, "[method]outgoing-request.headers",
            lambda rep: table.add(table.get(rep, OutgoingRequest).fields))


def _is_scheme(text: str) -> bool:
    return bool(text) and text[0].isascii() and text[0].isalpha() and all(
        c.isascii() and (c.isalnum() or c in "+-.") for c in text)


def _define_options(fns: Any, types: Any, table: Table) -> None:
    def setter(name: str) -> Any:
        def set_timeout(rep: int, ns: int | None) -> tuple[str, None]:
            table.get(rep, RequestOptions).timeouts[name] = ns
            return ("ok", None)
        return set_timeout

    fns.add(types, "[constructor]request-options", lambda: table.add(RequestOptions()))
    for name in ("connect", "first-byte", "between-bytes"):
        fns.add(types, f"[method]request-options.{name}-timeout",
                lambda rep, name=name: table.get(rep, RequestOptions).timeouts[name])
        fns.add(types, f"[method]request-options.set-{name}-timeout", setter(name))


def _define_response(fns: Any, types: Any, table: Table) -> None:
    def headers(rep: int) -> int:
        # without the connection's own fields, which framed the body here: a guest can pass the rest on
        fields = [(n, v) for n, v in table.get(rep, IncomingResponse).reply.fields if n not in FORBIDDEN]
        return table.add(Fields(fields, immutable=True))

    def consume(rep: int) -> tuple[str, Any]:
        response = table.get(rep, IncomingResponse)
        if response.consumed:
            return ("err", None)
        response.consumed = True
        return ("ok", table.add(IncomingBody(response.reply.body)))

    def subscribe(rep: int) -> int:
        exchange = table.get(rep, FutureResponse).exchange
        return table.add(Pollable(ready=lambda: exchange.result is not None, fd=exchange.fd))

    def get(rep: int) -> Any:
        future = table.get(rep, FutureResponse)
        result = future.exchange.result
        if result is None:
            return None
        if future.taken:
            return ("err", None)
        future.taken = True
        tag, value = result
        return ("ok", ("ok", table.add(IncomingResponse(value))) if tag == "ok" else ("err", value))

    fns.add(types, "[method]incoming-response.status", lambda rep: table.get(rep, IncomingResponse).reply.status)
    fns.add(types, "[method]incoming-response.headers", headers)
    fns.add(types, "[method]incoming-response.consume", consume)
    fns.add(types, "[method]future-incoming-response.subscribe", subscribe)
    fns.add(types, "[method]future-incoming-response.get", get)
