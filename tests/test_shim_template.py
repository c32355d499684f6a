"""The shim's processes and sockets: one shim per pod, forked from the node's warm template, lingering
and reserved before it is reused, serving a stream of containers without restarting; the binary's
verbs answered by the template with almost nothing imported; the pod read from a spec (and a spec
that would read otherwise refused); sockets only root reaches, and a request's environment choosing
nothing the template runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from services import ctr_run, delete_task, ppid, process_state, wait_for, wait_for_nothing_left


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
