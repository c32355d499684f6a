"""containerd-shim-wasmctr-v1's Task API, driven by a real containerd through `ctr`: a task's lifecycle
(run, detach, kill, wait, delete, containerd restarting under it, many at once, a stress of creates
under deadlines), what a task is given and gives back (exit codes, stdin, logging binaries, bind
mounts, memory limits, metrics, policy annotations, `#export` entrypoints), its events, and the ttrpc
and protobuf it speaks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from services import SHIM_RUNTIME as RUNTIME
from services import ctr_run, delete_task, ppid, process_state, wait_for, wait_for_nothing_left, wait_for_status


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


def test_containerd_restart_while_a_task_runs(containerd, images) -> None:  # type: ignore[no-untyped-def]
    assert ctr_run(containerd, "-d", images["hostile"], "survivor", "/hostile.wasm", "spin").returncode == 0
    containerd.restart()
    assert "RUNNING" in containerd.ctr("task", "ls").stdout
    assert containerd.ctr("task", "kill", "--signal", "SIGKILL", "survivor").returncode == 0
    delete_task(containerd, "survivor")
    containerd.ctr("container", "delete", "survivor", check=True)
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


def test_a_trap_is_134_when_the_guests_stderr_has_no_reader(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """The logging binary is gone (`true` exits at once), so the trap's diagnostic line cannot be written:
    the exit status is still the trap's."""
    true = shutil.which("true")
    proc = ctr_run(containerd, "--rm", "--log-uri", f"binary://{true}", images["hostile"], "no-reader",
                   "/hostile.wasm", "abort")
    assert proc.returncode == 134, proc.stderr
    wait_for_nothing_left(containerd)


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


def test_an_output_fifo_waits_a_bounded_time_for_its_reader(tmp_path: Path) -> None:
    """A client that gave up on its Create (a ctr deadline) leaves FIFOs with no reader: the container
    process blocked opening one forever, never became ready, and the shim, waiting for it, served nothing
    more. Now a reader that comes while Create is under way (as ctr opens its end) is waited for, and
    one that never comes fails the open (ENXIO) once the wait is over."""
    import errno
    import threading

    from wasmctr_node.stdio import _open_fifo_for_writing

    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as nobody:
        _open_fifo_for_writing(str(fifo), 0.2)
    assert nobody.value.errno == errno.ENXIO
    readers: list[int] = []
    late = threading.Timer(0.3, lambda: readers.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)))
    late.start()
    try:
        writer = _open_fifo_for_writing(str(fifo), 30)
        assert readers and os.get_blocking(writer)  # the guest's writes wait for containerd
        os.write(writer, b"hi")
        assert os.read(readers[0], 2) == b"hi"
        os.close(writer)
    finally:
        late.join()
        for fd in readers:
            os.close(fd)
