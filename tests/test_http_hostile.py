"""`wasmctr run -p` against its two attackers, through the installed command and real sockets: a hostile
client (request smuggling and desync, odd targets and hosts, HTTP/1.0) talking to the C guest
(tests/guests/http/tiny.c), and a hostile guest (tests/guests/http/attacker.py, one attack per path) that
tries to split its response, smuggle bytes into its host's heads or make the host hold what it asks for."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import componentize
from proxies import Server, read_response, serving
from test_http_semantics import dechunk

PIPELINED = b"GET /smuggled HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def tiny_server(tiny: dict[str, Path], compiled_home: Path) -> Iterator[Server]:
    with serving(tiny["0.2.0"], compiled_home, "--workers", "1", "--timeout", "5s") as server:
        yield server


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory, compiled_home: Path) -> Iterator[Server]:
    wasm = componentize(("attacker",), tmp_path_factory.mktemp("attacker"))["attacker"]
    with serving(wasm, compiled_home, "--workers", "1", "--timeout", "5s", "-m", "32m") as server:
        yield server


def exchange(server: Server, data: bytes) -> bytes:
    """Send `data` on a connection of its own and read until the server closes it."""
    with server.raw() as sock:
        sock.sendall(data)
        return read_response(sock)


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


SMUGGLING = {
    "content-length and transfer-encoding": b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
                                            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked, identity": b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "two content-lengths": b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    "a comma-listed content-length": b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 4\r\n\r\nabcd",
    "obs-fold": b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n x-b: 2\r\n\r\n",
    "a LF ending a field name": b"GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding\n: chunked\r\n\r\n",
    "a LF ending the method": b"GET\n / HTTP/1.1\r\nhost: x\r\n\r\n",
    "HTTP/1.0 chunked": b"POST /echo HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "a chunk size past 64 bits": b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "a chunk size that is not hex": b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                                    b"zz\r\n0\r\n\r\n",
    "a space before a chunk size": b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n 3\r\nabc\r\n"
                                   b"0\r\n\r\n",
    "a bare LF in a chunk extension": b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                                      b"3;x\n0\r\n\r\nabc\r\n0\r\n\r\n",
    "chunk data longer than its size": b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                                       b"3\r\nabcdef\r\n0\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
    "an authority-form target": b"GET a.example:80 HTTP/1.1\r\nhost: a.example\r\n\r\n",
}


@pytest.mark.parametrize("case", SMUGGLING)
def test_a_request_framed_two_ways_is_never_followed_by_the_request_smuggled_behind_it(tiny_server, case):
    response = exchange(tiny_server, SMUGGLING[case] + PIPELINED)
    assert response.count(b"HTTP/1.1 ") == 1, response  # the connection ended with the first answer
    if "chunk" not in case:  # the head is refused, before any guest; a chunk's fault is met while it reads
        assert status(response) in (400, 501), response


def test_an_absolute_form_target_gives_the_guest_its_path_and_authority(tiny_server):
    response = exchange(tiny_server, b"POST http://a.example/echo HTTP/1.1\r\nhost: b.example\r\n"
                                     b"content-length: 5\r\nconnection: close\r\n\r\nhello")
    head, _, body = response.partition(b"\r\n\r\n")
    assert status(head) == 200 and dechunk(body)[0] == b"hello", response  # /echo, not the greeting


def test_an_http_1_0_client_gets_no_chunked_answer_and_a_keep_alive_it_can_see(tiny_server):
    with tiny_server.raw() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        head, _, body = read_response(sock).partition(b"\r\n\r\n")  # the server closes: the body ends there
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head, head
    assert body == b"Hello from a wasi:http component!\n"


@pytest.mark.parametrize("code", [100, 101, 103])
def test_a_guest_answering_an_interim_status_gets_a_500_as_from_hyper(attacker, code):
    response = exchange(attacker, f"GET /status/{code} HTTP/1.1\r\nhost: x\r\n\r\n".encode() + PIPELINED)
    assert status(response) == 500 and response.count(b"HTTP/1.1 ") == 1, response


@pytest.mark.parametrize("code", [204, 304])
def test_a_body_on_a_response_that_may_have_none_is_not_sent(attacker, code):
    response = exchange(attacker, f"GET /status/{code} HTTP/1.1\r\nhost: x\r\n\r\n".encode() + PIPELINED)
    first, _, rest = response.partition(b"\r\n\r\n")
    assert status(first) == code and b"transfer-encoding" not in first, response
    assert rest.startswith(b"HTTP/1.1 404 "), response  # the next answer (to /smuggled) follows the head at once


def test_header_names_values_methods_and_authorities_with_line_breaks_are_refused_to_the_guest(attacker):
    head, _, body = exchange(attacker, b"GET /syntax HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").partition(
        b"\r\n\r\n")
    assert dechunk(body)[0].split() == [b"err"] * 11
    assert re.search(rb"[^\r]\n|\r[^\n]|\0", head) is None, head


def test_a_head_answered_with_a_length_and_no_body_is_no_failure(attacker):
    response = exchange(attacker, b"HEAD /head HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert response == b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n"


def test_what_the_guest_makes_its_host_hold_is_bounded_by_its_memory_limit(tiny, compiled_home):
    with serving(tiny["0.2.0"], compiled_home, "--workers", "1", "-m", "16m") as server:
        for attack in ("hold", "hold-body"):  # 1 MiB header values, or bodies written before a response is set
            assert server.get(f"/{attack}/20")[0] == 500
            server.stderr_line(f"GET /{attack}/20: .*over 16 MiB held by the host for this request")
            assert server.get(f"/{attack}/4") == (200, b"Hello from a wasi:http component!\n")  # under it: served


def test_blocking_write_zeroes_writes_every_zero_asked_for(attacker):
    head, _, body = exchange(attacker, b"GET /zeroes/3000000 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                             ).partition(b"\r\n\r\n")
    assert dechunk(body)[0] == bytes(3000000)


def test_a_guest_waiting_on_trailers_it_never_read_up_to_gets_them_when_they_come(attacker):
    response = exchange(attacker, b"POST /trailers-first HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                                  b"connection: close\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n")
    assert status(response) == 200 and b"late: False" in response, response


def test_the_worker_serves_on_after_every_attack(tiny_server, attacker):
    assert tiny_server.get("/") == (200, b"Hello from a wasi:http component!\n")
    assert attacker.get("/status/201") == (201, b"body")
