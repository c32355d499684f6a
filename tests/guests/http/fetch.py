"""A wasi:http/proxy guest that forwards each request over plain http to the upstream its `x-upstream` header
names (`host:port`): the method, path, content-type and body go upstream as they arrive, the upstream's
status, headers and body come back as they arrive. An error-code on the way (a denied host, a refused
connection) is answered 502, with the error-code's name (`ErrorCode_HttpRequestDenied`) as the body."""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import InputStream, OutputStream, StreamError_Closed
from wit_world.imports.types import (
    ErrorCode,
    Fields,
    IncomingBody,
    IncomingRequest,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)

FORWARDED = ("content-type", "content-length")


def copy(source: InputStream, sink: OutputStream) -> None:
    while True:
        try:
            chunk = source.blocking_read(65536)
        except Err as failed:
            if isinstance(failed.value, StreamError_Closed):
                break
            raise
        while chunk:
            allowed = sink.check_write()
            if allowed == 0:
                sink.subscribe().block()
                continue
            sink.write(chunk[:allowed])
            chunk = chunk[allowed:]
    sink.blocking_flush()


def fail(response_out: ResponseOutparam, error: ErrorCode) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(502)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as sink:
        sink.blocking_write_and_flush(type(error).__name__.encode())
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        entries = request.headers().entries()
        upstream = [v.decode() for n, v in entries if n == "x-upstream"]
        has_body = any(n in ("content-length", "transfer-encoding") for n, _ in entries)
        outgoing = OutgoingRequest(Fields.from_list([(n, v) for n, v in entries if n in FORWARDED]))
        outgoing.set_method(request.method())
        outgoing.set_scheme(Scheme_Http())
        outgoing.set_authority(upstream[0] if upstream else None)
        outgoing.set_path_with_query(request.path_with_query())
        out_body = outgoing.body() if has_body else None
        try:
            future = outgoing_handler.handle(outgoing, None)
        except Err as failed:
            fail(response_out, failed.value)
            return
        if out_body is not None:  # the request body goes up as it comes in
            in_body = request.consume()
            with in_body.stream() as source, out_body.write() as sink:
                copy(source, sink)
            IncomingBody.finish(in_body)
            OutgoingBody.finish(out_body, None)
        with future.subscribe() as pollable:
            pollable.block()
        result = future.get()
        assert isinstance(result, Ok)
        if isinstance(result.value, Err):
            fail(response_out, result.value.value)
            return
        upstream_response = result.value.value
        response = OutgoingResponse(Fields.from_list(upstream_response.headers().entries()))
        response.set_status_code(upstream_response.status())
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        up_body = upstream_response.consume()
        with up_body.stream() as source, body.write() as sink:  # and the response body comes back so
            copy(source, sink)
        IncomingBody.finish(up_body)
        OutgoingBody.finish(body, None)
