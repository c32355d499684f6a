"""What `wasmctr run -p` promises a guest and a client beyond answering, through the installed command, real
sockets and the C guest (tests/guests/http/tiny.c, a small component whose costs are the host's): trailers
both ways on the wire, backpressure both ways (a client that does not read stops the guest, not the host's
memory; a guest that does not read stalls the client), and guests that grow memory, spin or never answer
are stopped while the worker goes on serving."""

from __future__ import annotations

from proxies import read_response, serving

HELLO = (200, b"Hello from a wasi:http component!\n")
STREAMED_MIB = 32


def dechunk(body: bytes) -> tuple[bytes, bytes]:
    """A chunked body's data and its trailer section (the lines after the last chunk)."""
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return data, body
        data, body = data + body[:size], body[size + 2:]


def test_trailers_of_the_request_reach_the_guest_and_its_trailers_go_out_after_the_last_chunk(tiny, compiled_home):
    with serving(tiny["0.2.0"], compiled_home, "--workers", "1") as server, server.raw() as sock:
        sock.sendall(b"POST /trailers HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                     b"5\r\nhello\r\n3\r\nabc\r\n0\r\nx-sum: 42\r\nx-note: two words\r\n\r\n")
        head, _, body = read_response(sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head
        data, trailers = dechunk(body)
        assert data == b"x-sum: 42\nx-note: two words\n"  # what the guest read from future-trailers
        assert trailers == b"x-body-bytes: 8\r\nx-trailer: done\r\n\r\n"  # outgoing-body.finish's trailers


def test_a_client_that_does_not_read_stops_the_guest_in_check_write_not_the_host_buffering(tiny, compiled_home):
    with serving(tiny["0.2.0"], compiled_home, "--workers", "1") as server:
        conn = server.connect()
        conn.request("GET", f"/stream/{STREAMED_MIB}")  # the guest writes 32 MiB as fast as the host takes it
        accepted = int(server.stderr_line(r"tiny: check-write said 0 after (\d+)").group(1))
        # the host took what fits its 1 MiB buffer and the two sockets' kernel buffers, then said "no room"
        assert accepted < 16 << 20, accepted
        response = conn.getresponse()
        body = response.read()  # once the client reads, the guest goes on to the end
        assert len(body) == STREAMED_MIB << 20 and body[:256] == bytes(range(256))
        assert server.get("/") == HELLO


def test_a_guest_that_does_not_read_the_body_stalls_the_client_not_the_host(tiny, compiled_home):
    length = 256 << 20
    with serving(tiny["0.2.0"], compiled_home, "--workers", "1", "--max-body", "512m", "--timeout", "5s") as server:
        with server.raw() as sock:
            sock.sendall(b"POST /ignore HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % length)
            sock.settimeout(1)  # no progress for a second: the sends have stalled
            piece, sent = bytes(65536), 0
            try:
                while sent < length:
                    sock.sendall(piece)
                    sent += len(piece)
            except (TimeoutError, ConnectionError):
                pass
        # the host read nothing the guest did not ask for: the client filled the kernel's buffers only
        assert sent < 32 << 20, sent
        assert server.get("/") == HELLO  # another connection is served meanwhile


def test_a_guest_growing_memory_past_the_limit_is_stopped_and_the_worker_serves_on(tiny, compiled_home):
    with serving(tiny["0.2.0"], compiled_home, "--workers", "1", "-m", "16m") as server:
        assert server.get("/memory")[0] == 500
        pages = int(server.stderr_line(r"tiny: memory stopped growing at pages (\d+)").group(1))
        assert 8 << 20 < pages * 65536 <= 16 << 20  # it reached the limit, not past it
        assert server.get("/") == HELLO


def test_a_guest_that_spins_or_never_answers_is_stopped_at_the_timeout_and_the_next_request_served(
        tiny, compiled_home):
    with serving(tiny["0.2.0"], compiled_home, "--workers", "1", "--timeout", "1s") as server:
        assert server.get("/spin")[0] == 500  # trapped by the epoch deadline
        server.stderr_line("GET /spin: the request's deadline passed")
        assert server.get("/ignore")[0] == 500  # blocked in a host call, which returns at the deadline
        server.stderr_line("GET /ignore: the request's deadline passed")
        assert server.get("/") == HELLO
