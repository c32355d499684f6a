"""wasmctr-runtime where other engines run runc: under containerd's runc shim (`ctr --runc-binary`),
native containers delegated to runc, Docker (`dockerd` with the runtime added) and podman
(`--runtime`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import WASMCTR_RUNTIME as RUNTIME
from conftest import wasmctr
from services import wait_for

VIA_RUNC_SHIM = ["--runtime", "io.containerd.runc.v2", "--runc-binary", RUNTIME]


def ctr(containerd, *args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(["ctr", "--address", str(containerd.socket), *args], capture_output=True, text=True,
                          input=input, timeout=60)


def test_ctr_runc_binary_runs_a_wasm_image(containerd, images) -> None:  # type: ignore[no-untyped-def]
    proc = ctr(containerd, "run", "--rm", *VIA_RUNC_SHIM, images["hello"], "rt-hello", "/hello.wasm", "runtime", "6")
    assert proc.stdout == "Hello, runtime!\nargc=3\n", proc.stderr
    assert proc.returncode == 6


def test_ctr_task_kill_stops_a_spinning_guest(containerd, images) -> None:  # type: ignore[no-untyped-def]
    runner = subprocess.Popen(["ctr", "--address", str(containerd.socket), "run", "--rm", *VIA_RUNC_SHIM,
                               images["hostile"], "rt-spin", "/hostile.wasm", "spin"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: "RUNNING" in ctr(containerd, "task", "ls").stdout, 10, "rt-spin to run")
    ctr(containerd, "task", "kill", "rt-spin")
    runner.communicate(timeout=30)  # the guest never ends by itself: ending at all is SIGTERM at work
    assert runner.returncode == 143


def test_native_containers_are_delegated_to_runc(containerd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
    proc = ctr(containerd, "run", "--rm", *VIA_RUNC_SHIM, "--rootfs", str(rootfs), "rt-native", "/bin/busybox",
               "echo", "delegated to runc")
    assert proc.returncode == 0 and proc.stdout == "delegated to runc\n", proc.stderr


def test_docker_add_runtime_runs_a_linux_platform_wasm_image(plain_registry, hello_c_wasm: Path,
                                                           tmp_path: Path) -> None:
    import docker
    from services import Dockerd

    ref = f"{plain_registry.host}/docker-hello:1"
    wasmctr("build", str(hello_c_wasm.parent), "-t", ref, "--platform", "linux/amd64", "--push",
            env={"WASMCTR_HOME": str(tmp_path / "store")})
    engine = Dockerd(Path(tempfile.mkdtemp(prefix="wasmctr-dockerd-")), RUNTIME).start()
    try:
        client = docker.DockerClient(base_url=engine.host)
        assert "wasmctr" in client.info()["Runtimes"]
        client.images.pull(ref)
        output = client.containers.run(ref, ["docker"], runtime="wasmctr", network_mode="none", remove=True,
                                       environment={"GREETING": "Hi"})
        assert output == b"Hi, docker!\nargc=2\n"
    finally:
        engine.stop()


def test_podman_runtime_flag_runs_a_wasm_image(plain_registry, hello_c_wasm: Path, tmp_path: Path) -> None:
    ref = f"{plain_registry.host}/podman-hello:1"
    wasmctr("build", str(hello_c_wasm.parent), "-t", ref, "--platform", "linux/amd64", "--push",
            env={"WASMCTR_HOME": str(tmp_path / "store")})
    storage = Path(tempfile.mkdtemp(prefix="wasmctr-podman-"))
    try:
        proc = subprocess.run(["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
                               "--runtime", RUNTIME, "run", "--rm", "--network", "none", "--tls-verify=false",
                               "-e", "GREETING=Hej", ref, "podman"], capture_output=True, text=True, timeout=180,
                              env={k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "Hej, podman!\nargc=2\n"
    finally:
        subprocess.run(["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "system",
                        "reset", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(storage, ignore_errors=True)
