"""A wasi:http/proxy guest that fails: it raises before answering (a trap, as far as the host sees)."""

from wit_world import exports
from wit_world.imports.types import IncomingRequest, ResponseOutparam


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        raise RuntimeError("this guest always fails")
