"""wasi:http/proxy components served by the installed `wasmctr run -p`, answering real HTTP clients: the
guests are Python built by componentize-py (tests/guests/http) and the C guest tiny.c for each wasi:http
version, the clients http.client and raw sockets, hostile where a limit is tested."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr
from proxies import read_response, serving
from services import wait_for
from tinyguest import NEWER, TINY_WITS


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
    server.stderr_line("deadline")


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
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 413 ")
        with server.raw() as sock:  # smuggling: two framings
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n")
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
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
            sent = 0
            with pytest.raises(OSError):
                while sent < 64 << 20:
                    sock.sendall(b"4000\r\n" + bytes(0x4000) + b"\r\n")
                    sent += 0x4000
            assert sent < 8 << 20
        assert server.get("/")[0] == 200  # and it serves on


def test_an_idle_connection_makes_room_and_past_max_concurrent_requests_in_flight_are_answered_503(
        proxies, compiled_home) -> None:
    with serving(proxies["echo"], compiled_home, "--workers", "1", "--max-concurrent", "1") as server:
        holder = server.connect()
        holder.request("POST", "/", body=b"kept")
        assert holder.getresponse().read() == b"kept"  # kept alive and idle: it holds the one place

        def served() -> bool:  # once the holder's guest has returned, its connection is idle and makes room
            conn = server.connect()
            try:
                conn.request("POST", "/", body=b"next")
                return conn.getresponse().read() == b"next"
            finally:
                conn.close()

        wait_for(served, 30, "the idle connection to be closed to make room")
        assert holder.sock is not None and holder.sock.recv(1) == b""  # the server closed the idle one
        holder.close()
        taken: list[tuple[socket.socket, bytes]] = []

        def in_flight() -> bool:  # a request whose body is still coming, echoed in part: the guest is running it
            sock = server.raw()
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\nhalf")
            answer = b""
            while b"half" not in answer:
                if not (chunk := sock.recv(65536)):  # 503: the connections before it were still ending
                    sock.close()
                    return False
                answer += chunk
            taken.append((sock, answer))
            return True

        wait_for(in_flight, 30, "a request in flight to take the one place")
        busy, answer = taken[0]
        assert server.get("/")[0] == 503  # it is not idle: no room is made
        busy.sendall(b"-done!")
        answer += read_response(busy)
        assert answer.startswith(b"HTTP/1.1 200") and b"-done!" in answer
        busy.close()


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


def test_only_the_first_of_two_signals_at_once_counts(tiny, compiled_home) -> None:
    """A process group signalled twice (GNU timeout, Ctrl-C pressed twice): the second signal came while
    the first was asking the server to stop, inside its lock, and the process hung for good."""
    for signum, code in ((signal.SIGINT, 0), (signal.SIGTERM, 143)):
        for _ in range(5):
            with serving(tiny["0.2.0"], compiled_home, "--workers", "2") as server:
                assert server.get("/")[0] == 200
                server.proc.send_signal(signum)
                server.proc.send_signal(signum)
                assert server.proc.wait(timeout=60) == code


def test_bad_publish_and_a_command_guest_fail_in_one_line(component_wasm, proxies) -> None:
    assert_one_line_error(wasmctr("run", "-p", "1.2.3:80", str(proxies["hello"]), check=False), 125, "-p")
    assert_one_line_error(wasmctr("run", "-p", check=False), 125, "-p")  # a flag's value missing: run's 125 too
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


@pytest.mark.parametrize("version", list(TINY_WITS))
def test_a_guest_of_each_wasi_http_version_is_served(tiny, compiled_home, version) -> None:
    """0.2.0, a middle release and the newest of WebAssembly/wasi-http: the host serves each at its own version."""
    body = os.urandom(300_000)
    with serving(tiny[version], compiled_home, "--workers", "1") as server:
        assert server.get("/") == (200, b"Hello from a wasi:http component!\n")
        conn = server.connect()
        conn.request("POST", "/echo", body=body)
        assert conn.getresponse().read() == body
        conn.close()


def test_a_guest_of_a_wasi_newer_than_the_hosts_fails_before_serving(tiny, compiled_home) -> None:
    proc = wasmctr("run", "-p", "127.0.0.1:0", str(tiny[NEWER]), check=False, env={"WASMCTR_HOME": str(compiled_home)})
    assert_one_line_error(proc, 125, f"@{NEWER}, newer than this host's wasi 0.2.9")


def test_reuse_lets_an_instance_serve_requests_in_turn_where_the_default_is_a_fresh_one(proxies,
                                                                                     compiled_home) -> None:
    """Over one kept-alive connection, whose next request is read once the last one's guest has returned (a
    new connection may come while it still runs after its answer, and get a new instance)."""
    for flags, counts in (((), [b"1", b"1"]), (("--reuse", "2"), [b"1", b"2", b"1"])):
        with serving(proxies["counter"], compiled_home, "--workers", "1", *flags) as server:
            conn = server.connect()
            assert [_get(conn, "/") for _ in counts] == counts
            conn.close()


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    return response.read()


def test_a_denied_interface_the_host_provides_is_refused_before_listening(proxies, compiled_home) -> None:
    """In one line, before the server says where it listens; the sockets componentize-py imports beside the
    proxy world are denied too (no --network), but the host does not provide them, so they refuse nothing."""
    assert b"wasi:sockets/" in proxies["counter"].read_bytes()
    proc = wasmctr("run", "-p", "127.0.0.1:0", "--deny-wasi", "wasi:random/*", str(proxies["counter"]), check=False,
                   env={"WASMCTR_HOME": str(compiled_home)})
    assert_one_line_error(proc, 125, "refused: the guest imports wasi:random/random@", "(denied by --deny-wasi)")
    assert "serving" not in proc.stderr and "wasi:sockets" not in proc.stderr


def test_with_syscall_policy_trap_only_the_requests_that_call_a_denied_interface_fail(proxies,
                                                                                   compiled_home) -> None:
    with serving(proxies["counter"], compiled_home, "--workers", "1", "--deny-wasi", "wasi:clocks/wall-clock",
                 "--syscall-policy", "trap") as server:
        assert server.get("/") == (200, b"1")
        assert server.get("/clock")[0] == 500  # the guest calls wall-clock's now: it traps
        server.stderr_line(r"GET /clock: .*wasi:clocks/wall-clock@0\.2\.\d+#now` has not been defined")
        assert server.get("/") == (200, b"1")
