"""What one client may make the HTTP host spend, with defaults a hostile client cannot get around.

`wasmtime serve` bounds none of these (its docs call it not production-hardened); each here has a default
and a `wasmctr run` flag. Imports only the record helper.
"""

from __future__ import annotations

from wasmctr.record import record


@record(frozen=True)
class Limits:
    max_body: int = 16 << 20  # request body bytes; past it 413 (or the stream fails mid-body)
    max_headers: int = 100  # header fields in a request head (hyper's and Go's default)
    max_header_bytes: int = 64 << 10  # the whole request head; past it 431
    max_concurrent: int = 64  # requests in flight per worker; past it 503 at once
    request_timeout: float = 30.0  # from the head's end to the response's end: a spinning guest traps
    head_timeout: float = 10.0  # to receive a whole request head (slowloris)
    idle_timeout: float = 5.0  # between requests on a kept-alive connection, and between body reads
    memory: int = 128 << 20  # linear memory per guest instance
