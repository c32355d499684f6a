"""containerd-shim-wasmctr-v1 driven by a real containerd through `ctr`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ESCAPE_REFUSED, attack
from services import ppid, proc_status, process_state, remove_cgroup_tree, status_fields, wait_for

RUNTIME = ["--runtime", "io.containerd.wasmctr.v1"]


def ctr_run(containerd, *args: str, input: str | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    return subprocess.run(["ctr", "--address", str(containerd.socket), "run", *RUNTIME, "--platform", "wasi/wasm",
                           *args], capture_output=True, text=True, input=input, timeout=timeout)


def leftovers(containerd) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    shims = containerd.shim_servers()
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(containerd.directory)
              in line]
    sockets = [p.name for p in containerd.shims.glob("*.sock") if not p.name.startswith("template-")]
    tasks = containerd.ctr("task", "ls", "-q").stdout.split()
    return {k: v for k, v in {"shims": shims, "mounts": mounts, "sockets": sockets, "tasks": tasks}.items() if v}


def wait_for_nothing_left(containerd, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while leftovers(containerd) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leftovers(containerd)


def delete_task(containerd, name: str) -> None:  # type: ignore[no-untyped-def]
    """Delete a killed task: once it has stopped (a kill returns before the task has), or fail."""
    wait_for(lambda: containerd.ctr("task", "delete", name).returncode == 0, 10, f"task {name} to be deletable")


def wait_for_status(containerd, status: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    wait_for(lambda: status in containerd.ctr("task", "ls").stdout, timeout, f"a task {status}")


def test_ctr_run_prints_output_and_returns_the_exit_code(containerd, images) -> None:  # type: ignore[no-untyped-def]
    proc = ctr_run(containerd, "--rm", images["hello"], "hello-1", "/hello.wasm", "containerd", "7")
    assert proc.stdout == "Hello, containerd!\nargc=3\n", proc.stderr
    assert proc.returncode == 7
    default = ctr_run(containerd, "--rm", "--env", "GREETING=Hi", images["hello"], "hello-2")
    assert default.returncode == 0 and default.stdout.startswith("Hi, world!")
    wait_for_nothing_left(containerd)


def test_detached_task_is_listed_killed_and_deleted(containerd, images) -> None:  # type: ignore[no-untyped-def]
    proc = ctr_run(containerd, "-d", images["hostile"], "spinner", "/hostile.wasm", "spin")
    assert proc.returncode == 0, proc.stderr
    listed = containerd.ctr("task", "ls").stdout
    assert "spinner" in listed and "RUNNING" in listed
    pid = int(containerd.ctr("task", "ls", "-q").stdout.split()[0] and
              [line.split()[1] for line in listed.splitlines() if line.startswith("spinner")][0])
    assert Path(f"/proc/{pid}").exists()
    assert containerd.ctr("task", "kill", "spinner").returncode == 0
    wait_for_status(containerd, "STOPPED", 30)  # SIGTERM stops a guest that never ends by itself
    assert containerd.ctr("task", "delete", "spinner").returncode == 0
    assert containerd.ctr("container", "delete", "spinner").returncode == 0
    wait_for_nothing_left(containerd)


def test_task_metrics_report_the_container_cgroup_cpu_and_memory(containerd, images) -> None:  # type: ignore[no-untyped-def]
    proc = ctr_run(containerd, "-d", "--memory-limit", str(64 << 20), images["hostile"], "metered",
                   "/hostile.wasm", "spin")
    assert proc.returncode == 0, proc.stderr
    shown: list[dict] = []

    def spun() -> bool:
        listed = containerd.ctr("task", "metrics", "metered", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        shown.append(json.loads(listed.stdout))
        return shown[-1]["cpu"]["usage_usec"] > 500_000

    wait_for(spun, 60, "half a second of the guest's spinning in its cgroup's CPU time")
    metrics = shown[-1]
    assert metrics["pids"]["current"] >= 1  # the tasks (threads) of the container's cgroup
    assert 1 << 20 < metrics["memory"]["usage"] < 64 << 20
    assert metrics["memory"]["usage_limit"] == 64 << 20
    containerd.ctr("task", "kill", "--signal", "SIGKILL", "metered", check=True)
    wait_for_status(containerd, "STOPPED")
    gone = containerd.ctr("task", "metrics", "metered")
    assert gone.returncode != 0 and "no metrics" in gone.stderr  # containerd drops our NotFound
    containerd.ctr("task", "delete", "metered", check=True)
    containerd.ctr("container", "delete", "metered", check=True)
    wait_for_nothing_left(containerd)


def test_a_cgroups_path_stays_in_the_cgroup_hierarchy(containerd, images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`ctr run --cgroup` with a path that climbs: the cgroupfs form is cleaned as runc cleans it (the
    guest's cgroup is `{target}` in each hierarchy, not the host directory), and a systemd slice, prefix
    or name naming a path fails Create; the target is never made."""
    from wasmctr_node.cgroups import is_v2

    target = tmp_path / "escape"
    climbing = "../" * 12 + str(target).lstrip("/")
    for refused in (f"system.slice::{climbing}", f"system.slice:{climbing}:x", f"{climbing}.slice:cri:x"):
        proc = ctr_run(containerd, "--rm", "--cgroup", refused, images["hostile"], "cg-refused", "/hostile.wasm",
                       "exit", "0")
        assert proc.returncode != 0 and "not a unit name" in proc.stderr, proc.stderr
        containerd.ctr("container", "delete", "cg-refused")
    try:
        proc = ctr_run(containerd, "-d", "--cgroup", "/" + climbing, images["hostile"], "cg-climb", "/hostile.wasm",
                       "sleep", "30")
        assert proc.returncode == 0, proc.stderr
        pid = int(containerd.ctr("task", "ls").stdout.split("cg-climb", 1)[1].split()[0])
        memberships = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        memory = [line for line in memberships if (line.startswith("0::") if is_v2() else ":memory:" in line)]
        assert memory and all(line.endswith(":" + str(target)) for line in memory)
        containerd.ctr("task", "kill", "--signal", "SIGKILL", "cg-climb", check=True)
        delete_task(containerd, "cg-climb")
        containerd.ctr("container", "delete", "cg-climb", check=True)
        assert not target.exists()
    finally:
        remove_cgroup_tree("/" + climbing)
    wait_for_nothing_left(containerd)


