"""Kubernetes for real: pods with `runtime_handler: wasmctr` (and `wasmctr-shared`) driven through
containerd's CRI plugin as a kubelet drives it (RunPodSandbox, CreateContainer, StartContainer,
ContainerStatus, stats, StopPodSandbox, RemovePodSandbox), with the documented containerd config, a pause
image of the tests' own and images pulled by CRI from a local registry. The sandbox and native sidecars
run through runc inside the wasmctr shim; wasm containers are forked guests in the pod's cgroup."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import ESCAPE_REFUSED, attack, wasmctr
from cri import api_pb2 as cri
from cri.node import Node, node_config, node_images
from services import Containerd, ppid
from wasmctr_node import cgroups

CGROUP_PARENT = "/wasmctr-cri-test"


@pytest.fixture(scope="module")
def node(plain_registry, hello_c_wasm: Path, hostile_wasm: Path,  # type: ignore[no-untyped-def]
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, dict[str, str], Containerd]]:
    work = tmp_path_factory.mktemp("cri")
    host = plain_registry.host
    refs = {**node_images(work, host), "hello": f"{host}/cri-hello:1", "hostile": f"{host}/cri-hostile:1"}
    env = {"WASMCTR_HOME": str(work / "store")}
    wasmctr("build", str(hello_c_wasm.parent), "-t", refs["hello"], "--push", env=env)
    wasmctr("build", str(hostile_wasm), "-t", refs["hostile"], "--push", env=env)
    containerd = Containerd(work / "ctd", extra_config=node_config(host, refs["pause"])).start()
    client = Node(containerd.socket, work / "logs")
    try:
        for ref in ("busybox", "hello", "hostile"):
            client.pull(refs[ref])
        yield client, refs, containerd
    finally:
        client.close()
        containerd.stop()
        for mount in _v1_or_v2_roots():
            _remove_tree(mount + CGROUP_PARENT)


def _v1_or_v2_roots() -> list[str]:
    if cgroups.is_v2():
        return [cgroups.ROOT]
    return sorted(set(cgroups._v1_mounts().values()))


def _remove_tree(path: str) -> None:
    """rmdir a cgroup tree bottom-up (cgroup directories cannot be removed with their files)."""
    if not os.path.isdir(path):
        return
    for root, dirs, _ in sorted(os.walk(path), key=lambda item: -len(item[0])):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, d))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def pod_cgroups(pod_parent: str) -> list[str]:
    """The cgroup directories below a pod's parent, in every hierarchy."""
    found = []
    for root in _v1_or_v2_roots():
        base = root + pod_parent
        if os.path.isdir(base):
            found += [os.path.join(base, d) for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))]
    return found


def test_a_wasm_pod_runs_logs_exits_and_leaves_nothing_behind(node) -> None:  # type: ignore[no-untyped-def]
    client, refs, containerd = node
    parent = f"{CGROUP_PARENT}/pod-hello"
    pod, config = client.run_pod("hello", cgroup_parent=parent)
    assert client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.state \
        == cri.SANDBOX_READY
    container = client.create(pod, config, "hello", refs["hello"], ["kubernetes"])
    client.start(container)
    status = client.wait_exited(container)
    assert status.state == cri.CONTAINER_EXITED and status.exit_code == 0, status
    assert ("stdout", "F", "Hello, kubernetes!") in client.log(config, "hello")
    sandbox_stats = client.runtime.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats
    assert sandbox_stats.linux.memory.usage_bytes.value > 0
    client.remove_pod(pod)
    assert pod_cgroups(parent) == []
    assert "pod-hello" not in subprocess.run(["pgrep", "-af", "pause"], capture_output=True, text=True).stdout
    assert str(containerd.directory) not in Path("/proc/self/mountinfo").read_text()


