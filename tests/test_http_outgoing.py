"""Outgoing requests of wasi:http/proxy components served by the installed `wasmctr run -p`: made only with
`--network host` to a host `--allow-host` names, streamed both ways, failures as the guest's error-codes.
The guest (tests/guests/http/fetch.py) forwards each request to the `x-upstream` its client names; the
upstreams are a small Python HTTP server and bare sockets on 127.0.0.1 that tell whether anyone connected."""

from __future__ import annotations

import http.client
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line_error, componentize, wasmctr
from proxies import serving

from wasmctr.errors import UsageError
from wasmctr.running import ocispec
from wasmctr.running.http.serving import parse_allow_hosts

BIG = os.urandom((1 << 20) + 54321)


@pytest.fixture(scope="module")
def fetch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return componentize(("fetch",), tmp_path_factory.mktemp("fetch"))["fetch"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http-outgoing-home")


class _Upstream(http.server.BaseHTTPRequestHandler):
    """GET answers BIG; POST the body it read (chunked or not). `x-seen` says what arrived."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(BIG)

    def do_POST(self) -> None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer(body)

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-seen", f"{self.command} {self.path} host={self.headers['host']} "
                                   f"te={self.headers.get('transfer-encoding', '-')}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """The HTTP upstream's port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def untouched() -> Iterator[socket.socket]:
    """A listening socket no test should reach: a connection to it waits in its backlog, for `accept`."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.setblocking(False)
        yield sock


def assert_never_reached(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


def forward(port: int, upstream: str, method: str = "GET", body: Any = None,
            chunked: bool = False) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, "/path?q=1", body=body, headers={"x-upstream": upstream}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response, response.read()
    finally:
        conn.close()


def test_an_allowed_host_answers_and_large_bodies_stream_both_ways(fetch, home, upstream) -> None:
    with serving(fetch, home, "--workers", "1", "--network", "host",
                 "--allow-host", f"other.example,127.0.0.1:{upstream}") as server:
        status, response, body = forward(server.port, f"127.0.0.1:{upstream}")
        assert (status, len(body)) == (200, len(BIG)) and body == BIG
        assert response.getheader("x-seen") == f"GET /path?q=1 host=127.0.0.1:{upstream} te=-"

        sent = os.urandom((1 << 20) + 12345)  # chunked in, so chunked up: the host frames what it streams
        pieces = (sent[i:i + 65536] for i in range(0, len(sent), 65536))
        status, response, body = forward(server.port, f"127.0.0.1:{upstream}", "POST", pieces, chunked=True)
        assert status == 200 and body == sent
        assert response.getheader("x-seen") == f"POST /path?q=1 host=127.0.0.1:{upstream} te=chunked"

        status, response, body = forward(server.port, f"127.0.0.1:{upstream}", "POST", sent[:65536])
        assert status == 200 and body == sent[:65536]  # with a content-length, sent as it is
        assert response.getheader("x-seen").endswith("te=-")


def test_a_host_the_allowlist_does_not_name_is_denied_without_a_connection(fetch, home, upstream,
                                                                             untouched) -> None:
    other = untouched.getsockname()[1]
    with serving(fetch, home, "--workers", "1", "--network", "host", "--allow-host", f"127.0.0.1:{upstream}",
                 "--allow-host", "localhost:1") as server:
        for target in (f"127.0.0.1:{other}",  # another port
                       f"localhost:{upstream}",  # another name for the host listed: names are compared
                       f"localhost:{other}",  # a name listed, with another port
                       f"127.0.0.2:{upstream}"):  # the port, on another host
            assert forward(server.port, target)[::2] == (502, b"ErrorCode_HttpRequestDenied"), target
        assert forward(server.port, f"127.0.0.1:{upstream}")[0] == 200
    assert_never_reached(untouched)


def test_without_the_network_every_outgoing_request_is_denied(fetch, home, untouched) -> None:
    port = untouched.getsockname()[1]
    with serving(fetch, home, "--workers", "1") as server:
        assert forward(server.port, f"127.0.0.1:{port}")[::2] == (502, b"ErrorCode_HttpRequestDenied")
    assert_never_reached(untouched)


@contextmanager
def answering(reply: bytes) -> Iterator[int]:
    """A bare upstream's port: it reads one request head, sends `reply` and closes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def answer() -> None:
            client, _ = listener.accept()
            with client:
                seen = b""
                while b"\r\n\r\n" not in seen and (chunk := client.recv(65536)):
                    seen += chunk
                client.sendall(reply)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        yield listener.getsockname()[1]
        thread.join(timeout=60)


def test_failures_upstream_are_the_guests_error_codes(fetch, home) -> None:
    with socket.socket() as closed, serving(fetch, home, "--workers", "1", "--network", "host", "--allow-host", "*",
                                            "--max-header-bytes", "4k") as server:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection to it is refused
        port = closed.getsockname()[1]
        assert forward(server.port, f"127.0.0.1:{port}")[::2] == (502, b"ErrorCode_ConnectionRefused")
        with answering(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n") as port:
            assert forward(server.port, f"127.0.0.1:{port}")[::2] == (502, b"ErrorCode_HttpResponseHeaderSectionSize")
        with answering(b"HTTP/1.1 200 OK\r\n") as port:  # and closes in the head
            assert forward(server.port, f"127.0.0.1:{port}")[::2] == (502, b"ErrorCode_HttpResponseIncomplete")
        with answering(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nto the close") as port:
            status, response, body = forward(server.port, f"127.0.0.1:{port}")
            assert (status, body) == (200, b"to the close")  # no length, not chunked: the body ends at the close


def test_allow_host_needs_the_network_and_a_host(fetch) -> None:
    assert_one_line_error(wasmctr("run", "--allow-host", "127.0.0.1:80", str(fetch), check=False), 125,
                          "--allow-host needs --network host")
    assert_one_line_error(wasmctr("run", "--network", "host", "--allow-host", "a b:80", str(fetch), check=False),
                          125, "--allow-host 'a b:80'")


def test_the_allowlist_annotation_lists_hosts_by_commas() -> None:
    assert parse_allow_hosts(["a.example:80, B.Example.,[::1]:8080", "*"]) == [
        ("a.example", 80), ("b.example", None), ("::1", 8080), ("*", None)]
    with pytest.raises(UsageError) as bad:
        parse_allow_hosts(["a.example:http"])
    assert ocispec.explain(bad.value).startswith(f"{ocispec.ALLOW_HOSTS_ANNOTATION} 'a.example:http'")
