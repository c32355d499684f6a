"""A wasi:http/proxy guest that answers every request with a fixed greeting (the benchmark's hello), or with
the error-code a path names (`/error/denied`), so a host's mapping of guest errors to statuses shows."""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.types import (
    ErrorCode_HttpRequestDenied,
    ErrorCode_InternalError,
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

ERRORS = {"/error/denied": ErrorCode_HttpRequestDenied(), "/error/internal": ErrorCode_InternalError("boom")}


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        error = ERRORS.get(request.path_with_query() or "/")
        if error is not None:
            ResponseOutparam.set(response_out, Err(error))
            return
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(b"Hello from a wasi:http component!\n")
        OutgoingBody.finish(body, None)