def test_a_running_guest_is_in_its_cgroup_reports_stats_and_stops(node) -> None:  # type: ignore[no-untyped-def]
    client, refs, _ = node
    parent = f"{CGROUP_PARENT}/pod-spin"
    pod, config = client.run_pod("spin", cgroup_parent=parent)
    container = client.create(pod, config, "spin", refs["hostile"], ["spin"], memory=64 << 20)
    client.start(container)
    deadline = time.monotonic() + 10
    stats = None
    while time.monotonic() < deadline:
        stats = client.runtime.ContainerStats(cri.ContainerStatsRequest(container_id=container)).stats
        if stats.cpu.usage_core_nano_seconds.value > 0:
            break
        time.sleep(0.2)
    assert stats is not None and stats.cpu.usage_core_nano_seconds.value > 0
    listed = client.runtime.ListContainerStats(cri.ListContainerStatsRequest()).stats
    assert container in [s.attributes.id for s in listed]
    cgroup = cgroups.Cgroup.open(f"{parent}/{container}")
    if not cgroups.is_v2():
        assert int(Path(cgroup.directories["memory"], "memory.limit_in_bytes").read_text()) == 64 << 20
        assert Path(cgroup.directories["memory"], "cgroup.procs").read_text().split()  # the guest is in it
    with pytest.raises(grpc.RpcError) as refused:
        client.runtime.ExecSync(cri.ExecSyncRequest(container_id=container, cmd=["ls"], timeout=5))
    assert "exec" in refused.value.details().lower()
    client.runtime.StopContainer(cri.StopContainerRequest(container_id=container, timeout=2))
    assert client.wait_exited(container).exit_code == 143  # SIGTERM stops it, long before the SIGKILL 2 s later
    client.remove_pod(pod)
    assert pod_cgroups(parent) == []


def test_two_wasm_containers_and_a_native_sidecar_share_a_pod(node) -> None:  # type: ignore[no-untyped-def]
    client, refs, _ = node
    pod, config = client.run_pod("mixed", cgroup_parent=f"{CGROUP_PARENT}/pod-mixed")
    sidecar = client.create(pod, config, "sidecar", refs["busybox"], ["sh", "-c", "echo from busybox; sleep 30"])
    first = client.create(pod, config, "first", refs["hello"], ["first"])
    second = client.create(pod, config, "second", refs["hello"], ["second"])
    for container in (sidecar, first, second):
        client.start(container)
    for name, container in (("first", first), ("second", second)):
        assert client.wait_exited(container).exit_code == 0
        assert ("stdout", "F", f"Hello, {name}!") in client.log(config, name)
    assert client.status(sidecar).state == cri.CONTAINER_RUNNING
    deadline = time.monotonic() + 10
    while ("stdout", "F", "from busybox") not in client.log(config, "sidecar") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ("stdout", "F", "from busybox") in client.log(config, "sidecar")
    client.runtime.StopContainer(cri.StopContainerRequest(container_id=sidecar, timeout=1))
    assert client.wait_exited(sidecar).exit_code == 143  # SIGTERM: the pod's pid 1 is pause, not the sidecar
    client.remove_pod(pod)


def test_pod_annotations_carry_the_policy(node) -> None:  # type: ignore[no-untyped-def]
    """containerd passes `wasmctr.io/*` pod annotations on because the example config lists them."""
    client, refs, _ = node
    pod, config = client.run_pod("denied", annotations={"wasmctr.io/deny-wasi": "fd_write"})
    container = client.create(pod, config, "hello", refs["hello"], ["x"])
    with pytest.raises(grpc.RpcError) as refused:
        client.start(container)  # the shim's Create runs at StartContainer
    assert "fd_write" in refused.value.details()
    client.remove_pod(pod)


def task_pids(containerd: Containerd) -> dict[str, int]:
    """Every k8s.io task's pid, as `ctr task ls` lists them (a wasm container's is its guest process)."""
    listed = containerd.ctr("--namespace", "k8s.io", "task", "ls", check=True).stdout.splitlines()[1:]
    return {fields[0]: int(fields[1]) for fields in (line.split() for line in listed)}


