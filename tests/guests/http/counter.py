"""A wasi:http/proxy guest with state: a global counts the requests its instance has handled and the answer
is that count, so whether a host reuses an instance shows. `/trap` raises (a trap) after counting; `/clock`
answers with the host's wasi:clocks/wall-clock instead (an interface the guest's runtime never calls on its own,
unlike wasi:random: a denied one makes this path alone trap)."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam
from wit_world.imports.wall_clock import now

handled = 0


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global handled
        handled += 1
        path = request.path_with_query() or "/"
        if path == "/trap":
            raise RuntimeError("asked to trap")
        text = str(now().seconds) if path == "/clock" else str(handled)
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text.encode())
        OutgoingBody.finish(body, None)
