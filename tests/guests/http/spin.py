"""A wasi:http/proxy guest that never answers: it spins forever (only a deadline ends it)."""

from wit_world import exports
from wit_world.imports.types import IncomingRequest, ResponseOutparam


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        while True:
            pass
