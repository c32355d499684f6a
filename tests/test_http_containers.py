"""wasi:http/proxy components served as containers, as runwasi serves them: through containerd and the shim
(`ctr run --net-host`), through `wasmctr-runtime`, and in a Kubernetes pod through the CRI, each answering
real HTTP requests at `WASMTIME_HTTP_PROXY_SOCKET_ADDR`, with limits from annotations, and draining a
request in flight when stopped: exit 0 after SIGINT, 143 after SIGTERM."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import WASMCTR_RUNTIME, runtime, wasmctr
from cri import api_pb2 as cri
from cri.node import Node, node_config, node_images
from services import SHIM_RUNTIME, Containerd, free_port, wait_for, wait_for_nothing_left

HELLO = b"Hello from a wasi:http component!\n"
ADDRESS_VARIABLE = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def answers(port: int) -> bool:
    return get(port) == (200, HELLO)


def post(port: int, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/", body=body)
        return conn.getresponse().status
    finally:
        conn.close()


class InFlight:
    """A chunked request to the echo guest, half sent: it is in flight until `finish` sends the rest."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        self.received = b""
        while b"first" not in self.received:  # echoed: the guest is running this request
            self.received += self.sock.recv(65536)

    def finish(self) -> bytes:
        self.sock.sendall(b"4\r\nlast\r\n0\r\n\r\n")
        while not self.received.endswith(b"0\r\n\r\n"):
            chunk = self.sock.recv(65536)
            assert chunk, self.received
            self.received += chunk
        self.sock.close()
        return self.received


@pytest.fixture(scope="module")
def proxy_images(proxies, plain_registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The hello and echo guests as images in the test registry."""
    home = tmp_path_factory.mktemp("proxy-store")
    refs = {}
    for name in ("hello", "echo"):
        refs[name] = f"{plain_registry.host}/proxy-{name}:1"
        wasmctr("build", str(proxies[name]), "-t", refs[name], "--push", env={"WASMCTR_HOME": str(home)})
    return refs


def test_the_shim_serves_at_the_runwasi_address_with_annotated_limits_and_drains(  # type: ignore[no-untyped-def]
        containerd, proxy_images) -> None:
    for ref in proxy_images.values():
        containerd.ctr("image", "pull", "--plain-http", "--platform", "wasi/wasm", ref, check=True)
    for signal_name, code in (("SIGTERM", 143), ("SIGINT", 0)):
        port = free_port()
        name = f"proxy-{signal_name.lower()}"
        runner = subprocess.Popen(
            ["ctr", "--address", str(containerd.socket), "run", *SHIM_RUNTIME, "--platform", "wasi/wasm", "--rm",
             "--net-host", "--env", f"{ADDRESS_VARIABLE}=127.0.0.1:{port}",
             "--annotation", "wasmctr.io/http-max-body=1k", proxy_images["echo"], name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: runner.poll() is not None or post(port, b"ping") == 200, 180,  # noqa: B023
                     "the echo guest to answer")
            assert runner.poll() is None, runner.communicate()
            assert post(port, b"x" * 2048) == 413  # the annotation's body limit
            request = InFlight(port)
            containerd.ctr("task", "kill", "--signal", signal_name, name, check=True)
            wait_for(lambda: not _accepts(port), 30, "the server to stop accepting")  # noqa: B023
            assert request.finish().endswith(b"4\r\nlast\r\n0\r\n\r\n")  # the request in flight ended whole
            _, err = runner.communicate(timeout=60)
            assert runner.returncode == code, err
        finally:
            if runner.poll() is None:
                containerd.ctr("task", "kill", "--signal", "SIGKILL", name)
                runner.communicate(timeout=60)
    wait_for_nothing_left(containerd)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


def test_wasmctr_runtime_serves_a_proxy_bundle_sigterm_ends_it_143_and_sigkill_takes_its_workers(
        proxies, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    shutil.copy(proxies["hello"], bundle / "rootfs" / "proxy.wasm")
    port = free_port()
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
              "process": {"args": ["/proxy.wasm"], "env": [f"{ADDRESS_VARIABLE}=127.0.0.1:{port}"], "cwd": "/"},
              "annotations": {"run.oci.handler": "wasm", "wasmctr.io/http-workers": "2"}}
    (bundle / "config.json").write_text(json.dumps(config))
    root = tmp_path / "root"
    for signal_name in ("SIGTERM", "SIGKILL"):
        name = signal_name.lower()
        runner = subprocess.Popen([WASMCTR_RUNTIME, "--root", str(root), "run", "--bundle", str(bundle), name],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={"WASMCTR_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
        try:
            wait_for(lambda: answers(port), 180, "the proxy to answer")  # noqa: B023
            assert all(answers(port) for _ in range(5))
            state = json.loads(runtime(root, "state", name).stdout)
            workers = _children(state["pid"])
            assert len(workers) == 2
            assert runtime(root, "kill", name, signal_name).returncode == 0
            _, err = runner.communicate(timeout=60)
            assert runner.returncode == (143 if signal_name == "SIGTERM" else 137), err
            wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10,  # noqa: B023
                     "the workers to end with their parent")
            if signal_name == "SIGTERM":
                assert "serving http://127.0.0.1:" in err and "(2 workers)" in err
        finally:
            if runner.poll() is None:
                runtime(root, "kill", name, "SIGKILL")
                runner.communicate(timeout=60)
            runtime(root, "delete", "--force", name)


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def test_a_bad_address_or_http_annotation_fails_create_in_one_line(proxies, tmp_path: Path) -> None:
    for env, notes, fragment in (
            ([f"{ADDRESS_VARIABLE}=nowhere"], {}, ADDRESS_VARIABLE),
            ([], {"wasmctr.io/http-max-body": "lots"}, "wasmctr.io/http-max-body"),
            ([], {"wasmctr.io/http-workers": "0"}, "wasmctr.io/http-workers")):
        bundle = tmp_path / f"bundle-{len(env)}-{len(notes)}-{fragment[-4:]}"
        (bundle / "rootfs").mkdir(parents=True)
        shutil.copy(proxies["hello"], bundle / "rootfs" / "proxy.wasm")
        config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                  "process": {"args": ["/proxy.wasm"], "env": env, "cwd": "/"}, "annotations": notes}
        (bundle / "config.json").write_text(json.dumps(config))
        proc = runtime(tmp_path / "root", "create", "--bundle", str(bundle), "bad")
        assert proc.returncode != 0 and fragment in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_kubernetes_pod_serves_a_proxy_and_stops_it_with_sigterm(  # type: ignore[no-untyped-def]
        proxy_images, plain_registry, tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("cri-http")
    refs = node_images(work, plain_registry.host)
    containerd = Containerd(work / "ctd", extra_config=node_config(plain_registry.host, refs["pause"])).start()
    client = Node(containerd.socket, work / "logs")
    try:
        client.pull(proxy_images["echo"])
        port = free_port()
        pod, config = client.run_pod("http", annotations={"wasmctr.io/http-max-body": "1k"})
        container = client.create(pod, config, "echo", proxy_images["echo"], [],
                                  env={ADDRESS_VARIABLE: f"127.0.0.1:{port}"})
        client.start(container)
        wait_for(lambda: post(port, b"ping") == 200, 180, "the pod's echo guest to answer")
        assert post(port, b"x" * 2048) == 413  # the pod annotation's body limit
        client.runtime.StopContainer(cri.StopContainerRequest(container_id=container, timeout=30), timeout=60)
        status = client.wait_exited(container)
        assert status.exit_code == 143, status
        assert not _accepts(port)
        client.remove_pod(pod)
    finally:
        client.close()
        containerd.stop()
