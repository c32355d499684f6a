"""The walls wasmctr-runtime (and the shim's Task API, from the same bundles) puts around a container
process: the spec's user without capabilities, reaching a rootfs that user cannot as under runc; its
namespaces, which native code under its confinement does not escape; a seccomp profile never loaded
weaker than written; the default devices; and its cgroup, whose path never leaves the hierarchy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ESCAPE_REFUSED, attack, runtime
from conftest import WASMCTR_RUNTIME as RUNTIME
from services import proc_status, remove_cgroup_tree


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


def test_the_container_process_is_in_the_specs_cgroup_with_its_limits(bundle: Path, tmp_path: Path) -> None:
    """As runc does: the cgroup at linux.cgroupsPath, with the spec's memory and pids limits, holds the
    container process from `create` on, in every hierarchy (on v1 it moves itself by its one thread, in
    each hierarchy's `tasks`: the process is there whole); `delete` removes it."""
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
        for directory in group.directories.values():
            assert (Path(directory) / "cgroup.procs").read_text().split() == [str(pid)], directory
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
