"""Native (not wasm) containers under containerd-shim-wasmctr-v1: they run through runc with the task's
stdio and exit code, a terminal is refused, and a bundle runc should not see (a root that is the
host's `/` or outside the bundle, or no mount namespace of its own) fails Create before runc runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from services import SHIM_RUNTIME as RUNTIME
from services import wait_for_nothing_left


def test_terminals_are_refused_and_native_containers_run_through_runc(containerd, images,  # type: ignore[no-untyped-def]
                                                                      plain_registry, tmp_path: Path) -> None:
    """A native image runs through runc with the task's stdio and exit code; a `--rootfs` outside the
    bundle (containerd's snapshotter always mounts the rootfs in it) is refused by the shim, not runc."""
    from cri.node import native_image
    command = (f"ctr --address {containerd.socket} run {' '.join(RUNTIME)} --platform wasi/wasm --rm -t "
               f"{images['hello']} tty-1")
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)  # ctr -t wants a console: script gives it one
    assert tty.returncode != 0 and "terminal (-t) is not supported" in tty.stdout
    busybox = native_image(tmp_path / "busybox", f"{plain_registry.host}/shim-busybox:1",
                           {"bin/busybox": Path("/bin/busybox").read_bytes()}, ["/bin/busybox"])  # static
    containerd.ctr("image", "pull", "--plain-http", busybox, check=True)
    proc = subprocess.run(["ctr", "--address", str(containerd.socket), "run", *RUNTIME, "--rm", busybox,
                           "native-1", "/bin/busybox", "echo", "native through runc"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "native through runc\n", proc.stderr
    failing = subprocess.run(["ctr", "--address", str(containerd.socket), "run", *RUNTIME, "--rm", busybox,
                              "native-2", "/bin/busybox", "sh", "-c", "exit 7"],
                             capture_output=True, text=True, timeout=60)
    assert failing.returncode == 7, failing.stderr
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    outside = subprocess.run(["ctr", "--address", str(containerd.socket), "run", *RUNTIME, "--rm", "--rootfs",
                              str(rootfs), "native-3", "/bin/busybox", "echo", "outside"],
                             capture_output=True, text=True, timeout=60)
    assert outside.returncode != 0 and "is not a directory below the bundle" in outside.stderr, outside.stderr
    for name in ("tty-1", "native-3"):
        containerd.ctr("container", "delete", name)
    wait_for_nothing_left(containerd)


@pytest.mark.parametrize("root, namespaces, why", [
    ("/", [], "needs a mount namespace of its own"),
    ("rootfs", [{"type": "mount", "path": "/proc/1/ns/mnt"}], "needs a mount namespace of its own"),
    ("/", [{"type": "mount"}], "is the host's root"),
    ("link", [{"type": "mount"}], "is the host's root"),
    ("bound", [{"type": "mount"}], "is the host's root"),  # `/` bind-mounted below the bundle
    ("rootfs/../..", [{"type": "mount"}], "is not a directory below the bundle"),
    (".", [{"type": "mount"}], "is not a directory below the bundle"),
])
def test_the_shim_refuses_a_native_bundle_runc_should_not_see(tmp_path: Path, root: str, namespaces: list,  # type: ignore[type-arg]
                                                               why: str, request: pytest.FixtureRequest) -> None:
    """A native (sandbox) container whose root is the host's / or outside the bundle, or that has no mount
    namespace of its own, fails Create before runc runs: the shim's runc here is a stand-in that
    records being run, and a sane bundle (last) shows it would have been."""
    from wasmctr_node.api import task_pb2
    from wasmctr_node.events import Publisher
    from wasmctr_node.native import Runc
    from wasmctr_node.tasks import TaskService
    from wasmctr_node.ttrpc import Call, Code, RpcError

    ran = tmp_path / "runc-ran"
    stand_in = tmp_path / "runc"
    stand_in.write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    stand_in.chmod(0o755)
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "link").symlink_to("/")
    if root == "bound":
        (bundle / "bound").mkdir()
        subprocess.run(["mount", "--bind", "/", str(bundle / "bound")], check=True)
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(bundle / "bound")], check=True))
    service = TaskService(Publisher(None), "default", on_empty=lambda: None)
    service.runc = Runc(str(tmp_path / "runc-root"), binary=str(stand_in))

    def create(root: str, namespaces: list) -> RpcError:  # type: ignore[type-arg]
        (bundle / "config.json").write_text(json.dumps({
            "ociVersion": "1.0.2", "root": {"path": root}, "process": {"args": ["/pause"], "cwd": "/"},
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            "linux": {"namespaces": namespaces}}))
        with pytest.raises(RpcError) as refused:
            service.create(task_pb2.CreateTaskRequest(id="native", bundle=str(bundle)), Call({}, 0))
        return refused.value

    refused = create(root, namespaces)
    assert refused.code == Code.FAILED_PRECONDITION and why in refused.message, refused.message
    assert not ran.exists() and not (bundle / "runc-log.json").exists()
    sane = create("rootfs", [{"type": "mount"}, {"type": "pid"}])
    assert ran.exists() and "runc create" in sane.message