def test_a_pods_wasm_containers_join_its_namespaces_and_reach_nothing_outside_it(  # type: ignore[no-untyped-def]
        node, escape: Path, tmp_path: Path) -> None:
    """CRI names the sandbox's IPC (and, with pid mode POD, pid) namespace by path in each container's
    spec: a wasm container's process joins them, and has a pid namespace of its own otherwise. Native
    code under its confinement reaches nothing outside (see ESCAPE_REFUSED)."""
    client, refs, containerd = node
    pod, config = client.run_pod("namespaces", cgroup_parent=f"{CGROUP_PARENT}/pod-namespaces")
    own = client.create(pod, config, "own", refs["hostile"], ["sleep", "120"], pid=cri.CONTAINER)
    shared = client.create(pod, config, "shared", refs["hostile"], ["sleep", "120"], pid=cri.POD)
    for container in (own, shared):
        client.start(container)
    pids = task_pids(containerd)
    pause, own_pid, shared_pid = pids[pod], pids[own], pids[shared]

    def namespace(pid: int | str, kind: str) -> str:
        return os.readlink(f"/proc/{pid}/ns/{kind}")

    for pid in (own_pid, shared_pid):
        assert namespace(pid, "ipc") == namespace(pause, "ipc") != namespace("self", "ipc")
    assert namespace(shared_pid, "pid") == namespace(pause, "pid") != namespace("self", "pid")
    assert namespace(own_pid, "pid") not in (namespace(pause, "pid"), namespace("self", "pid"))
    assert attack(escape, own_pid, tmp_path) == {"filters": 2, **ESCAPE_REFUSED}
    assert attack(escape, shared_pid, tmp_path) == {"filters": 2, **ESCAPE_REFUSED}
    assert client.status(own).state == client.status(shared).state == cri.CONTAINER_RUNNING
    client.remove_pod(pod)


