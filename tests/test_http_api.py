"""wasi:http/proxy components from Python: `wasmctr.http_proxy` calls one in this process (no socket to
listen on), through the host code the server runs, and `wasmctr.run(publish=...)` serves one; instances are
fresh per request unless reuse is asked for. The guests are tests/guests/http's, built by componentize-py."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import wasmctr
from wasmctr.errors import UsageError, WasmctrError


def test_a_request_in_process_is_answered_with_status_headers_and_body(proxies, compiled_home) -> None:
    with wasmctr.http_proxy(str(proxies["hello"]), store=wasmctr.Store(compiled_home)) as proxy:
        response = proxy.request("GET", "/")
        assert (response.status, response.body) == (200, b"Hello from a wasi:http component!\n")
        assert response.header("Content-Type") == "text/plain" and response.trailers == []
    body = os.urandom(1 << 20)
    with wasmctr.http_proxy(str(proxies["echo"]), store=wasmctr.Store(compiled_home)) as proxy:
        response = proxy.request("POST", "/up?x=1", headers=[("x-any", b"1")], body=body)
        assert response.status == 200 and response.body == body  # both ways at once: no stall on a full socket
        assert ("x-method", "POST") in response.headers and response.header("x-path") == "/up?x=1"
        head = proxy.request("HEAD", "/")
        assert (head.status, head.body, head.header("x-method")) == (200, b"", "HEAD")


def test_error_codes_traps_and_deadlines_answer_500_and_limits_hold_in_process(proxies, compiled_home) -> None:
    home = wasmctr.Store(compiled_home)
    with wasmctr.http_proxy(str(proxies["hello"]), max_body="64k", store=home) as proxy:
        assert proxy.request("GET", "/error/denied").status == 500  # as the server (and `wasmtime serve`) answer
        assert proxy.request("POST", "/", body=bytes(100_000)).status == 413  # the server's limit, before the guest
        assert proxy.request("GET", "/", headers=[("x", "a" * 70_000)]).status == 431
        with pytest.raises(UsageError, match="line break"):
            proxy.request("GET", "/", headers=[("x", "a\r\ninjected: 1")])
        assert proxy.request("GET", "/").status == 200
    with wasmctr.http_proxy(str(proxies["trap"]), store=home) as proxy:
        assert [proxy.request("GET", "/").status for _ in range(2)] == [500, 500]
    with wasmctr.http_proxy(str(proxies["spin"]), timeout="1s", store=home) as proxy:
        assert proxy.request("GET", "/").status == 500


def test_an_instance_is_fresh_per_request_unless_reuse_is_asked_and_a_trap_discards_it(proxies, compiled_home) -> None:
    home = wasmctr.Store(compiled_home)
    with wasmctr.http_proxy(str(proxies["counter"]), store=home) as proxy:
        assert [proxy.request("GET", "/").body for _ in range(3)] == [b"1", b"1", b"1"]
    with wasmctr.http_proxy(str(proxies["counter"]), reuse=3, store=home) as proxy:
        assert [proxy.request("GET", "/").body for _ in range(4)] == [b"1", b"2", b"3", b"1"]  # at most 3 each
        assert proxy.request("GET", "/trap").status == 500  # the instance that had served one traps...
        assert [proxy.request("GET", "/").body for _ in range(2)] == [b"1", b"2"]  # ...and is gone: a new one


def test_an_image_is_called_in_process_and_a_command_is_refused(proxies, compiled_home, component_wasm) -> None:
    home = wasmctr.Store(compiled_home)
    wasmctr.build(str(proxies["hello"]), "proxy:1", store=home)  # test_http's image: compiled once for both
    with wasmctr.http_proxy("proxy:1", store=home) as proxy:
        assert proxy.request("GET", "/").status == 200
    with pytest.raises(UsageError, match="not a wasi:http proxy component"):
        wasmctr.http_proxy(str(component_wasm))
    with pytest.raises(WasmctrError, match=r"^reuse: 0: expected a whole number from 1$"):
        wasmctr.http_proxy(str(proxies["hello"]), reuse=0)


def test_run_serves_a_proxy_until_sigint_with_the_public_api_alone(proxies, compiled_home) -> None:
    """`wasmctr.run(publish=...)` in a Python process of its own: it says where it listens, answers, and ends
    0 on SIGINT (Ctrl-C), as `wasmctr run -p` does."""
    script = (f"import wasmctr; r = wasmctr.run({str(proxies['counter'])!r}, publish='127.0.0.1:0', workers=1, "
              "reuse=2); print(r.returncode)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "WASMCTR_HOME": str(compiled_home)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.match(r"wasmctr: serving http://127\.0\.0\.1:(\d+)/ \(1 worker\)", line)
        assert found, line + proc.stderr.read()
        conn = http.client.HTTPConnection("127.0.0.1", int(found.group(1)), timeout=60)
        answers = []
        for _ in range(3):  # on one connection: each request is read once the last one's guest has returned
            conn.request("GET", "/")
            answers.append(conn.getresponse().read())
        conn.close()
        assert answers == [b"1", b"2", b"1"]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (0, "0\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_reuse_annotation_sets_a_container_s_reuse_and_a_bad_one_is_named(proxies, tmp_path: Path) -> None:
    from wasmctr.running.ocispec import spec_from_bundle

    (tmp_path / "rootfs").mkdir()
    shutil.copy(proxies["hello"], tmp_path / "rootfs" / "app.wasm")
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["/app.wasm"], "cwd": "/"},
              "annotations": {"wasmctr.io/http-reuse": "4"}}
    spec = spec_from_bundle(tmp_path, config)
    assert spec.serve is not None and spec.serve.reuse == 4
    config["annotations"] = {"wasmctr.io/http-reuse": "none"}
    with pytest.raises(WasmctrError) as raised:
        spec_from_bundle(tmp_path, config)
    assert str(raised.value) == ("bad wasmctr annotation: wasmctr.io/http-reuse: 'none': expected a whole number "
                                 "from 1")
