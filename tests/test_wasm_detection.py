"""Which bundles run as wasm: the containerd shim and wasmctr-runtime give the same answer for each.

Both hand a container that is not wasm to runc; here "runc" is a stand-in that records being run, so
a bundle's answer is whether it ran. A bundle said to be wasm whose program is not WebAssembly fails
in both with the same reason, rather than one of them handing it to runc.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = str(Path(sys.executable).parent / "wasmctr-runtime")
NOT_WASM = "#!/bin/sh\necho native\n"

# name: (annotations, program path in the rootfs, is the program WebAssembly, expected: runs as wasm)
BUNDLES: dict[str, tuple[dict[str, str], str, bool, bool]] = {
    "variant annotation only": ({"module.wasm.image/variant": "compat"}, "/bin/app", False, True),
    "handler annotation only": ({"run.oci.handler": "wasm"}, "/bin/app", False, True),
    "magic only": ({}, "/bin/app", True, True),
    "none": ({}, "/bin/app", False, False),
    "smart handler, no .wasm name": ({"run.oci.handler": "wasm-smart"}, "/bin/app", True, False),
    "smart variant, .wasm name": ({"module.wasm.image/variant": "compat-smart"}, "/bin/app.wasm", True, True),
    "smart variant, not WebAssembly": ({"module.wasm.image/variant": "compat-smart"}, "/bin/app.wasm", False, False),
    "a pod's sandbox, even with the handler": (
        {"run.oci.handler": "wasm", "io.kubernetes.cri.container-type": "sandbox"}, "/bin/app", True, False),
}


def make_bundle(where: Path, annotations: dict[str, str], program: str, wasm: bool, hostile_wasm: Path) -> Path:
    """A bundle containerd's snapshotter could have made (its own mount namespace, a root below it), so
    that the shim would hand it to runc if it is not wasm."""
    bundle = where / "bundle"
    host_program = bundle / "rootfs" / program.lstrip("/")
    host_program.parent.mkdir(parents=True)
    if wasm:
        shutil.copy(hostile_wasm, host_program)
    else:
        host_program.write_text(NOT_WASM)
        host_program.chmod(0o755)
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": [program, "spin"], "cwd": "/"},
        "annotations": annotations, "linux": {"namespaces": [{"type": "mount"}]}}))
    return bundle


def stand_in_runc(where: Path) -> tuple[Path, Path]:
    """A runc that records being run and fails; returns it and the file it leaves."""
    ran = where / "runc-ran"
    stand_in = where / "runc"
    stand_in.write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    stand_in.chmod(0o755)
    return stand_in, ran


def runtime_answer(where: Path, bundle: Path) -> tuple[bool, str]:
    """wasmctr-runtime `create`: (ran as wasm, why it failed if it did), its container deleted after."""
    stand_in, ran = stand_in_runc(where)
    root = where / "runtime-root"
    errors = where / "stderr"
    with errors.open("w") as stderr:  # a file: the container process create leaves behind holds it open
        created = subprocess.run([RUNTIME, "--root", str(root), "--delegate", str(stand_in), "create", "--bundle",
                                  str(bundle), "detect"], stdout=subprocess.DEVNULL, stderr=stderr, timeout=60)
    if created.returncode == 0:
        subprocess.run([RUNTIME, "--root", str(root), "delete", "--force", "detect"], check=True, timeout=60)
    said = errors.read_text()
    assert "Traceback" not in said, said
    return not ran.exists(), said.strip()


def shim_answer(where: Path, bundle: Path) -> tuple[bool, str]:
    """The shim's Create: (ran as wasm, why it failed if it did), its task deleted after."""
    from wasmctr_node.api import task_pb2
    from wasmctr_node.events import Publisher
    from wasmctr_node.native import Runc
    from wasmctr_node.tasks import TaskService
    from wasmctr_node.ttrpc import Call, RpcError

    stand_in, ran = stand_in_runc(where)
    service = TaskService(Publisher(None), "default", on_empty=lambda: None)
    service.runc = Runc(str(where / "runc-root"), binary=str(stand_in))
    why = ""
    try:
        service.create(task_pb2.CreateTaskRequest(id="detect", bundle=str(bundle)), Call({}, 0))
    except RpcError as exc:
        why = exc.message
    else:
        service.delete(task_pb2.DeleteRequest(id="detect"), Call({}, 0))
    return not ran.exists(), why


@pytest.mark.parametrize("case", sorted(BUNDLES))
def test_the_shim_and_the_runtime_cli_agree_on_which_bundles_are_wasm(tmp_path: Path, hostile_wasm: Path,
                                                                      case: str) -> None:
    annotations, program, wasm, expected = BUNDLES[case]
    bundle = make_bundle(tmp_path, annotations, program, wasm, hostile_wasm)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "shim").mkdir()
    by_runtime, runtime_why = runtime_answer(tmp_path / "runtime", bundle)
    by_shim, shim_why = shim_answer(tmp_path / "shim", bundle)
    assert (by_runtime, by_shim) == (expected, expected), (runtime_why, shim_why)
    if expected and not wasm:  # said to be wasm, and not WebAssembly: both refuse it, for that reason
        assert f"{program} is not WebAssembly" in runtime_why and f"{program} is not WebAssembly" in shim_why
    elif expected:
        assert runtime_why == shim_why == ""
