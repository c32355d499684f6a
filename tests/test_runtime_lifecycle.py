"""wasmctr-runtime, the runc-compatible CLI, driven directly: create, start, state, ps, kill, delete,
list and run, OCI hooks, `#export` entrypoints, a reused pid never signalled, the shim's Create of the
same bundles, one-line errors (a spec it cannot honour, a malformed bundle, an unreadable state, an
unusable root), the light verbs' imports and JSON reader, and its version and features."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime
from conftest import WASMCTR_RUNTIME as RUNTIME
from conftest import runtime


def test_direct_lifecycle_and_the_specs_errors(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pid_file = tmp_path / "pid"
    create = subprocess.Popen([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "--pid-file",
                               str(pid_file), "--no-pivot", "c1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert create.wait(30) == 0
    state = json.loads(runtime(root, "state", "c1").stdout)
    assert state["status"] == "created" and state["pid"] == int(pid_file.read_text())
    assert state["bundle"] == str(bundle) and state["ociVersion"] and state["annotations"]["run.oci.handler"] == "wasm"
    assert "container with id c1 already exists" in runtime(root, "create", "--bundle", str(bundle), "c1").stderr
    assert runtime(root, "start", "c1").returncode == 0
    assert json.loads(runtime(root, "state", "c1").stdout)["status"] == "running"
    assert json.loads(runtime(root, "ps", "--format", "json", "c1").stdout) == [state["pid"]]
    again = runtime(root, "start", "c1")
    assert again.returncode == 1 and "cannot start a container that is running" in again.stderr
    log = tmp_path / "log.json"
    refused = runtime(root, "delete", "c1", log=log)
    assert refused.returncode == 1 and "not stopped" in refused.stderr
    assert json.loads(log.read_text().splitlines()[-1])["level"] == "error"
    assert runtime(root, "kill", "c1", "TERM").returncode == 0
    deadline = time.monotonic() + 5
    while json.loads(runtime(root, "state", "c1").stdout)["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(runtime(root, "state", "c1").stdout)["status"] == "stopped"
    assert runtime(root, "kill", "c1", "9").stderr.strip().endswith("container not running")
    assert runtime(root, "delete", "c1").returncode == 0
    assert "does not exist" in runtime(root, "state", "c1").stderr


def test_a_reused_pid_is_never_signalled(bundle: Path, tmp_path: Path) -> None:
    """The state file's pid now names another process (its start time differs from the recorded one):
    the container is stopped, and neither kill nor delete --force signals that process."""
    from wasmctr_node.process import start_time

    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state_dir = tmp_path / "root" / "reused"
        state_dir.mkdir(parents=True)
        (state_dir / "wasmctr.json").write_text(json.dumps({
            "ociVersion": "1.0.2", "id": "reused", "pid": bystander.pid, "bundle": str(bundle), "created": "",
            "owner": "", "annotations": {}, "init_process_start": start_time(bystander.pid) + 1}))
        assert json.loads(runtime(tmp_path / "root", "state", "reused").stdout)["status"] == "stopped"
        killed = runtime(tmp_path / "root", "kill", "reused", "KILL")
        assert killed.returncode != 0 and "not running" in killed.stderr
        assert runtime(tmp_path / "root", "delete", "--force", "reused").returncode == 0
        assert bystander.poll() is None and not state_dir.joinpath("wasmctr.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_the_shims_create_claims_its_id_atomically_and_honours_the_deadline(bundle: Path) -> None:
    """Two Creates of one id at once: one container, one ALREADY_EXISTS. A Create whose caller has given
    up (deadline answered) forks nothing and leaves no pid file."""
    import threading

    from wasmctr_node.api import task_pb2
    from wasmctr_node.events import Publisher
    from wasmctr_node.tasks import TaskService
    from wasmctr_node.ttrpc import Call, Code, RpcError

    service = TaskService(Publisher(None), "default", on_empty=lambda: None)
    late = Call({}, 1)
    assert late.expire()  # as _within_deadline does once the timeout has been answered
    with pytest.raises(RpcError) as refused:
        service.create(task_pb2.CreateTaskRequest(id="late", bundle=str(bundle)), late)
    assert "deadline" in refused.value.message and service.tasks == {}
    assert not (bundle / "wasmctr.pid").exists()

    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def create() -> None:
        barrier.wait()
        try:
            outcomes.append(service.create(task_pb2.CreateTaskRequest(id="twin", bundle=str(bundle)), Call({}, 0)))
        except RpcError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(map(str, outcomes)).count(str(Code.ALREADY_EXISTS)) == 1, outcomes
        assert list(service.tasks) == ["twin"]
    finally:
        service.delete(task_pb2.DeleteRequest(id="twin"), Call({}, 0))


def test_a_hash_entrypoint_runs_that_export(tmp_path: Path) -> None:
    """runwasi's `/app.wasm#func` under the runtime CLI; `run` removes the container unless --keep."""
    from conftest import FUNC_WAT

    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "rootfs" / "app.wasm").write_bytes(wasmtime.wat2wasm(FUNC_WAT))
    for entry, expected in (("/app.wasm#hello", "from hello\n"), ("/app.wasm", "from _start\n")):
        (bundle / "config.json").write_text(json.dumps({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": [entry], "cwd": "/"}}))
        proc = subprocess.run([RUNTIME, "--root", str(tmp_path / "root"), "run", "--bundle", str(bundle), "f"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout == expected, proc.stderr
        assert not (tmp_path / "root" / "f").exists()  # `run` removes what exited, as runc's does
    kept = subprocess.run([RUNTIME, "--root", str(tmp_path / "root"), "run", "--keep", "--bundle", str(bundle), "k"],
                          capture_output=True, text=True, timeout=60)
    assert kept.returncode == 0 and json.loads(runtime(tmp_path / "root", "state", "k").stdout)["status"] == "stopped"
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["/app.wasm#nope"], "cwd": "/"}}))
    refused = runtime(tmp_path / "root", "create", "--bundle", str(bundle), "g")
    assert refused.returncode == 1 and "the guest has no export 'nope'" in refused.stderr


def test_a_bind_mount_on_the_root_fails_create(bundle: Path, tmp_path: Path) -> None:
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"] = [{"destination": "/", "type": "bind", "source": str(tmp_path), "options": ["rbind", "rw"]}]
    (bundle / "config.json").write_text(json.dumps(config))
    refused = runtime(tmp_path / "root", "create", "--bundle", str(bundle), "rootmount")
    assert refused.returncode == 1 and "a bind mount cannot replace the rootfs" in refused.stderr


def test_oci_hooks_run_at_the_specs_points_with_the_state_on_stdin(bundle: Path, tmp_path: Path) -> None:
    """Every hook kind runs once, at its point, with the state JSON (the status of that point) on stdin
    and only the environment it lists; a failing or hung createRuntime hook fails `create` and leaves
    no container; a failing poststop hook only warns."""
    record = tmp_path / "record"
    record.mkdir()
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\ncat > "{record}/$1.json"\necho "$HOOK_ENV" > "{record}/$1.env"\n')
    script.chmod(0o755)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["/app.wasm", "exit", "0"]
    config["hooks"] = {kind: [{"path": str(script), "args": ["hook.sh", kind], "env": [f"HOOK_ENV={kind}"]}]
                       for kind in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
                                    "poststop")}
    (bundle / "config.json").write_text(json.dumps(config))
    root = tmp_path / "root"
    proc = subprocess.run([RUNTIME, "--root", str(root), "run", "--bundle", str(bundle), "hooked"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    statuses = {kind: json.loads((record / f"{kind}.json").read_text())["status"] for kind in config["hooks"]}
    assert statuses == {"prestart": "created", "createRuntime": "created", "createContainer": "created",
                        "startContainer": "created", "poststart": "running", "poststop": "stopped"}
    state = json.loads((record / "createRuntime.json").read_text())
    assert state["id"] == "hooked" and state["bundle"] == str(bundle) and state["pid"] > 0
    assert "init_process_start" not in state and (record / "poststart.env").read_text() == "poststart\n"
    assert "createRuntime" in json.loads(runtime(root, "features").stdout)["hooks"]

    for failing in ({"path": "/bin/false"}, {"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}):
        config["hooks"] = {"createRuntime": [failing]}
        (bundle / "config.json").write_text(json.dumps(config))
        refused = runtime(root, "create", "--bundle", str(bundle), "refused")
        assert refused.returncode == 1 and "createRuntime hook" in refused.stderr, refused.stderr
        assert not (root / "refused").exists()
    config["hooks"] = {"poststop": [{"path": "/bin/false"}]}
    (bundle / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([RUNTIME, "--root", str(root), "run", "--bundle", str(bundle), "warned"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "warning: poststop hook /bin/false exited with status 1" in proc.stderr


def test_list_shows_wasm_and_native_containers_sharing_a_root(bundle: Path, tmp_path: Path) -> None:
    native = tmp_path / "native"
    (native / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", native / "rootfs" / "bin" / "busybox")
    subprocess.run(["runc", "spec"], cwd=native, check=True)
    spec = json.loads((native / "config.json").read_text())
    spec["process"].update(terminal=False, args=["/bin/busybox", "sleep", "30"])
    (native / "config.json").write_text(json.dumps(spec))
    root = tmp_path / "root"
    try:
        for name, where in (("native-1", native), ("wasm-1", bundle)):
            create = subprocess.Popen([RUNTIME, "--root", str(root), "create", "--bundle", str(where), name],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert create.wait(60) == 0, create.stderr.read() if create.stderr else ""
        assert runtime(root, "list", "-q").stdout.split() == ["native-1", "wasm-1"]
        listed = {c["id"]: c for c in json.loads(runtime(root, "list", "--format", "json").stdout)}
        assert listed["native-1"]["status"] == listed["wasm-1"]["status"] == "created"
        assert listed["wasm-1"]["bundle"] == str(bundle) and listed["native-1"]["bundle"] == str(native)
        table = runtime(root, "list").stdout.splitlines()
        assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"] and len(table) == 3
    finally:
        for name in ("native-1", "wasm-1"):
            runtime(root, "delete", "--force", name)


def test_delete_force_and_kill_by_number(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name in ("f1", "f2"):
        subprocess.run([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), name], check=True,
                       stdout=subprocess.DEVNULL, timeout=30)
        assert runtime(root, "start", name).returncode == 0
    pid = json.loads(runtime(root, "state", "f1").stdout)["pid"]
    assert runtime(root, "delete", "--force", "f1").returncode == 0
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert runtime(root, "kill", "f2", "SIGKILL").returncode == 0
    assert runtime(root, "kill", "f2", "BOGUS").returncode == 1
    runtime(root, "delete", "--force", "f2")


LIGHT_VERB_MUST_NOT_IMPORT = {"json", "re", "enum", "pathlib", "subprocess", "contextlib", "typing", "dataclasses",
                              "datetime", "signal", "wasmtime", "wasmctr.sandbox.libseccomp",
                              "wasmctr.running.executor", "wasmctr.running.ocispec"}


def test_start_kill_and_delete_import_only_what_they_use(bundle: Path, tmp_path: Path) -> None:
    """Callers run `start`, `kill` and `delete` as a new interpreter for every container: they read the
    state and the bundle's hooks with json's C scanner and signal through `_signal`, and import neither
    the engine nor the stdlib modules that cost them ~50 ms each before (hooks, where a bundle has them,
    import subprocess and json to run: test_oci_hooks_run_at_the_specs_points_with_the_state_on_stdin)."""
    from test_startup import importtime_names

    root = tmp_path / "root"
    subprocess.run([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "light"], check=True,
                   stdout=subprocess.DEVNULL, timeout=30)
    for verb in (["start", "light"], ["kill", "light", "9"], ["delete", "light"]):
        if verb[0] == "delete":
            deadline = time.monotonic() + 5
            while json.loads(runtime(root, "state", "light").stdout)["status"] != "stopped":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc = subprocess.run([sys.executable, "-X", "importtime", RUNTIME, "--root", str(root), *verb],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = importtime_names(proc.stderr)
        assert "wasmctr_node.runtime" in found
        assert found & LIGHT_VERB_MUST_NOT_IMPORT == set(), verb
    assert not (root / "light").exists()


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, -3e5, true, false, null, "\\u00e9\\n"], "b": {}}',
                                  " [NaN, -Infinity] ", '"s"', "0", '{"pid": 12, "x": "\\ud83d\\ude00"}'])
def test_the_light_json_reader_reads_what_json_reads(text: str) -> None:
    from wasmctr_node import jsonload

    assert repr(jsonload.loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{} x", "nul", '"\\x"', '{"a":1,}', "[1] [2]", "\x00"])
def test_the_light_json_reader_refuses_what_json_refuses(text: str) -> None:
    from wasmctr_node import jsonload

    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsonload.loads(text)


def test_an_unreadable_state_file_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "root" / "broken").mkdir(parents=True)
    (tmp_path / "root" / "broken" / "wasmctr.json").write_text('{"pid": 1,')
    proc = runtime(tmp_path / "root", "state", "broken")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "unreadable state" in proc.stderr, proc.stderr


def test_an_unusable_root_and_a_refused_guest_fail_create_in_one_line(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    unusable = runtime(Path("/proc/no-such-root"), "create", "--bundle", str(bundle), "c1", log=log)
    assert unusable.returncode == 1
    assert unusable.stderr.splitlines() == [
        "wasmctr-runtime: [Errno 2] No such file or directory: '/proc/no-such-root'"]
    config = json.loads((bundle / "config.json").read_text())
    config.setdefault("annotations", {})["wasmctr.io/deny-wasi"] = "fd_write"
    (bundle / "config.json").write_text(json.dumps(config))
    refused = runtime(tmp_path / "root", "create", "--bundle", str(bundle), "c2", log=log)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "refused: the guest imports wasi_snapshot_preview1.fd_write" in refused.stderr
    logged = json.loads(log.read_text().splitlines()[-1])["msg"]
    assert logged == refused.stderr.strip().removeprefix("wasmctr-runtime: ")
    assert not (tmp_path / "root" / "c2").exists()


def test_version_and_features() -> None:
    version = subprocess.run([RUNTIME, "--version"], capture_output=True, text=True).stdout
    assert version.startswith("wasmctr-runtime version") and "spec: 1.0.2" in version
    features = json.loads(subprocess.run([RUNTIME, "features"], capture_output=True, text=True).stdout)
    assert features["ociVersionMin"] == "1.0.0"


MALFORMED_BUNDLES = {
    "not-an-object": [1, 2],
    "args-not-a-list": {"process": {"args": 5}},
    "args-not-strings": {"process": {"args": ["/app.wasm", 7]}},
    "root-not-an-object": {"root": "rootfs", "process": {"args": ["/app.wasm"]}},
    "mounts-not-objects": {"process": {"args": ["/app.wasm"]}, "mounts": ["x"]},
    "annotations-not-strings": {"process": {"args": ["/app.wasm"]}, "annotations": {"run.oci.handler": 1}},
    "memory-limit-a-string": {"process": {"args": ["/app.wasm"]},
                              "linux": {"resources": {"memory": {"limit": "64m"}}}},
    "memory-limit-2^64": {"process": {"args": ["/app.wasm"]},  # once wrapped to 0: "exceeded (1.75922e+13 MiB)"
                          "linux": {"resources": {"memory": {"limit": 1 << 64}}}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED_BUNDLES))
def test_a_malformed_bundle_fails_create_in_one_line_in_the_runtime_and_the_shim(
        bundle: Path, tmp_path: Path, case: str) -> None:
    from wasmctr_node.api import task_pb2
    from wasmctr_node.events import Publisher
    from wasmctr_node.tasks import TaskService
    from wasmctr_node.ttrpc import Call, Code, RpcError

    (bundle / "config.json").write_text(json.dumps(MALFORMED_BUNDLES[case]))
    proc = runtime(tmp_path / "root", "create", "--bundle", str(bundle), "bad")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "config.json" in proc.stderr and "Error" not in proc.stderr and "Traceback" not in proc.stderr
    service = TaskService(Publisher(None), "default", on_empty=lambda: None)
    with pytest.raises(RpcError) as refused:
        service.create(task_pb2.CreateTaskRequest(id="bad", bundle=str(bundle)), Call({}, 0))
    assert refused.value.code == Code.FAILED_PRECONDITION
    assert "config.json" in str(refused.value) and "Error" not in str(refused.value)
