"""wasi:http/proxy components served by the installed `wasmctr run -p`, answering real HTTP clients: the
guests are Python built by componentize-py (tests/guests/http), the clients http.client and raw sockets,
hostile where a limit is tested."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr
from services import wait_for


@pytest.fixture(scope="session")
def compiled_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for every server of the session: each guest is compiled once, then mapped from the cache."""
    return tmp_path_factory.mktemp("http-home")


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port = proc, port

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=60)

    def get(self, path: str = "/") -> tuple[int, bytes]:
        conn = self.connect()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@contextmanager
def serving(wasm: Path, home: Path, *flags: str) -> Iterator[Server]:
    """`wasmctr run -p 127.0.0.1:0 FLAGS WASM`, once it says where it listens; stopped by SIGTERM after."""
    exe = shutil.which("wasmctr", path=str(Path(sys.executable).parent)) or "wasmctr"
    proc = subprocess.Popen([exe, "run", "-p", "127.0.0.1:0", *flags, str(wasm)], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "WASMCTR_HOME": str(home)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first line: where it serves (or why it cannot)
        found = re.match(r"wasmctr: serving http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + proc.stderr.read()
        yield Server(proc, int(found.group(1)))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_hello_answers_requests_over_one_kept_alive_connection(proxies, compiled_home) -> None:
    with serving(proxies["hello"], compiled_home, "--workers", "1") as server:
        conn = server.connect()
        for _ in range(3):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"Hello from a wasi:http component!\n")
            assert response.getheader("content-type") == "text/plain"
        first = conn.sock
        conn.request("GET", "/again")
        assert conn.getresponse().read() and conn.sock is first  # the same connection throughout
        conn.close()


def test_guest_error_code_and_trap_answer_500_and_the_server_goes_on(proxies, compiled_home) -> None:
    with serving(proxies["hello"], compiled_home, "--workers", "1") as server:
        assert server.get("/error/denied")[0] == 500  # as `wasmtime serve` answers every error-code
        assert server.get("/error/internal")[0] == 500
        assert server.get("/") == (200, b"Hello from a wasi:http component!\n")
    with serving(proxies["trap"], compiled_home, "--workers", "1") as server:
        assert server.get("/")[0] == 500
        assert server.get("/")[0] == 500  # a fresh instance per request: the trap left nothing behind


def test_echo_streams_a_large_body_both_ways(proxies, compiled_home) -> None:
    body = os.urandom(1 << 20)
    with serving(proxies["echo"], compiled_home, "--workers", "1") as server:
        conn = server.connect()
        conn.request("POST", "/up?x=1", body=body)
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("x-method") == "POST"
        assert response.getheader("x-path") == "/up?x=1"
        assert response.read() == body


def test_echo_answers_a_chunk_before_the_request_body_has_ended(proxies, compiled_home) -> None:
    """Streamed, not buffered: the first chunk comes back while the client still holds the rest."""
    with serving(proxies["echo"], compiled_home, "--workers", "1") as server, server.raw() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        seen = b""
        while b"first" not in seen:
            chunk = sock.recv(65536)
            assert chunk, seen
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        rest = seen + read_response(sock)
        assert rest.endswith(b"6\r\nsecond\r\n0\r\n\r\n")


def test_a_spinning_guest_is_stopped_at_its_deadline(proxies, compiled_home) -> None:
    with serving(proxies["spin"], compiled_home, "--workers", "1", "--timeout", "1s") as server:
        assert server.get("/")[0] == 500
        assert server.get("/")[0] == 500  # the worker is free again
    assert "deadline" in server.proc.stderr.read()  # type: ignore[union-attr]


def test_limits_refuse_hostile_heads_and_bodies(proxies, compiled_home) -> None:
    with serving(proxies["echo"], compiled_home, "--workers", "1", "--max-body", "64k", "--max-headers", "10",
                 "--max-header-bytes", "4k", "--header-timeout", "1s") as server:
        with server.raw() as sock:  # huge header
            sock.sendall(b"GET / HTTP/1.1\r\nx: " + b"a" * 8192 + b"\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 431 ")
        with server.raw() as sock:  # too many headers
            sock.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"x%d: y\r\n" % i for i in range(20)) + b"\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 431 ")
        with server.raw() as sock:  # a length over the limit: refused before the guest runs
            sock.sendall(b"POST / HTTP/1.1\r\ncontent-length: 1000000\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 413 ")
        with server.raw() as sock:  # smuggling: two framings
            sock.sendall(b"POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 400 ")
        with server.raw() as sock:  # slowloris: a head that never ends
            sock.sendall(b"GET / HTTP/1.1\r\n")
            for _ in range(10):
                try:
                    sock.sendall(b"x-slow: 1\r\n")
                except OSError:
                    break
                time.sleep(0.3)
            assert read_response(sock).startswith(b"HTTP/1.1 408 ")
        with server.raw() as sock:  # an endless chunked body: the stream fails at the limit
            sock.sendall(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n")
            sent = 0
            with pytest.raises(OSError):
                while sent < 64 << 20:
                    sock.sendall(b"4000\r\n" + bytes(0x4000) + b"\r\n")
                    sent += 0x4000
            assert sent < 8 << 20
        assert server.get("/")[0] == 200  # and it serves on


def test_over_max_concurrent_connections_are_answered_503(proxies, compiled_home) -> None:
    with serving(proxies["hello"], compiled_home, "--workers", "1", "--max-concurrent", "1") as server:
        holder = server.connect()
        holder.request("GET", "/")
        assert holder.getresponse().read()  # kept alive: it holds the one place
        assert server.get("/")[0] == 503
        holder.close()


def test_workers_share_the_socket_and_stop_on_sigint_and_sigterm(proxies, compiled_home) -> None:
    for signum, code in ((signal.SIGINT, 0), (signal.SIGTERM, 143)):
        with serving(proxies["hello"], compiled_home, "--workers", "2") as server:
            def workers() -> list[str]:
                return subprocess.run(["ps", "--ppid", str(server.proc.pid), "-o", "pid="], capture_output=True,
                                      text=True).stdout.split()

            wait_for(lambda: len(workers()) == 2, what="two workers")  # forked after the line saying where
            children = workers()
            assert all(server.get("/")[0] == 200 for _ in range(6))
            server.proc.send_signal(signum)
            assert server.proc.wait(timeout=60) == code
            for child in children:
                assert not os.path.exists(f"/proc/{child}")


def test_bad_publish_and_a_command_guest_fail_in_one_line(component_wasm, proxies) -> None:
    assert_one_line_error(wasmctr("run", "-p", "1.2.3:80", str(proxies["hello"]), check=False), 125, "-p")
    assert_one_line_error(wasmctr("run", "-p", "8080", str(component_wasm), check=False), 125,
                          "not a wasi:http proxy")


def test_an_image_of_a_proxy_is_named_a_proxy_and_served(proxies, compiled_home, component_wasm) -> None:
    env = {"WASMCTR_HOME": str(compiled_home)}
    wasmctr("build", str(proxies["hello"]), "-t", "proxy:1", env=env)
    shown = wasmctr("inspect", "proxy:1", env=env).stdout
    assert "World:       proxy (wasi:http 0.2.0, 0.2.9)" in shown  # it exports 0.2.0, imports 0.2.9
    wasmctr("build", str(component_wasm), "-t", "command:1", env=env)
    assert "World:       command" in wasmctr("inspect", "command:1", env=env).stdout
    with serving(Path("proxy:1"), compiled_home, "--workers", "1") as server:
        assert server.get("/") == (200, b"Hello from a wasi:http component!\n")
