"""A wasi:http/proxy guest that attacks its host, one attack per path (tests/test_http_hostile.py):

  /status/N          answers status N with a body ("body")
  /syntax            tries header names and values with CR, LF or NUL, and a hostile method and authority on
                     an outgoing request; the body says, per try, `ok` or `err` (`err` is what the host owes)
  /head              a response whose content-length says 100, with no body (what a HEAD is answered)
  /zeroes/N          a body of N zeroes through one blocking-write-zeroes-and-flush
  /trailers-first    ends the request body without reading it, then waits on its trailers; the body says
                     whether a 2 s clock had come by then (`late: False`: the wait ended as they came)
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import monotonic_clock
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    Method_Other,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
)


def answer(out: ResponseOutparam, body: bytes, status: int = 200, fields: Fields | None = None) -> None:
    response = OutgoingResponse(fields or Fields())
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(out, Ok(response))
    with outgoing.write() as sink:
        sink.blocking_write_and_flush(body)
    OutgoingBody.finish(outgoing, None)


def attempt(action) -> bytes:  # type: ignore[no-untyped-def]
    try:
        action()
    except Err:
        return b"err"
    return b"ok"


def syntax(out: ResponseOutparam) -> None:
    fields = Fields()
    tries = [attempt(lambda name=name: fields.append(name, b"v"))
             for name in ("x-lf\n", "x-cr\r", "x-nul\0", "x-sp ", "x-colon:")]
    tries += [attempt(lambda value=value: fields.append("x-value", value)) for value in (b"a\nb", b"a\rb", b"a\0b")]
    request = OutgoingRequest(Fields())
    tries.append(attempt(lambda: request.set_method(Method_Other("GET\n"))))
    tries.append(attempt(lambda: request.set_authority("[::1%\r\nx-injected: 1]:80")))
    tries.append(attempt(lambda: request.set_authority("user@example.com")))
    answer(out, b" ".join(tries), fields=fields)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, out: ResponseOutparam) -> None:
        parts = (request.path_with_query() or "/").split("/")
        name, count = parts[1], int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
        if name == "status":
            answer(out, b"body", status=count)
        elif name == "syntax":
            syntax(out)
        elif name == "head":
            response = OutgoingResponse(Fields.from_list([("content-length", b"100")]))
            body = response.body()
            ResponseOutparam.set(out, Ok(response))
            OutgoingBody.finish(body, None)
        elif name == "zeroes":
            response = OutgoingResponse(Fields())
            body = response.body()
            ResponseOutparam.set(out, Ok(response))
            with body.write() as sink:
                sink.blocking_write_zeroes_and_flush(count)
            OutgoingBody.finish(body, None)
        elif name == "trailers-first":
            future = IncomingBody.finish(request.consume())
            with future.subscribe() as trailers, monotonic_clock.subscribe_duration(2_000_000_000) as clock:
                trailers.block()
                late = clock.ready()
            answer(out, b"late: %r" % late)
        else:
            answer(out, b"unknown attack", status=404)
