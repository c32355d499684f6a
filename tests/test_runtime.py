"""wasmctr-runtime, the runc-compatible CLI: driven by containerd's runc shim and directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import wasmtime
from conftest import ESCAPE_REFUSED, attack, wasmctr
from services import proc_status, remove_cgroup_tree, wait_for

RUNTIME = str(Path(sys.executable).parent / "wasmctr-runtime")
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


@pytest.fixture
def bundle(tmp_path: Path, hostile_wasm: Path) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    shutil.copy(hostile_wasm, bundle / "rootfs" / "app.wasm")
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
              "process": {"args": ["/app.wasm", "spin"], "env": [], "cwd": "/"},
              "annotations": {"run.oci.handler": "wasm"}}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def runtime(root: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--log", str(log), "--log-format", "json"] if log else []
    return subprocess.run([RUNTIME, "--root", str(root), *extra, *args], capture_output=True, text=True, timeout=30)


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


def test_the_container_process_runs_as_the_specs_user_without_capabilities(bundle: Path, tmp_path: Path) -> None:
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [7]}
    (bundle / "config.json").write_text(json.dumps(config))
    root = tmp_path / "root"
    create = subprocess.Popen([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "u1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the container keeps them
    assert create.wait(30) == 0
    pid = json.loads(runtime(root, "state", "u1").stdout)["pid"]
    fields = proc_status(pid)
    assert fields["Uid"] == ["1000"] * 4 and fields["Gid"] == ["1000"] * 4 and fields["Groups"] == ["7"]
    assert int(fields["CapEff"][0], 16) == int(fields["CapBnd"][0], 16) == 0 and fields["NoNewPrivs"] == ["1"]
    assert fields["Seccomp"] == ["2"]
    assert runtime(root, "delete", "--force", "u1").returncode == 0


def write_config(bundle: Path, **changes: object) -> None:
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, **changes}))


def test_the_container_process_enters_the_specs_namespaces_and_an_escape_reaches_nothing(
        bundle: Path, tmp_path: Path, escape: Path) -> None:
    """New pid, uts and mount namespaces, and an ipc namespace joined by path (as a pod's containers
    join their sandbox's: here one of a process the test starts with `unshare --ipc`). Native code under
    the container process's confinement, CAP_KILL granted, reaches nothing outside (see ESCAPE_REFUSED)."""
    holder = subprocess.Popen(["unshare", "--ipc", "sleep", "600"])
    root = tmp_path / "root"
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/ipc") == os.readlink("/proc/self/ns/ipc"):
            assert time.monotonic() < deadline
            time.sleep(0.01)  # until unshare has made the namespace
        caps = ["CAP_KILL", "CAP_CHOWN"]
        write_config(bundle, process={"args": ["/app.wasm", "sleep", "60"], "env": [], "cwd": "/",
                                      "capabilities": {n: caps for n in ("bounding", "effective", "permitted")}},
                     linux={"namespaces": [{"type": "pid"}, {"type": "ipc", "path": f"/proc/{holder.pid}/ns/ipc"},
                                           {"type": "uts"}, {"type": "mount"}, {"type": "network"}]})
        create = subprocess.Popen([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "ns1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the container keeps them
        assert create.wait(30) == 0
        assert runtime(root, "start", "ns1").returncode == 0
        pid = json.loads(runtime(root, "state", "ns1").stdout)["pid"]
        assert os.readlink(f"/proc/{pid}/ns/ipc") == os.readlink(f"/proc/{holder.pid}/ns/ipc")
        for kind in ("pid", "uts", "mnt"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
        assert proc_status(pid)["NSpid"] == [str(pid), "1"]
        assert attack(escape, pid, tmp_path) == {"filters": 2, **ESCAPE_REFUSED}
        assert json.loads(runtime(root, "state", "ns1").stdout)["status"] == "running"
    finally:
        runtime(root, "delete", "--force", "ns1")
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("linux, fragment", [
    ({"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [  # a range, allowed: split, it would allow more
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
            {"index": 0, "value": 0, "op": "SCMP_CMP_GE"}, {"index": 0, "value": 8, "op": "SCMP_CMP_LE"}]}]}},
     "several conditions on one argument"),
    ({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}},
     "argument index 6"),
    ({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NO_SUCH"]}}, "unknown architecture"),
    ({"namespaces": [{"type": "mount", "path": "/proc/self/ns/mnt"}]}, "cannot join the mount namespace"),
    ({"namespaces": [{"type": "ipc", "path": "/proc/self/ns/uts"}]}, "is not a namespace of type ipc"),
    ({"namespaces": [{"type": "ipc", "path": "/dev/null"}]}, "/dev/null is not a namespace"),
    ({"namespaces": [{"type": "pid"}, {"type": "pid"}]}, "pid is listed twice"),
    ({"namespaces": [{"type": "pid"}, {"type": "user"}]}, "lists a user namespace"),  # hostUsers: false
    ({"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}, "lists a user namespace"),
])
def test_what_cannot_be_honoured_fails_create_in_one_line(bundle: Path, tmp_path: Path, linux: dict,  # type: ignore[type-arg]
                                                          fragment: str) -> None:
    """A seccomp profile is never loaded weaker than written, nor namespaces other than the spec's."""
    write_config(bundle, linux=linux)
    root = tmp_path / "root"
    proc = runtime(root, "create", "--bundle", str(bundle), "refused")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert proc.stderr.startswith("wasmctr-runtime: ") and "Traceback" not in proc.stderr
    assert not (root / "refused").exists()


def test_a_profiles_range_is_split_into_a_rule_per_condition(bundle: Path, tmp_path: Path) -> None:
    """A deny rule with two conditions on mkdirat's mode (one that no mode meets both of) is split, as
    runc splits it: each condition denies on its own, so the guest's mkdir is denied whatever its mode.
    The unknown name beside mkdirat is skipped, not the rule."""
    data = tmp_path / "data"
    data.mkdir()
    write_config(bundle, process={"args": ["/app.wasm", "fs", "/data"], "env": [], "cwd": "/"},
                 mounts=[{"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "rw"]}],
                 linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                     {"names": ["no_such_call", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [
                         {"index": 2, "value": 0o700, "op": "SCMP_CMP_LE"},
                         {"index": 2, "value": 0o700, "op": "SCMP_CMP_GT"}]}]}})
    proc = subprocess.run([RUNTIME, "--root", str(tmp_path / "root"), "run", "--bundle", str(bundle), "split"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "denied: Permission denied\n", proc.stderr
    assert not list(data.iterdir())


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


def test_the_container_process_is_in_the_specs_cgroup_with_its_limits(bundle: Path, tmp_path: Path) -> None:
    """As runc does: the cgroup at linux.cgroupsPath, with the spec's memory and pids limits, holds the
    container process from `create` on; `delete` removes it."""
    from wasmctr_node.cgroups import Cgroup, is_v2

    cgroups_path = f"/wasmctr-test-{os.getpid()}-{tmp_path.name}"
    config = json.loads((bundle / "config.json").read_text())
    config["linux"] = {"cgroupsPath": cgroups_path,
                       "resources": {"memory": {"limit": 256 << 20}, "pids": {"limit": 64}}}
    (bundle / "config.json").write_text(json.dumps(config))
    root = tmp_path / "root"
    create = subprocess.Popen([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "cg1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert create.wait(30) == 0
    group = Cgroup.open(cgroups_path)
    try:
        pid = json.loads(runtime(root, "state", "cg1").stdout)["pid"]
        assert any(line.endswith(":" + cgroups_path) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
        memory = "memory.max" if is_v2() else "memory.limit_in_bytes"
        assert (Path(group.directories["" if is_v2() else "memory"]) / memory).read_text().strip() == str(256 << 20)
        assert (Path(group.directories["" if is_v2() else "pids"]) / "pids.max").read_text().strip() == "64"
        assert runtime(root, "delete", "--force", "cg1").returncode == 0
        assert not any(Path(d).exists() for d in group.directories.values())
    finally:
        runtime(root, "delete", "--force", "cg1")
        group.remove()


def test_a_cgroups_path_that_climbs_stays_in_the_cgroup_hierarchy(bundle: Path, tmp_path: Path) -> None:
    """`/../../..{target}` is cleaned as runc cleans it: the container's cgroup is `{target}` inside each
    hierarchy, never the host directory `{target}` (which create made and filled before); delete
    removes that cgroup."""
    from wasmctr_node.cgroups import is_v2

    target = tmp_path / "escape"
    climbing = "/" + "../" * 12 + str(target).lstrip("/")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"] = {"cgroupsPath": climbing, "resources": {"memory": {"limit": 256 << 20}, "pids": {"limit": 64}}}
    (bundle / "config.json").write_text(json.dumps(config))
    root = tmp_path / "root"
    try:
        create = subprocess.Popen([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "climb"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert create.wait(30) == 0
        pid = json.loads(runtime(root, "state", "climb").stdout)["pid"]
        memberships = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        memory = [line for line in memberships if (line.startswith("0::") if is_v2() else ":memory:" in line)]
        assert memory and all(line.endswith(":" + str(target)) for line in memory)
        assert not target.exists()
        assert runtime(root, "delete", "--force", "climb").returncode == 0
        assert not target.exists()
    finally:
        runtime(root, "delete", "--force", "climb")
        remove_cgroup_tree(climbing)


@pytest.mark.parametrize("part", ["name", "prefix", "slice"])
def test_a_systemd_cgroups_path_naming_a_path_fails_create(bundle: Path, tmp_path: Path, part: str) -> None:
    """As runc's ExpandSlice and systemd refuse them: a slice, prefix or name with `/` or `..` fails
    create in one line, before anything (a state directory, a cgroup, the target) is made."""
    target = tmp_path / "escape"
    climbing = "../" * 12 + str(target).lstrip("/")
    cgroups_path = {"name": f"system.slice::{climbing}", "prefix": f"system.slice:{climbing}:x",
                    "slice": f"{climbing}.slice:cri:x"}[part]
    config = json.loads((bundle / "config.json").read_text())
    config["linux"] = {"cgroupsPath": cgroups_path, "resources": {"pids": {"limit": 64}}}
    (bundle / "config.json").write_text(json.dumps(config))
    refused = runtime(tmp_path / "root", "create", "--bundle", str(bundle), "sd")
    assert refused.returncode == 1 and f"the {part} " in refused.stderr and "not a unit name" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert not target.exists() and not (tmp_path / "root" / "sd").exists()


@pytest.mark.parametrize("cgroups_path", ["system.slice::", "system.slice::.", "-.slice::."])
def test_a_systemd_cgroups_path_naming_the_slice_itself_fails_create(bundle: Path, tmp_path: Path,
                                                                     cgroups_path: str) -> None:
    """An empty or `.` unit name made the slice itself (or the root, for `-.slice`) the container's cgroup,
    and the spec's limits went onto system.slice."""
    config = json.loads((bundle / "config.json").read_text())
    config["linux"] = {"cgroupsPath": cgroups_path, "resources": {"pids": {"limit": 64}}}
    (bundle / "config.json").write_text(json.dumps(config))
    refused = runtime(tmp_path / "root", "create", "--bundle", str(bundle), "sd")
    assert refused.returncode == 1 and "a unit name of its own" in refused.stderr, refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and not (tmp_path / "root" / "sd").exists()


def private_bundle(tmp_path: Path, hostile_wasm: Path, user: dict[str, object], args: list[str]) -> Path:
    """A bundle under a 0700 directory (as containerd's state directory is) whose process runs as `user`."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    bundle = private / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    shutil.copy(hostile_wasm, bundle / "rootfs" / "app.wasm")
    (bundle / "rootfs" / "data.txt").write_text("in the rootfs")
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"user": user, "args": args, "cwd": "/"},
        "annotations": {"run.oci.handler": "wasm"}}))
    return bundle


NOBODY = {"uid": 65534, "gid": 65534}
TOO_MANY_GROUPS = {**NOBODY, "additionalGids": list(range(1, 70_000))}  # over NGROUPS_MAX: setgroups refuses


def test_a_user_who_cannot_reach_the_bundle_runs_the_guest_as_under_runc(tmp_path: Path, hostile_wasm: Path) -> None:
    """runc enters the rootfs as root and then becomes the user: so does the container process (it opened
    the rootfs after becoming 65534 before, got EACCES and died, while `start` answered success)."""
    bundle = private_bundle(tmp_path, hostile_wasm, NOBODY, ["/app.wasm", "read", "/data.txt"])
    proc = subprocess.run([RUNTIME, "--root", str(tmp_path / "root"), "run", "--bundle", str(bundle), "nobody"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "read: in the rootfs\n", proc.stderr


def test_a_container_process_that_dies_before_it_is_ready_fails_create(tmp_path: Path, hostile_wasm: Path) -> None:
    """As runc's create fails with its init's error: the reason, in one line, and nothing left behind (no
    state, no process for `start` to call running)."""
    bundle = private_bundle(tmp_path, hostile_wasm, TOO_MANY_GROUPS, ["/app.wasm", "sleep", "30"])
    root = tmp_path / "root"
    create = subprocess.Popen([RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "--pid-file",
                               str(tmp_path / "pid"), "groups"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    _, stderr = create.communicate(timeout=30)
    assert create.returncode == 1 and stderr == "wasmctr-runtime: too many groups\n"
    assert not (root / "groups").exists() and not (tmp_path / "pid").exists()
    assert "does not exist" in runtime(root, "state", "groups").stderr


def test_the_shims_container_process_opens_its_rootfs_before_it_becomes_the_user(tmp_path: Path,
                                                                                  hostile_wasm: Path) -> None:
    """The same through the shim's Task API: the guest reads its rootfs as 65534 from a bundle that user
    cannot reach, and a process that dies before it is ready fails Create with its reason."""
    from wasmctr_node.api import task_pb2
    from wasmctr_node.events import Publisher
    from wasmctr_node.tasks import TaskService
    from wasmctr_node.ttrpc import Call, Code, RpcError

    bundle = private_bundle(tmp_path, hostile_wasm, NOBODY, ["/app.wasm", "read", "/data.txt"])
    out, err = tmp_path / "out", tmp_path / "err"
    service = TaskService(Publisher(None), "default", on_empty=lambda: None)
    service.create(task_pb2.CreateTaskRequest(id="nobody", bundle=str(bundle), stdout=str(out), stderr=str(err)),
                   Call({}, 0))
    service.start(task_pb2.StartRequest(id="nobody"), Call({}, 0))
    waited = service.wait(task_pb2.WaitRequest(id="nobody"), Call({}, 0))
    service.delete(task_pb2.DeleteRequest(id="nobody"), Call({}, 0))
    assert waited.exit_status == 0 and out.read_text() == "read: in the rootfs\n", err.read_text()
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["user"] = TOO_MANY_GROUPS
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(RpcError) as refused:
        service.create(task_pb2.CreateTaskRequest(id="groups", bundle=str(bundle)), Call({}, 0))
    assert refused.value.code == Code.FAILED_PRECONDITION and refused.value.message.endswith(": too many groups")
    assert service.tasks == {} and not (bundle / "wasmctr.pid").exists()


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


def test_the_default_devices_behave_as_on_linux(bundle: Path, tmp_path: Path) -> None:
    from conftest import DEVICE_CASES

    config = json.loads((bundle / "config.json").read_text())
    for args, expected in DEVICE_CASES:
        config["process"]["args"] = ["/app.wasm", *args]
        (bundle / "config.json").write_text(json.dumps(config))
        proc = subprocess.run([RUNTIME, "--root", str(tmp_path / "root"), "run", "--bundle", str(bundle), "dev"],
                              capture_output=True, text=True, timeout=60)
        assert proc.stdout == expected, (args, proc)
    assert not (tmp_path / "root" / "dev").exists()


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