def test_wait_reports_128_plus_the_signal(containerd, images) -> None:  # type: ignore[no-untyped-def]
    for name, sig, code in (("killme-9", "SIGKILL", 137), ("killme-15", "SIGTERM", 143)):
        runner = subprocess.Popen(["ctr", "--address", str(containerd.socket), "run", *RUNTIME, "--platform",
                                   "wasi/wasm", "--rm", images["hostile"], name, "/hostile.wasm", "spin"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_status(containerd, "RUNNING")
        containerd.ctr("task", "kill", "--signal", sig, name, check=True)
        runner.communicate(timeout=10)
        assert runner.returncode == code
    wait_for_nothing_left(containerd)


def test_bind_mount_is_a_preopen_and_ro_is_honoured(containerd, images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host")
    read = ctr_run(containerd, "--rm", "--mount", f"type=bind,src={data},dst=/data,options=rbind:ro",
                   images["hostile"], "mount-1", "/hostile.wasm", "read", "/data/in.txt")
    assert read.returncode == 0 and "from the host" in read.stdout
    write = ctr_run(containerd, "--rm", "--mount", f"type=bind,src={data},dst=/data,options=rbind:ro",
                    images["hostile"], "mount-2", "/hostile.wasm", "write", "/data/out.txt")
    assert write.returncode == 1 and not (data / "out.txt").exists()
    outside = ctr_run(containerd, "--rm", images["hostile"], "mount-3", "/hostile.wasm", "read", "/etc/hostname")
    assert outside.returncode == 1


def test_stdin_reaches_the_guest(containerd, images) -> None:  # type: ignore[no-untyped-def]
    proc = ctr_run(containerd, "--rm", images["hostile"], "stdin-1", "/hostile.wasm", "cat",
                   input="piped through containerd")
    assert proc.returncode == 0 and proc.stdout == "piped through containerd"


LOGGER = """#!{python}
# A containerd logging binary: stdout on fd 3, stderr on fd 4, ready when fd 5 is closed.
import os, sys, threading
log = open(sys.argv[sys.argv.index("--file") + 1], "a")
os.close(5)
lock = threading.Lock()
def pump(fd, name):
    with os.fdopen(fd, "rb") as stream:
        for line in stream:
            with lock:
                log.write(f"{{name}} {{os.environ['CONTAINER_NAMESPACE']}}/{{os.environ['CONTAINER_ID']}}: "
                          f"{{line.decode()}}")
                log.flush()
threads = [threading.Thread(target=pump, args=(fd, name)) for fd, name in ((3, "out"), (4, "err"))]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_binary_log_uri_starts_a_containerd_logging_binary(containerd, images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    logger = tmp_path / "logger"
    logger.write_text(LOGGER.format(python=sys.executable))
    logger.chmod(0o755)
    log = tmp_path / "guest.log"
    uri = f"binary://{logger}?--file={log}"
    hello = ctr_run(containerd, "--rm", "--log-uri", uri, images["hello"], "log-1", "/hello.wasm", "logs", "3")
    assert hello.returncode == 3, hello.stderr
    cat = ctr_run(containerd, "--rm", "--log-uri", uri, images["hostile"], "log-2", "/hostile.wasm", "cat")
    assert cat.returncode == 0, cat.stderr
    assert log.read_text().splitlines() == ["out default/log-1: Hello, logs!", "out default/log-1: argc=3",
                                            "err default/log-2: 0 bytes"]
    assert subprocess.run(["pgrep", "-f", str(logger)], capture_output=True).returncode == 1
    missing = ctr_run(containerd, "--rm", "--log-uri", f"binary://{tmp_path}/nothing", images["hello"], "log-3")
    assert missing.returncode != 0 and f"logging binary {tmp_path}/nothing" in missing.stderr
    containerd.ctr("container", "delete", "log-3")
    wait_for_nothing_left(containerd)


def test_memory_limit_caps_the_guest(containerd, images) -> None:  # type: ignore[no-untyped-def]
    proc = ctr_run(containerd, "--rm", "--memory-limit", str(32 << 20), images["hostile"], "mem-1",
                   "/hostile.wasm", "bomb")
    assert proc.returncode == 2, proc.stderr
    assert int(proc.stdout.split()[1]) < 32


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


def test_policy_annotations_refuse_at_create_or_trap(containerd, images) -> None:  # type: ignore[no-untyped-def]
    deny = ["--annotation", "wasmctr.io/deny-wasi=fd_write"]
    refused = ctr_run(containerd, "--rm", *deny, images["hello"], "policy-1")
    assert refused.returncode != 0
    assert "refused: the guest imports wasi_snapshot_preview1.fd_write" in refused.stderr, refused.stderr
    trapped = ctr_run(containerd, "--rm", *deny, "--annotation", "wasmctr.io/syscall-policy=trap", images["hello"],
                      "policy-2")
    assert trapped.returncode == 134 and trapped.stdout == ""
    assert "WASI call wasi_snapshot_preview1.fd_write is denied" in trapped.stderr, trapped.stderr
    containerd.ctr("container", "delete", "policy-1")
    wait_for_nothing_left(containerd)


def test_twenty_concurrent_containers_leave_nothing_behind(containerd, images) -> None:  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda n: ctr_run(containerd, "--rm", images["hello"], f"many-{n}", "/hello.wasm",
                                                  str(n), str(n % 5)), range(20)))
    for n, proc in enumerate(results):
        assert proc.returncode == n % 5 and proc.stdout.startswith(f"Hello, {n}!"), (n, proc.stderr)
    wait_for_nothing_left(containerd)


def test_one_shim_serves_a_continuous_stream_of_containers(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """Containers arriving 4 at a time for longer than the shim's linger: each one's reservation holds
    the shim until that container is created, so the shim neither exits under a container on its way
    (containerd would see `ttrpc: closed`) nor restarts."""
    shims: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            shims.update(containerd.shim_servers())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()

    def stream(worker: int) -> list[subprocess.CompletedProcess[str]]:
        results, n = [], 0
        while time.monotonic() - started < 3.0:  # outlasts the 2 s linger, however fast the machine
            results.append(ctr_run(containerd, "--rm", images["hello"], f"stream-{worker}-{n}"))
            n += 1
        return results

    try:
        with ThreadPoolExecutor(4) as pool:
            results = [proc for procs in pool.map(stream, range(4)) for proc in procs]
    finally:
        done.set()
        watcher.join()
    assert [p.stderr for p in results if p.returncode != 0] == []
    assert len(results) >= 8
    assert len(shims) == 1, shims
    wait_for_nothing_left(containerd)


def test_containerd_restart_while_a_task_runs(containerd, images) -> None:  # type: ignore[no-untyped-def]
    assert ctr_run(containerd, "-d", images["hostile"], "survivor", "/hostile.wasm", "spin").returncode == 0
    containerd.restart()
    assert "RUNNING" in containerd.ctr("task", "ls").stdout
    assert containerd.ctr("task", "kill", "--signal", "SIGKILL", "survivor").returncode == 0
    delete_task(containerd, "survivor")
    containerd.ctr("container", "delete", "survivor", check=True)
    wait_for_nothing_left(containerd)


def test_shim_killed_with_sigkill_is_cleaned_up(containerd, images) -> None:  # type: ignore[no-untyped-def]
    assert ctr_run(containerd, "-d", images["hostile"], "orphan", "/hostile.wasm", "spin").returncode == 0
    os.kill(containerd.shim_pid("orphan"), signal.SIGKILL)
    wait_for(lambda: "orphan" not in containerd.ctr("task", "ls").stdout, 10, "containerd to drop the shim's task")
    containerd.ctr("task", "delete", "orphan")
    containerd.ctr("container", "delete", "orphan")
    wait_for_nothing_left(containerd)


def test_a_pod_shares_one_shim_and_one_guests_trap_spares_the_other(containerd, images) -> None:  # type: ignore[no-untyped-def]
    pod = ["--annotation", "io.kubernetes.cri.sandbox-id=pod-1"]
    assert ctr_run(containerd, "-d", *pod, images["hostile"], "pod-sleeper", "/hostile.wasm", "sleep", "30"
                   ).returncode == 0
    crashed = ctr_run(containerd, "--rm", *pod, images["hostile"], "pod-crasher", "/hostile.wasm", "abort")
    assert crashed.returncode == 134 and "unreachable" in crashed.stderr

    assert "RUNNING" in containerd.ctr("task", "ls").stdout, "the other container of the pod still runs"
    assert containerd.shim_servers() == [containerd.shim_pid("pod-sleeper")], "one shim served the whole pod"
    containerd.ctr("task", "kill", "--signal", "SIGKILL", "pod-sleeper", check=True)
    delete_task(containerd, "pod-sleeper")
    containerd.ctr("container", "delete", "pod-sleeper", check=True)
    wait_for_nothing_left(containerd)


def test_memory_limit_trap_publishes_an_oom_event(containerd, images) -> None:  # type: ignore[no-untyped-def]
    with containerd.events() as events:
        proc = ctr_run(containerd, "--rm", "--memory-limit", str(32 << 20), images["hostile"], "oom-1",
                       "/hostile.wasm", "bomb", "abort")
        assert proc.returncode == 134 and "memory limit exceeded (32 MiB)" in proc.stderr
        wait_for(lambda: any("oom-1" in line and "/tasks/delete" in line for line in events),
                 what="the /tasks/delete event of oom-1")
        topics = [token for line in events if "oom-1" in line for token in line.split() if token.startswith("/tasks/")]
    assert topics[:2] == ["/tasks/create", "/tasks/start"]
    assert "/tasks/oom" in topics and topics.index("/tasks/oom") < topics.index("/tasks/exit")
    assert "/tasks/delete" in topics


def test_ttrpc_deadline_and_unknown_method(tmp_path: Path) -> None:
    import socket
    import threading as th

    from google.protobuf import empty_pb2
    from wasmctr_node.api import task_pb2
    from wasmctr_node.ttrpc import Client, Code, RpcError, Server, Service

    service = Service("test.Slow")
    service.method("Sleep", task_pb2.WaitRequest, lambda req, call: (time.sleep(1), empty_pb2.Empty())[1])
    service.method("Echo", task_pb2.StateRequest, lambda req, call: task_pb2.StateResponse(id=call.namespace))
    server = Server([service])
    path = tmp_path / "t.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    th.Thread(target=server.serve, args=(listener,), daemon=True).start()
    client = Client(f"unix://{path}")
    assert client.call("test.Slow", "Echo", task_pb2.StateRequest(), task_pb2.StateResponse, "ns1").id == "ns1"
    with pytest.raises(RpcError) as slow:
        client.call("test.Slow", "Sleep", task_pb2.WaitRequest(), empty_pb2.Empty, timeout=0.2)
    assert slow.value.code == Code.DEADLINE_EXCEEDED
    with pytest.raises(RpcError) as missing:
        client.call("test.Slow", "Nope", task_pb2.WaitRequest(), empty_pb2.Empty)
    assert missing.value.code == Code.UNIMPLEMENTED
    server.stop()


def test_hand_encoded_delete_response_matches_the_generated_message() -> None:
    from wasmctr_node.api import task_pb2
    from wasmctr_node.verbs import delete_response

    decoded = task_pb2.DeleteResponse.FromString(delete_response(4242, 137, 1700000000.25))
    assert (decoded.pid, decoded.exit_status) == (4242, 137)
    assert (decoded.exited_at.seconds, decoded.exited_at.nanos) == (1700000000, 250000000)


def test_the_binary_hands_its_verbs_to_the_template_and_imports_almost_nothing(  # type: ignore[no-untyped-def]
        containerd, images, tmp_path: Path) -> None:
    """containerd runs the binary twice per container: with a template running, `delete` is answered by
    it, and the binary loads none of the modules that cost tens of milliseconds per run."""
    from wasmctr_node.api import task_pb2

    assert ctr_run(containerd, "--rm", images["hello"], "warm-template").returncode == 0  # a template now exists
    from wasmctr_node.process import start_time

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shim = Path(sys.executable).parent / "containerd-shim-wasmctr-v1"

    def delete() -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([sys.executable, "-X", "importtime", str(shim), "-namespace", "default", "-address",
                               str(containerd.socket), "-id", "gone", "-bundle", str(bundle), "delete"],
                              capture_output=True, timeout=30, cwd=tmp_path,
                              env={**os.environ, "WASMCTR_SHIM_SOCKET_DIR": str(containerd.shims)})
        assert proc.returncode == 0, proc.stderr
        return proc

    (bundle / "wasmctr.pid").write_text("not a pid")
    proc = delete()
    answer = task_pb2.DeleteResponse.FromString(proc.stdout)
    assert (answer.pid, answer.exit_status) == (0, 137) and answer.exited_at.seconds > 0
    # a recorded pid that now names another process (its start time differs) is not killed; the recorded one is
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (bundle / "wasmctr.pid").write_text(f"{bystander.pid} {start_time(bystander.pid) + 1}")
        assert task_pb2.DeleteResponse.FromString(delete().stdout).pid == bystander.pid
        assert bystander.poll() is None
        (bundle / "wasmctr.pid").write_text(f"{bystander.pid} {start_time(bystander.pid)}")
        delete()
        assert bystander.wait(timeout=10) == -signal.SIGKILL
    finally:
        bystander.kill()
        bystander.wait()
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()}
    assert "wasmctr_node.layout" in imported
    assert not imported & {"re", "json", "hashlib", "socket", "subprocess", "wasmctr_node.verbs", "wasmtime", "typing"}
    wait_for_nothing_left(containerd)


def test_a_trap_is_134_when_the_guests_stderr_has_no_reader(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """The logging binary is gone (`true` exits at once), so the trap's diagnostic line cannot be written:
    the exit status is still the trap's."""
    true = shutil.which("true")
    proc = ctr_run(containerd, "--rm", "--log-uri", f"binary://{true}", images["hostile"], "no-reader",
                   "/hostile.wasm", "abort")
    assert proc.returncode == 134, proc.stderr
    wait_for_nothing_left(containerd)


def test_a_guest_process_keeps_only_the_capabilities_its_spec_grants(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """ctr's default spec grants Docker's default set: the guest's process has that set (not root's
    all), less what --cap-drop removes, plus what --cap-add grants, and no_new_privs."""
    cap_kill, cap_sys_admin = 1 << 5, 1 << 21
    found = {}
    for name, flags in (("caps-default", []), ("caps-changed", ["--cap-drop", "CAP_KILL", "--cap-add",
                                                                  "CAP_SYS_ADMIN"])):
        assert ctr_run(containerd, "-d", *flags, images["hostile"], name, "/hostile.wasm", "sleep", "30"
                       ).returncode == 0
        pid = [line.split()[1] for line in containerd.ctr("task", "ls").stdout.splitlines()
               if line.startswith(name)][0]
        found[name] = proc_status(pid)
        containerd.ctr("task", "kill", "--signal", "SIGKILL", name)
    default, changed = (int(found[n]["CapEff"][0], 16) for n in ("caps-default", "caps-changed"))
    assert default & cap_kill and not default & cap_sys_admin and default != (1 << 41) - 1
    assert changed == default & ~cap_kill | cap_sys_admin
    for fields in found.values():
        assert fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] and fields["NoNewPrivs"] == ["1"]
        assert fields["Uid"][0] == "0" and fields["Seccomp"] == ["2"]  # filtered (wasmctr/sandbox/seccomp.py)
    for name in found:
        delete_task(containerd, name)
        containerd.ctr("container", "delete", name)
    wait_for_nothing_left(containerd)


def task_pid(containerd, name: str) -> int:  # type: ignore[no-untyped-def]
    return int([line.split()[1] for line in containerd.ctr("task", "ls").stdout.splitlines()
                if line.startswith(name)][0])


def remove_task(containerd, name: str) -> None:  # type: ignore[no-untyped-def]
    containerd.ctr("task", "kill", "--signal", "SIGKILL", name)
    delete_task(containerd, name)
    containerd.ctr("container", "delete", name)


def test_a_guest_that_got_past_wasmtime_reaches_nothing_outside_its_container(  # type: ignore[no-untyped-def]
        containerd, images, escape: Path, tmp_path: Path) -> None:
    """ctr's spec lists new pid, ipc, uts and mount namespaces: the guest's process is in them, pid 1 of
    its own. Native code under its confinement (its filters, namespaces, ids and capabilities: Docker's
    default set, CAP_KILL among them) makes no namespace, signals or traces no process outside, kills
    nothing, mounts nothing, and reaches neither BPF, io_uring nor keyrings. The guest, stopped for its
    filters to be read and continued, sleeps on."""
    assert ctr_run(containerd, "-d", images["hostile"], "escape", "/hostile.wasm", "sleep", "60").returncode == 0
    pid = task_pid(containerd, "escape")
    for kind in ("pid", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert proc_status(pid)["NSpid"] == [str(pid), "1"]
    assert attack(escape, pid, tmp_path) == {"filters": 2, **ESCAPE_REFUSED}
    assert process_state(pid) in ("S", "R") and "RUNNING" in containerd.ctr("task", "ls").stdout
    remove_task(containerd, "escape")
    wait_for_nothing_left(containerd)


def test_a_guest_stopped_and_continued_sleeps_on_and_exits_as_it_would(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP and SIGCONT (a debugger, the cgroup freezer) interrupt the guest's sleeps, which the kernel
    resumes through restart_syscall: the filter allows it, so the guest finishes with its own code."""
    runner = subprocess.Popen(["ctr", "--address", str(containerd.socket), "run", *RUNTIME, "--platform", "wasi/wasm",
                               images["hostile"], "stopped", "/hostile.wasm", "sleep", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_status(containerd, "RUNNING", 30)
    pid = task_pid(containerd, "stopped")
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: process_state(pid) == "T", 30, "the guest to be stopped")
    os.kill(pid, signal.SIGCONT)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    containerd.ctr("container", "delete", "stopped")
    wait_for_nothing_left(containerd)


def test_the_guests_of_every_pod_run_one_copy_of_the_compiled_code(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """Each guest's code is mapped from the compile cache entry, not copied into its pod's shim: the
    guests of all pods share its pages through the page cache. The entry's descriptor, which wasmtime
    keeps to map memory images from, survives the container process closing what it inherited."""
    code_files = {}
    for n in range(2):
        assert ctr_run(containerd, "-d", "--annotation", f"io.kubernetes.cri.sandbox-id=code-pod-{n}",
                       images["hostile"], f"code-{n}", "/hostile.wasm", "sleep", "30").returncode == 0
        pid = [line.split()[1] for line in containerd.ctr("task", "ls").stdout.splitlines()
               if line.startswith(f"code-{n}")][0]
        executable = {line.split()[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                      if line.split()[1] == "r-xp" and len(line.split()) > 5}
        code_files[n] = {path for path in executable if path.endswith(".cwasm")}
        assert len(code_files[n]) == 1 and "/cache/compiled/" in next(iter(code_files[n])), executable
        containerd.ctr("task", "kill", "--signal", "SIGKILL", f"code-{n}")
    assert code_files[0] == code_files[1]
    for n in range(2):
        delete_task(containerd, f"code-{n}")
        containerd.ctr("container", "delete", f"code-{n}")
    wait_for_nothing_left(containerd)


@pytest.mark.parametrize("process, expected", [
    ({"user": {"uid": 1000, "gid": 1001, "additionalGids": [5, 6]}},
     {"Uid": "1000", "Gid": "1001", "Groups": ["5", "6"], "CapEff": 0, "CapBnd": 0}),
    ({"user": {"uid": 1000, "gid": 1000}, "capabilities": {n: ["CAP_NET_BIND_SERVICE"] for n in (
        "bounding", "effective", "permitted")}},
     {"Uid": "1000", "Gid": "1000", "Groups": [], "CapEff": 1 << 10, "CapBnd": 1 << 10}),
])
def test_the_container_process_becomes_the_specs_user(process: dict, expected: dict) -> None:  # type: ignore[type-arg]
    from wasmctr.sandbox import privileges

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read_end)
            privileges.drop(process)
            os.write(write_end, Path("/proc/self/status").read_bytes())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        text = f.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    fields = status_fields(text)
    assert fields["Uid"] == [expected["Uid"]] * 4 and fields["Gid"] == [expected["Gid"]] * 4
    assert fields["Groups"] == expected["Groups"] and fields["NoNewPrivs"] == ["1"]
    assert int(fields["CapEff"][0], 16) == int(fields["CapPrm"][0], 16) == expected["CapEff"]
    assert int(fields["CapBnd"][0], 16) == expected["CapBnd"] and int(fields["CapAmb"][0], 16) == 0


def confined(script: str, setup: str = "", network: bool = False, profile: dict | None = None) -> object:  # type: ignore[type-arg]
    """Run `setup`, then become a container process (one capability left, no_new_privs, the container
    seccomp filter and `profile`) and run `script`, in a new interpreter; what it prints last, as
    JSON. A new interpreter, not a fork of this one: pytest's process may have run guests, and the
    engine's runtime threads do not survive a fork. As in the shim's child, what is loaded or prepared
    (modules, the guest's code) is so before the filter."""
    prelude = textwrap.dedent("""
        import ctypes, errno, json, os, socket, sys
        from pathlib import Path
        from wasmctr.sandbox import landlock, privileges, seccomp
        from wasmctr.running.executor import Executor
        from wasmctr.running.spec import Mount, RunSpec

        def errno_of(call):
            try:
                call()
            except OSError as exc:
                return exc.errno
            return 0
        """)
    confine = textwrap.dedent(f"""
        privileges.drop({{"capabilities": {{n: ["CAP_CHOWN"] for n in ("bounding", "effective", "permitted")}}}})
        seccomp.install(seccomp.allowlist({network!r}), seccomp.build({profile!r}) if {profile!r} else None)
        """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(setup) + confine + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def guest_setup(hostile_wasm: Path, data: Path, out: Path) -> str:
    return f"""
        executor = Executor()
        guest = executor.prepare(RunSpec(Path({str(hostile_wasm)!r}), ["hostile", "fs", "/data"], stdout={str(out)!r},
                                         mounts=[Mount(Path({str(data)!r}), "/data", False)]))
        """


def test_the_container_filter_lets_a_guest_run_and_refuses_what_no_guest_needs(hostile_wasm: Path,
                                                                               tmp_path: Path) -> None:
    """Under the filter a guest still reads, writes, creates, renames, links and removes files in a
    granted directory; execve, ptrace, mount, unshare and (without a granted network) socket fail with
    EPERM in the process, and prctl does for every option but the four allowed (an argument rule)."""
    import errno

    out = tmp_path / "out.txt"
    result = confined(f"""
        libc = ctypes.CDLL(None, use_errno=True)
        def libc_errno(result):
            return ctypes.get_errno() if result != 0 else 0
        print(json.dumps({{
            "guest": executor.start(guest).exit_code,
            "execve": errno_of(lambda: os.execv("/bin/true", ["true"])),
            "socket": errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
            "ptrace": libc_errno(libc.ptrace(16, os.getppid(), 0, 0)),  # PTRACE_ATTACH
            "mount": libc_errno(libc.mount(b"none", {str(tmp_path).encode()!r}, b"tmpfs", 0, None)),
            "unshare": libc_errno(libc.unshare(0x10000000)),  # CLONE_NEWUSER
            "prctl PR_SET_NAME": libc_errno(libc.prctl(15, b"named", 0, 0, 0)),
            "prctl PR_SET_DUMPABLE": libc_errno(libc.prctl(4, 1, 0, 0, 0))}}))
        """, setup=guest_setup(hostile_wasm, tmp_path, out))
    assert out.read_text() == "fs ok\n"
    assert result == {"guest": 0, "execve": errno.EPERM, "socket": errno.EPERM, "ptrace": errno.EPERM,
                      "mount": errno.EPERM, "unshare": errno.EPERM, "prctl PR_SET_NAME": 0,
                      "prctl PR_SET_DUMPABLE": errno.EPERM}
    granted = confined("print(errno_of(lambda: socket.socket(socket.AF_INET).close()))", network=True)
    assert granted == 0


def test_the_specs_seccomp_profile_applies_on_top(hostile_wasm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    code = confined("print(executor.start(guest).exit_code)", setup=guest_setup(hostile_wasm, tmp_path, out),
                    profile=profile)
    assert code == 1 and out.read_text() == "denied: Permission denied\n"


def test_a_spec_profiles_argument_rules_match_only_their_arguments() -> None:
    """`args` as runc reads them: EQ compares `value`; MASKED_EQ masks the argument with `value` and
    compares it with `valueTwo`. Each rule fails its call only for the arguments it names."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["prctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
         "args": [{"index": 0, "value": 15, "op": "SCMP_CMP_EQ"}]},  # PR_SET_NAME
        {"names": ["fcntl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
         "args": [{"index": 1, "value": 0xF, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"}]}]}  # F_GETFL, not F_GETFD
    result = confined("""
        libc = ctypes.CDLL(None, use_errno=True)
        def failed(result):
            return ctypes.get_errno() if result == -1 else 0
        print(json.dumps({"PR_SET_NAME": failed(libc.prctl(15, b"named", 0, 0, 0)),
                          "PR_GET_NAME": failed(libc.prctl(16, ctypes.create_string_buffer(16), 0, 0, 0)),
                          "F_GETFL": failed(libc.fcntl(0, 3)), "F_GETFD": failed(libc.fcntl(0, 1))}))
        """, profile=profile)
    assert result == {"PR_SET_NAME": 13, "PR_GET_NAME": 0, "F_GETFL": 38, "F_GETFD": 0}


def test_a_spec_profiles_repeated_argument_is_split_and_an_unknown_name_skipped() -> None:
    """Two conditions on prctl's option (a deny rule) become a rule each, as runc splits them: both
    options are denied, others not; the unknown name beside prctl is skipped, not the rule."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_call", "prctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
         "args": [{"index": 0, "value": 15, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]}]}
    result = confined("""
        libc = ctypes.CDLL(None, use_errno=True)
        def failed(result):
            return ctypes.get_errno() if result == -1 else 0
        print(json.dumps({"PR_SET_NAME": failed(libc.prctl(15, b"named", 0, 0, 0)),
                          "PR_GET_NAME": failed(libc.prctl(16, ctypes.create_string_buffer(16), 0, 0, 0)),
                          "PR_GET_SECCOMP": failed(libc.prctl(21, 0, 0, 0, 0))}))
        """, profile=profile)
    assert result == {"PR_SET_NAME": 13, "PR_GET_NAME": 13, "PR_GET_SECCOMP": 0}


def test_landlock_confines_the_process_to_its_rootfs_and_mounts(tmp_path: Path) -> None:
    """Below WASI: once the ruleset is enforced, host code in the process opens nothing outside its
    grants, and writes only below the writable ones."""
    import errno

    from wasmctr.sandbox import landlock

    if not landlock.abi():
        pytest.skip("this kernel has no Landlock")
    rootfs, rw, outside = tmp_path / "rootfs", tmp_path / "rw", tmp_path / "outside"
    for directory in (rootfs, rw, outside):
        directory.mkdir()
        (directory / "file").write_text("x")
    result = confined(f"""
        rootfs, rw, outside = Path({str(rootfs)!r}), Path({str(rw)!r}), Path({str(outside)!r})
        assert landlock.restrict([rootfs], [rw])
        print(json.dumps({{
            "read rootfs": errno_of(lambda: os.close(os.open(rootfs / "file", os.O_RDONLY))),
            "write rootfs": errno_of(lambda: os.close(os.open(rootfs / "new", os.O_WRONLY | os.O_CREAT))),
            "write rw": errno_of(lambda: os.close(os.open(rw / "new", os.O_WRONLY | os.O_CREAT))),
            "read outside": errno_of(lambda: os.close(os.open(outside / "file", os.O_RDONLY))),
            "read /etc": errno_of(lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)))}}))
        """)
    assert result == {"read rootfs": 0, "write rootfs": errno.EACCES, "write rw": 0,
                      "read outside": errno.EACCES, "read /etc": errno.EACCES}


def test_stress_create_kill_delete_with_deadlines_leaves_nothing_behind(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """120 containers, 8 at a time, each created, killed and deleted, one in four under a ctr deadline
    short enough that containerd may give up on its Create: afterwards no task, shim, mount, socket,
    zombie, stray guest process or cgroup is left."""
    from wasmctr_node.cgroups import Cgroup

    run = f"stress{os.getpid()}"  # cgroups outlive a failed run: names of this run only

    def cycle(i: int) -> None:
        name = f"{run}-{i}"
        deadline = ["--timeout", "150ms"] if i % 4 == 0 else []
        subprocess.run(["ctr", "--address", str(containerd.socket), *deadline, "run", *RUNTIME, "--platform",
                        "wasi/wasm", "-d", images["hostile"], name, "/hostile.wasm", "sleep", "30"],
                       capture_output=True, timeout=120)
        containerd.ctr("task", "kill", "--signal", "SIGKILL", name)
        wait_for(lambda: containerd.ctr("task", "delete", name).returncode == 0
                 or name not in containerd.ctr("task", "ls", "-q").stdout.split(), 10, f"task {name} to be gone")
        containerd.ctr("container", "delete", name)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(cycle, range(120)))
    for name in containerd.ctr("container", "ls", "-q").stdout.split():  # a Create that timed out in ctr
        containerd.ctr("task", "delete", "--force", name)
        containerd.ctr("container", "delete", name)
    wait_for_nothing_left(containerd, timeout=30)
    guests = [int(pid) for pid in subprocess.run(["pgrep", "-f", f"-address {containerd.socket} "],
                                                   capture_output=True, text=True).stdout.split()]
    leftover = [pid for pid in guests if not Path(f"/proc/{pid}/cmdline").read_bytes().endswith(b"\0template\0")
                or ppid(pid) in guests]
    assert leftover == []  # only the template: no shim, no guest
    templates = [pid for pid in guests if pid not in leftover]
    zombies = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and ppid(int(entry)) in templates
               and process_state(int(entry)) == "Z"]
    assert zombies == []  # the template reaped every shim it forked
    stale = [name for i in range(120) for name in [f"{run}-{i}"]
             if any(Path(d).exists() for d in Cgroup.open(f"/default/{name}").directories.values())]
    assert stale == []


def test_hash_entrypoints_through_containerd(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """runwasi's `/app.wasm#hello` runs that export; a missing one fails Create with the exports there are."""
    proc = ctr_run(containerd, "--rm", images["func"], "func-hello", "/app.wasm#hello")
    assert proc.returncode == 0 and proc.stdout == "from hello\n", proc.stderr
    missing = ctr_run(containerd, "--rm", images["func"], "func-missing", "/app.wasm#nope")
    assert missing.returncode != 0
    assert "the guest has no export 'nope'; it exports: _start, add, hello, memory" in missing.stderr
    containerd.ctr("container", "delete", "func-missing")
    wait_for_nothing_left(containerd)


def test_the_default_devices_through_containerd(containerd, images) -> None:  # type: ignore[no-untyped-def]
    from conftest import DEVICE_CASES

    for i, (args, expected) in enumerate(DEVICE_CASES):
        proc = ctr_run(containerd, "--rm", images["hostile"], f"dev-{i}", "/hostile.wasm", *args)
        assert proc.stdout == expected, (args, proc)
    ls = ctr_run(containerd, "--rm", images["hostile"], "dev-ls", "/hostile.wasm", "ls", "/dev")
    assert sorted(ls.stdout.split()) == [".", "..", "full", "null", "random", "tty", "urandom", "zero"]
    wait_for_nothing_left(containerd)


def test_a_lingering_shim_is_reserved_before_it_is_reused(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """The next container reuses the warm shim; a `start` racing the shim's exit never gets a dead address."""
    first = ctr_run(containerd, "--rm", images["hello"], "linger-1")
    assert first.returncode == 0
    assert containerd.shim_servers(), "the shim lingers after its last container"
    for n in range(12):  # around the 2 s linger: some starts find the shim leaving
        time.sleep(0.35)
        proc = ctr_run(containerd, "--rm", images["hello"], f"linger-race-{n}")
        assert proc.returncode == 0, proc.stderr
    wait_for_nothing_left(containerd)


@pytest.mark.parametrize("binary", ["containerd-shim-wasmctr-v1", "containerd-shim-wasmctr-shared-v1"])
def test_start_that_cannot_make_its_socket_fails_in_one_line(tmp_path: Path, binary: str) -> None:
    shim = Path(sys.executable).parent / binary
    proc = subprocess.run([str(shim), "-namespace", "ns", "-address", str(tmp_path / "ctd.sock"), "-id", "c1",
                           "start"], input="", capture_output=True, text=True, cwd=tmp_path, timeout=30,
                          env={**os.environ, "WASMCTR_SHIM_SOCKET_DIR": "/proc/no-such-dir"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"{binary} start: [Errno 2] No such file or directory: '/proc/no-such-dir'"]


def test_new_groups_get_shims_forked_from_the_warm_template(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """A pod's shim is forked from the node's template (wasmtime already loaded), not a new interpreter;
    a template whose code is stale answers so and exits, and the next start brings a current one."""
    import socket

    from wasmctr_node.containerd import encode_request, template_path

    template_socket = containerd.shims / Path(template_path(str(containerd.socket))).name  # its socket dir's

    def run_in_new_group(name: str) -> int:
        pod = ["--annotation", f"io.kubernetes.cri.sandbox-id={name}"]
        assert ctr_run(containerd, "-d", *pod, images["hostile"], name, "/hostile.wasm", "sleep", "30"
                       ).returncode == 0
        return containerd.shim_pid(name)

    run_in_new_group("group-a")  # a template exists after the first start at the latest
    wait_for(template_socket.exists, 20, "the template's socket")
    shim = run_in_new_group("group-b")
    template = ppid(shim)
    assert Path(f"/proc/{template}/cmdline").read_bytes().endswith(b"\0template\0")
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(template_socket))
        conn.sendall(encode_request("old code", "/", ["-id", "x", "delete"], {}))
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(16) == b"stale"
    wait_for(lambda: not Path(f"/proc/{template}").exists() or process_state(template) == "Z", 10,
             "the stale template to exit")
    assert run_in_new_group("group-c") != shim  # served still, by a spawned shim while a new template starts
    for name in ("group-a", "group-b", "group-c"):
        containerd.ctr("task", "kill", "--signal", "SIGKILL", name)
    for name in ("group-a", "group-b", "group-c"):
        delete_task(containerd, name)
        containerd.ctr("container", "delete", name)
    wait_for_nothing_left(containerd)


def test_a_spec_whose_pod_json_would_read_otherwise_is_refused_in_one_line(  # type: ignore[no-untyped-def]
        containerd, images) -> None:
    """containerd writes `&` in an annotation's key as `\\u0026` (Go's encoder): `start` cannot compare that
    key without decoding it, so it refuses the container with one line rather than guess its pod."""
    proc = ctr_run(containerd, "--rm", "--annotation", "a&b=1", images["hello"], "escaped-key")
    shim_line, *after = proc.stderr.splitlines()
    assert proc.returncode != 0 and shim_line.endswith(
        "containerd-shim-wasmctr-v1 start: cannot tell the container's pod from its config.json: a key beside "
        "io.kubernetes.cri.sandbox-id is written with an escape")
    assert after == [": exit status 1: unknown"]  # containerd's, after the binary's one line
    containerd.ctr("container", "delete", "escaped-key")
    wait_for_nothing_left(containerd)


NOBODY = 65534


def connect_as(uid: int, path: Path, request: bytes, half_close: bool) -> str:
    """What a process of `uid` (gid alike, no other groups) meets when it connects to `path` and sends
    `request` (then ends its side, where `half_close`): "refused" at connect, "closed" without a byte of
    answer, or "answered". Forked and setuid, as any local user's process is."""
    import socket

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        outcome = b"error"
        try:
            os.close(read)
            if uid:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(20)
                try:
                    conn.connect(str(path))
                except PermissionError:
                    outcome = b"refused"
                else:
                    try:
                        conn.sendall(request)
                        if half_close:
                            conn.shutdown(socket.SHUT_WR)
                        outcome = b"answered" if conn.recv(1) else b"closed"
                    except (BrokenPipeError, ConnectionResetError):
                        outcome = b"closed"
        finally:
            os.write(write, outcome)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


def state_request(container_id: str) -> bytes:
    """A ttrpc frame asking the Task API for a container's state (the API that also runs runc as root)."""
    from wasmctr_node.api import task_pb2, ttrpc_pb2
    from wasmctr_node.ttrpc import HEADER, TYPE_REQUEST

    request = ttrpc_pb2.Request(service="containerd.task.v2.Task", method="State",
                                payload=task_pb2.StateRequest(id=container_id).SerializeToString())
    request.metadata.add(key="containerd-namespace", value="default")
    data = request.SerializeToString()
    return HEADER.pack(len(data), 1, TYPE_REQUEST, 0) + data


def test_only_root_reaches_the_template_and_the_shims_of_a_umask_0_containerd(  # type: ignore[no-untyped-def]
        images, tmp_path: Path) -> None:
    """Under containerd's umask 0000 a pod shim's socket was 0777, and uid 65534 called the Task API. The
    socket directory is 0700 (one an older install left open too), every socket is 0600 from its bind
    (by the binary, and by the template for a later pod), and where the directory and sockets were
    opened up anyway, a peer neither root nor containerd's user is closed unanswered; root is served."""
    import stat

    from services import Containerd, wait_for
    from wasmctr_node.containerd import encode_request
    from wasmctr_node.layout import code_stamp, template_path

    ctd = Containerd(tmp_path / "ctd", umask=0)
    ctd.shims.chmod(0o755)
    ctd.start()
    try:
        ctd.ctr("image", "pull", "--plain-http", "--platform", "wasi/wasm", images["hostile"], check=True)
        template = ctd.shims / Path(template_path(str(ctd.socket))).name
        names = ["umask-1", "umask-2"]  # the first bound by the binary itself, the second by the template
        for n, name in enumerate(names):
            if n:
                wait_for(template.exists, what="the shim template")
            pod = ["--annotation", f"io.kubernetes.cri.sandbox-id={name}"]
            assert ctr_run(ctd, "-d", *pod, images["hostile"], name, "/hostile.wasm", "sleep", "60").returncode == 0
        bundles = ctd.directory / "state" / "io.containerd.runtime.v2.task" / "default"
        shims = [Path((bundles / name / "address").read_text().removeprefix("unix://")) for name in names]
        delete = encode_request(code_stamp(), str(tmp_path), ["-namespace", "umask-other", "-address", str(ctd.socket),
                                                              "-id", "nothing", "delete"], {})
        targets = [*((path, state_request(name), False) for path, name in zip(shims, names, strict=True)),
                   (template, delete, True)]
        assert stat.S_IMODE(ctd.shims.stat().st_mode) == 0o700
        assert [stat.S_IMODE(path.stat().st_mode) for path, _, _ in targets] == [0o600] * 3
        assert [connect_as(NOBODY, *target) for target in targets] == ["refused"] * 3
        ctd.shims.chmod(0o711)  # a node where someone opened them up
        for path, _, _ in targets:
            path.chmod(0o666)
        assert [connect_as(NOBODY, *target) for target in targets] == ["closed"] * 3
        assert [connect_as(0, *target) for target in targets] == ["answered"] * 3
        for name in names:
            ctd.ctr("task", "kill", "--signal", "SIGKILL", name)
        wait_for(lambda: ctd.ctr("task", "ls").stdout.count("STOPPED") == 2, what="the tasks' end")
        for name in names:
            ctd.ctr("task", "delete", name)
            ctd.ctr("container", "delete", name)
    finally:
        ctd.stop()


def test_a_requests_environment_chooses_nothing_the_template_runs(  # type: ignore[no-untyped-def]
        containerd, images, tmp_path: Path) -> None:
    """`delete` of a native container runs runc. A request carrying WASMCTR_RUNC=/path (or a PATH with a
    `runc` of its own) had the template run that path as root; it runs its own. The same delete by the
    binary itself, whose own environment it is, runs the script: the request reached runc's call."""
    import socket

    from wasmctr_node.api import task_pb2
    from wasmctr_node.containerd import encode_request
    from wasmctr_node.layout import code_stamp, template_path

    ran, bindir, bundle = tmp_path / "ran", tmp_path / "bin", tmp_path / "bundle"
    bindir.mkdir()
    for name in ("evil-runc", "runc"):
        (bindir / name).write_text(f"#!/bin/sh\necho {name} >> {ran}\n")
        (bindir / name).chmod(0o755)
    bundle.mkdir()
    (bundle / "runc.pid").write_text("1")  # a native container's bundle
    argv = ["-namespace", "env-test", "-address", str(containerd.socket), "-id", "env-1", "-bundle", str(bundle),
            "delete"]
    hostile = {**os.environ, "WASMCTR_RUNC": str(bindir / "evil-runc"), "PATH": f"{bindir}:{os.environ['PATH']}"}
    shim = Path(sys.executable).parent / "containerd-shim-wasmctr-v1"
    by_itself = subprocess.run([str(shim), *argv], capture_output=True, timeout=30, cwd=bundle,
                               env={**hostile, "WASMCTR_SHIM_SOCKET_DIR": str(tmp_path / "no-template")})
    assert by_itself.returncode == 0 and ran.read_text() == "evil-runc\n"
    ran.unlink()

    assert ctr_run(containerd, "--rm", images["hello"], "env-warm").returncode == 0
    template = containerd.shims / Path(template_path(str(containerd.socket))).name
    wait_for(template.exists, 20, "the template's socket")
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(template))
        conn.sendall(encode_request(code_stamp(), str(bundle), argv, hostile))
        conn.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: conn.recv(65536), b""))
    assert answer[:1] == b"+", answer
    assert task_pb2.DeleteResponse.FromString(answer[1:]).exit_status == 137
    assert not ran.exists()
    wait_for_nothing_left(containerd)


def test_a_guest_joins_the_network_namespace_its_spec_names(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """A pod's containers share its network namespace: the spec names it by path, and the guest's process
    is in it (here a namespace of a process the test starts with `unshare --net`)."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        netns = f"/proc/{holder.pid}/ns/net"
        wait_for(lambda: os.stat(netns).st_ino != os.stat("/proc/self/ns/net").st_ino, 5,
                 "unshare to make the namespace")
        assert ctr_run(containerd, "-d", "--with-ns", f"network:{netns}", images["hostile"], "netns-1",
                       "/hostile.wasm", "sleep", "30").returncode == 0
        pid = int(containerd.ctr("task", "ls").stdout.split("netns-1", 1)[1].split()[0])
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        containerd.ctr("task", "kill", "--signal", "SIGKILL", "netns-1", check=True)
        delete_task(containerd, "netns-1")
        containerd.ctr("container", "delete", "netns-1")
    finally:
        holder.kill()
        holder.wait()
    wait_for_nothing_left(containerd)
