"""A wasi:http/proxy guest that streams the request body back as the response body, chunk by chunk as it
arrives (the response starts before the request has ended), with the request's method and path in headers."""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = type(request.method()).__name__.removeprefix("Method_").upper()
        headers = Fields.from_list([("x-method", method.encode()),
                                    ("x-path", (request.path_with_query() or "").encode())])
        response = OutgoingResponse(headers)
        out_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        in_body = request.consume()
        with in_body.stream() as source, out_body.write() as sink:
            while True:
                try:
                    chunk = source.blocking_read(65536)
                except Err as failed:
                    if isinstance(failed.value, StreamError_Closed):
                        break  # the request body's end
                    raise
                while chunk:
                    allowed = sink.check_write()
                    if allowed == 0:
                        sink.subscribe().block()
                        continue
                    sink.write(chunk[:allowed])
                    chunk = chunk[allowed:]
            sink.blocking_flush()
        IncomingBody.finish(in_body)
        OutgoingBody.finish(out_body, None)