def sleeping_pods(client: Node, refs: dict[str, str], handler: str, names: list[str]) -> dict[str, tuple[str, str]]:
    """A pod per name, each with a wasm container asleep: name -> (pod, container)."""
    pods = {}
    for name in names:
        pod, config = client.run_pod(name, handler=handler, cgroup_parent=f"{CGROUP_PARENT}/{name}")
        container = client.create(pod, config, "sleeper", refs["hostile"], ["sleep", "120"])
        client.start(container)
        pods[name] = (pod, container)
    return pods


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while ppid(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not ppid(pid)


def test_pods_of_the_shared_runtime_share_one_shim_and_outlive_each_other(node) -> None:  # type: ignore[no-untyped-def]
    client, refs, containerd = node
    own = sleeping_pods(client, refs, "wasmctr", ["own-a", "own-b"])
    shared = sleeping_pods(client, refs, "wasmctr-shared", ["shared-a", "shared-b"])
    pids = task_pids(containerd)
    shim_of = {name: ppid(pids[container]) for name, (_, container) in {**own, **shared}.items()}
    assert shim_of["own-a"] != shim_of["own-b"]  # the default runtime: a shim per pod
    assert shim_of["shared-a"] == shim_of["shared-b"] not in (shim_of["own-a"], shim_of["own-b"])
    sandbox_pids = {name: pids[pod] for name, (pod, _) in shared.items()}
    assert {ppid(pid) for pid in sandbox_pids.values()} == {shim_of["shared-a"]}  # the pause containers too
    for pod, _ in own.values():
        client.remove_pod(pod)

    client.remove_pod(shared["shared-a"][0])
    assert pod_cgroups(f"{CGROUP_PARENT}/shared-a") == []
    survivor = shared["shared-b"][1]
    assert client.status(survivor).state == cri.CONTAINER_RUNNING
    assert ppid(pids[survivor]) == shim_of["shared-b"]  # its guest, still the shared shim's
    client.remove_pod(shared["shared-b"][0])
    assert wait_gone(shim_of["shared-b"]), "the shared shim exits once no pod is left"
    assert pod_cgroups(f"{CGROUP_PARENT}/shared-b") == []


def test_when_the_shared_shim_dies_its_pods_containers_end_and_new_pods_get_a_new_one(node) -> None:  # type: ignore[no-untyped-def]
    """What the shared runtime trades: one process's death ends every pod's containers it served."""
    client, refs, containerd = node
    pods = sleeping_pods(client, refs, "wasmctr-shared", ["doomed-a", "doomed-b"])
    pids = task_pids(containerd)
    guests = [pids[container] for _, container in pods.values()]
    shim = ppid(guests[0])
    os.kill(shim, signal.SIGKILL)
    for _, container in pods.values():
        assert client.wait_exited(container, timeout=30).state == cri.CONTAINER_EXITED
    assert all(wait_gone(guest) for guest in guests), "containerd's cleanup (the binary's delete) kills the guests"
    for pod, _ in pods.values():
        client.remove_pod(pod)
    after = sleeping_pods(client, refs, "wasmctr-shared", ["after"])
    container = after["after"][1]
    assert client.status(container).state == cri.CONTAINER_RUNNING
    assert ppid(task_pids(containerd)[container]) not in (0, shim)
    client.remove_pod(after["after"][0])


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether `needle` is anywhere in what a process has in memory: every run of present pages
    (pagemap's bit 63) of its readable mappings, so a guest's reserved gigabytes are not read."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap, \
            open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // page * 8)
            entries = pagemap.read((end - start) // page * 8)
            present = [entries[i * 8 + 7] & 0x80 for i in range(len(entries) // 8)]
            i = 0
            while i < len(present):
                if not present[i]:
                    i += 1
                    continue
                run = i
                while i < len(present) and present[i]:
                    i += 1
                with contextlib.suppress(OSError):
                    mem.seek(start + run * page)
                    if needle in mem.read((i - run) * page):
                        return True
    return False


def test_a_pods_processes_hold_nothing_of_another_pods_spec(node) -> None:  # type: ignore[no-untyped-def]
    """Pods' shims are forked from one template, and guests from their shims: what one pod's spec says
    (its environment: tokens, passwords) must not be in another pod's processes, where a guest that
    escaped wasmtime's sandbox would find it in its own memory."""
    client, refs, containerd = node
    secret = secrets.token_hex(24)
    holder, config = client.run_pod("secret-holder")
    padding = "p" * 65536  # a spec larger than the next ones: their reads do not overwrite all of it
    container = client.create(holder, config, "holder", refs["hello"], ["x"], env={"PADDING": padding,
                                                                                   "API_TOKEN": secret})
    client.start(container)
    assert client.wait_exited(container).exit_code == 0
    assert containerd.proc is not None and memory_holds(containerd.proc.pid, secret.encode())  # the probe works
    bystander = sleeping_pods(client, refs, "wasmctr", ["bystander"])["bystander"]
    guest = task_pids(containerd)[bystander[1]]
    shim = ppid(guest)
    for pid, what in ((guest, "another pod's guest"), (shim, "another pod's shim"), (ppid(shim), "the template")):
        assert not memory_holds(pid, secret.encode()), f"{what} (pid {pid}) holds the secret"
    client.remove_pod(holder)
    client.remove_pod(bystander[0])


def test_pod_shims_leave_no_process_behind(node) -> None:  # type: ignore[no-untyped-def]
    client, _, containerd = node
    for pod in list(client.pods):
        client.remove_pod(pod)
    deadline = time.monotonic() + 15
    while containerd.shim_servers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containerd.shim_servers() == []  # the template process stays, as node infrastructure


def test_cgroup_paths_of_both_drivers_expand_as_runc_expands_them() -> None:
    assert cgroups.expand("/kubepods/besteffort/pod1/abc") == "/kubepods/besteffort/pod1/abc"
    assert cgroups.expand("kubepods-besteffort-pod1.slice:cri-containerd:abc") == \
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
    assert cgroups.expand(":cri-containerd:abc") == "/system.slice/cri-containerd-abc.scope"
    assert cgroups.expand("-.slice:prefix:name") == "/prefix-name.scope"


def test_cgroup_v2_limits_are_written_as_runc_writes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These VMs are v1 hybrid: the unified hierarchy is laid out here in a temp dir instead (files only,
    as cgroupfs shows them) to check what a v2 host would get."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(cgroups, "ROOT", str(root))
    (root / "kubepods").mkdir()
    (root / "kubepods" / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "kubepods" / "cgroup.subtree_control").write_text("")
    group = cgroups.Cgroup.create("/kubepods/pod1/c1", {"memory": {"limit": 64 << 20},
                                                         "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
                                                         "pids": {"limit": 32}})
    leaf = root / "kubepods" / "pod1" / "c1"
    assert group.directories == {"": str(leaf)}
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "cpu.weight").read_text() == "39"  # runc's conversion of 1024 shares
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "pids.max").read_text() == "32"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (root / "kubepods" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    group.join()  # by the process that joins: 0 is the writer itself
    assert (leaf / "cgroup.procs").read_text() == "0"
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (leaf / "memory.current").write_text("1048576\n")
    (leaf / "pids.current").write_text("2\n")
    assert group.usage() == (1500, 1 << 20, 64 << 20, 2)
