"""The containerd task service: each wasm container a forked process running the shared executor,
every other container (a pod's sandbox, native sidecars) a runc container.

The shim process imports wasmtime once and stays warm; `Create` forks a child per wasm container that
enters the cgroup the spec names (with the spec's limits), opens containerd's FIFOs, joins the pod's
network namespace, opens its rootfs and mounts, becomes the spec's user and waits on a pipe; Create
returns once it is ready (or fails with its reason), and `Start` releases it. Each
container therefore has its own pid, is killed and reaped alone, and one guest's trap or crash cannot
disturb another. A container that is not wasm goes to runc (`native`), with the same Task API, events,
stdio and exit codes. Events go to containerd over ttrpc.

Before anything of a wasm container is prepared, Create checks the node's signature policy for the image the
container was made from (`_admit`, shim/admission.py); a native one is left to the policy the node already
applies to what it pulls.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, empty_pb2

from wasmctr.errors import ExecutorError, ImageNotFound, WasmctrError
from wasmctr.image.reference import Reference
from wasmctr.running import report
from wasmctr.running.executor import Executor, Outcome
from wasmctr.running.ocispec import explain, is_wasm, load_config, network_namespace, spec_from_bundle
from wasmctr.sandbox import devices
from wasmctr.sandbox.container import Confinement, Container

from . import admission, mounts, process, stdio
from .api import shim_pb2, task_pb2
from .cgroups import Cgroup
from .events import Publisher, timestamp
from .metrics import metrics
from .native import Runc, check_bundle
from .ttrpc import Call, Code, RpcError, Service

SERVICE = "containerd.task.v2.Task"
DEVICE_DIR = "wasmctr-dev"  # in the bundle: the container's /dev
CLONE_NEWNET = 0x40000000
RESERVE_SERVICE = "wasmctr.shim.v1.Shim"  # our own: `start` reserves a lingering shim before reusing it
RESERVATION_SECONDS = 10.0
CREATE_SETTLE_SECONDS = 60.0  # how long a call on a task waits for that task's Create to end
log = logging.getLogger("wasmctr.shim")


@dataclass
class Task:
    id: str
    bundle: Path
    stdin: str
    stdout: str
    stderr: str
    namespace: str
    pid: int = 0
    status: task_pb2.Status = task_pb2.CREATED
    exit_status: int = 0
    exited_at: float = 0.0
    rootfs_mounted: bool = False
    start_fd: int = -1
    report_pipe: report.Reader | None = None  # a wasm container's: how its guest ended
    logger: stdio.BinaryLogger | None = None
    memory_limit: int = 0
    native: bool = False  # run by runc, not forked from the shim
    cgroup: Cgroup | None = None
    netns: str | None = None
    pidfd: int = -1  # signals go through it: the pid alone could name another process once reaped
    exited: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # status, start_fd and pidfd

    def close_start_pipe(self, start: bool) -> bool:
        """Close the start pipe, after writing the go-ahead if `start`; False if it was already closed
        or the container process is gone. Called with `lock` held: Start and the reaper both close it,
        and a second close could hit a number the shim has since reused for another container's
        connection, which containerd would then see drop."""
        fd, self.start_fd = self.start_fd, -1
        if fd < 0:
            return False
        try:
            if start:
                os.write(fd, b"s")
        except BrokenPipeError:
            return False
        finally:
            os.close(fd)
        return True


class TaskService:
    def __init__(self, publisher: Publisher, namespace: str, on_empty: Any, linger: float = 0.0,
                 runc_root: str = "/run/wasmctr-runc", executor: Executor | None = None,
                 containerd_address: str = "") -> None:
        self.namespace = namespace
        self.containerd_address = containerd_address  # its gRPC socket: what it knows of a container's image
        self.linger = linger
        self.tasks: dict[str, Task] = {}
        self.lock = threading.Lock()
        self.creating: set[str] = set()  # ids whose Create is under way
        self.created = threading.Condition(self.lock)  # a Create has ended (one way or the other)
        # Prepare and fork one container at a time: no other thread is then inside wasmtime or holds the
        # executor's lock when a container process is forked (a lock held at fork stays held in the child)
        self.fork_lock = threading.Lock()
        self.publisher = publisher
        self.on_empty = on_empty
        self.reservations: dict[str, float] = {}  # container id -> until when (monotonic)
        self.last_activity = time.monotonic()
        self.executor = executor or Executor.for_store(map_cached_code=True)
        self.runc = Runc(os.path.join(runc_root, namespace or "default"))

    def service(self) -> Service:
        s = Service(SERVICE)
        for name, request in [("State", task_pb2.StateRequest), ("Create", task_pb2.CreateTaskRequest),
                              ("Start", task_pb2.StartRequest), ("Delete", task_pb2.DeleteRequest),
                              ("Pids", task_pb2.PidsRequest), ("Kill", task_pb2.KillRequest),
                              ("Wait", task_pb2.WaitRequest), ("Connect", task_pb2.ConnectRequest),
                              ("Shutdown", task_pb2.ShutdownRequest), ("CloseIO", task_pb2.CloseIORequest),
                              ("Stats", task_pb2.StatsRequest), ("Update", task_pb2.UpdateTaskRequest)]:
            s.method(name, request, getattr(self, name.lower()))
        for name, request, why in [
                ("Exec", task_pb2.ExecProcessRequest, "a wasm guest is one process; exec is not supported"),
                ("Pause", task_pb2.PauseRequest, "pausing a wasm guest is not supported"),
                ("Resume", task_pb2.ResumeRequest, "pausing a wasm guest is not supported"),
                ("Checkpoint", task_pb2.CheckpointTaskRequest, "checkpointing a wasm guest is not supported"),
                ("ResizePty", task_pb2.ResizePtyRequest, "wasm guests have no terminal")]:
            s.method(name, request, _unimplemented(why))
        return s

    # -- lifecycle ---------------------------------------------------------------------------------

    def create(self, req: task_pb2.CreateTaskRequest, call: Call) -> task_pb2.CreateTaskResponse:
        with self.lock:
            self.reservations.pop(req.id, None)  # the container the reservation was for has arrived
            self.last_activity = time.monotonic()
            if req.id in self.tasks or req.id in self.creating:  # checked and claimed under one lock
                raise RpcError(Code.ALREADY_EXISTS, f"task {req.id} already exists")
            self.creating.add(req.id)
        try:
            return self._create(req, call)
        finally:
            with self.lock:
                self.creating.discard(req.id)
                self.created.notify_all()

    def _create(self, req: task_pb2.CreateTaskRequest, call: Call) -> task_pb2.CreateTaskResponse:
        if req.terminal:
            raise RpcError(Code.FAILED_PRECONDITION, "a terminal (-t) is not supported for wasm guests; their "
                                                     "stdio is plain streams")
        bundle = Path(req.bundle)
        task = Task(req.id, bundle, req.stdin, req.stdout, req.stderr, call.namespace or self.namespace)
        try:
            config = load_config(bundle)
            if req.rootfs:
                mounts.mount_all(list(req.rootfs), bundle / "rootfs")
                task.rootfs_mounted = True
            linux = config.get("linux") or {}
            task.native = not is_wasm(bundle, config)
            if stdio.is_binary_uri(req.stdout):
                task.logger = stdio.BinaryLogger.start(req.stdout, req.id, task.namespace)
            if task.native:
                check_bundle(str(bundle), config)  # before runc sees it
                _commit(call)
                self._create_native(task, linux.get("cgroupsPath"))
            else:
                self._admit(req.id, config, task.namespace)
                spec = spec_from_bundle(bundle, config)
                spec.devices = devices.populate(bundle / DEVICE_DIR)  # the OCI default devices, at /dev
                spec.stdin = bool(req.stdin)
                task.memory_limit = spec.memory_limit or 0
                task.netns = network_namespace(config)
                if linux.get("cgroupsPath"):
                    task.cgroup = Cgroup.create(linux["cgroupsPath"], linux.get("resources") or {})
                with self.fork_lock:
                    # prepared here, before the fork: the container process starts at once and shares the code
                    guest = self.executor.prepare(spec)
                    # fails here, not in the child; a served component's host listens, so it keeps the
                    # socket calls without a network grant
                    confinement = Confinement.of_spec(config, spec.policy.network or guest.world.listens)
                    _commit(call)
                    container = Container(self.executor, guest, confinement, task.cgroup, speaks_as="wasmctr")
                    pid, start_w = self._fork(task, container)
                # outside the lock: the next Create prepares and forks while this process confines itself
                self._await_ready(task, container, pid, start_w)
        except (WasmctrError, OSError, ValueError) as exc:
            if task.logger:
                task.logger.release()
                task.logger.stop()
            if task.cgroup:
                task.cgroup.remove()
            if task.rootfs_mounted:
                mounts.unmount_all(bundle / "rootfs")
            raise RpcError(Code.FAILED_PRECONDITION, f"wasmctr cannot run {req.id}: {explain(exc)}") from None
        with self.lock:
            self.tasks[req.id] = task
        # for the binary's `delete` after a crash: the pid and its start time, so it never kills a reused pid
        (bundle / "wasmctr.pid").write_text(f"{task.pid} {process.start_time(task.pid)}")
        self.publisher.task_create(task, list(req.rootfs))
        return task_pb2.CreateTaskResponse(pid=task.pid)

    def start(self, req: task_pb2.StartRequest, call: Call) -> task_pb2.StartResponse:
        task = self._get(req.id)
        with task.lock:  # against the reaper: a guest that exits at once is STOPPED after RUNNING, not before
            if task.status != task_pb2.CREATED:
                raise RpcError(Code.FAILED_PRECONDITION, f"task {req.id} is not in the created state")
            if task.native:
                try:
                    self.runc.start(task.id, str(task.bundle))
                except WasmctrError as exc:
                    raise RpcError(Code.FAILED_PRECONDITION, f"task {req.id}: {exc}") from None
            elif not task.close_start_pipe(start=True):
                raise RpcError(Code.FAILED_PRECONDITION, f"task {req.id} exited before it was started")
            task.status = task_pb2.RUNNING
            self.publisher.task_start(task)
        return task_pb2.StartResponse(pid=task.pid)

    def kill(self, req: task_pb2.KillRequest, call: Call) -> empty_pb2.Empty:
        task = self._get(req.id)
        if task.exited.is_set():
            raise RpcError(Code.NOT_FOUND, f"process {task.pid} of {req.id} already finished")
        with task.lock, contextlib.suppress(ProcessLookupError):  # against Delete closing the pidfd
            if task.pidfd >= 0:
                signal.pidfd_send_signal(task.pidfd, req.signal or signal.SIGKILL)
        return empty_pb2.Empty()

    def wait(self, req: task_pb2.WaitRequest, call: Call) -> task_pb2.WaitResponse:
        task = self._get(req.id)
        task.exited.wait()
        return task_pb2.WaitResponse(exit_status=task.exit_status, exited_at=timestamp(task.exited_at))

    def delete(self, req: task_pb2.DeleteRequest, call: Call) -> task_pb2.DeleteResponse:
        task = self._get(req.id)
        if task.status == task_pb2.RUNNING and not task.exited.is_set():
            raise RpcError(Code.FAILED_PRECONDITION, f"task {req.id} is running; kill it first")
        if not task.exited.is_set():  # created, never started
            with task.lock, contextlib.suppress(ProcessLookupError):
                if task.pidfd >= 0:
                    signal.pidfd_send_signal(task.pidfd, signal.SIGKILL)
            task.exited.wait(5)
        if task.logger:
            task.logger.stop()
        if task.native:
            with contextlib.suppress(WasmctrError):  # gone already: runc's state is what we remove
                self.runc.delete(task.id, str(task.bundle))
        elif task.cgroup:
            task.cgroup.remove()
        if task.rootfs_mounted:
            mounts.unmount_all(task.bundle / "rootfs")
        devices.remove(task.bundle / DEVICE_DIR)
        with contextlib.suppress(OSError):
            (task.bundle / "wasmctr.pid").unlink()
        with task.lock:  # a Kill that found the task before it left the table sends nothing now
            if task.pidfd >= 0:
                os.close(task.pidfd)
                task.pidfd = -1
        with self.lock:
            self.tasks.pop(req.id, None)
            self.last_activity = time.monotonic()
        self.publisher.task_delete(task)
        return task_pb2.DeleteResponse(pid=task.pid, exit_status=task.exit_status,
                                       exited_at=timestamp(task.exited_at))

    def state(self, req: task_pb2.StateRequest, call: Call) -> task_pb2.StateResponse:
        task = self._get(req.id)
        return task_pb2.StateResponse(
            id=task.id, bundle=str(task.bundle), pid=task.pid, status=task.status, stdin=task.stdin,
            stdout=task.stdout, stderr=task.stderr, exit_status=task.exit_status,
            exited_at=timestamp(task.exited_at) if task.exited_at else None)

    def pids(self, req: task_pb2.PidsRequest, call: Call) -> task_pb2.PidsResponse:
        task = self._get(req.id)
        processes = [] if task.exited.is_set() else [task_pb2.ProcessInfo(pid=task.pid)]
        return task_pb2.PidsResponse(processes=processes)

    def connect(self, req: task_pb2.ConnectRequest, call: Call) -> task_pb2.ConnectResponse:
        task = self.tasks.get(req.id)
        return task_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=task.pid if task else 0,
                                        version="wasmctr")

    def shutdown(self, req: task_pb2.ShutdownRequest, call: Call) -> empty_pb2.Empty:
        with self.lock:
            empty = not self.tasks and not self.creating
        if empty or req.now:
            threading.Timer(0.05 if req.now else self.linger, self._exit_if_idle, args=(req.now,)).start()
        return empty_pb2.Empty()

    def _exit_if_idle(self, now: bool) -> None:
        """Exit once the response is out, unless the group is not idle: a container is there, a `start`
        reserved this shim for one on its way, or one came or went less than `linger` seconds ago. The
        check and the exit happen under the lock that `reserve` takes, so a reservation either lands
        before the exit or fails (and `start` spawns a new shim)."""
        with self.lock:
            if not now:
                if self.tasks or self.creating:
                    return  # the Shutdown that follows the last one's Delete checks again
                clock = time.monotonic()
                self.reservations = {cid: until for cid, until in self.reservations.items() if until > clock}
                quiet_at = max([self.last_activity + self.linger, *self.reservations.values()])
                if quiet_at > clock:
                    threading.Timer(quiet_at - clock, self._exit_if_idle, args=(False,)).start()
                    return
            self.on_empty()

    def reserve(self, req: shim_pb2.ReserveRequest, call: Call) -> empty_pb2.Empty:
        """One reservation per container: each lasts until that container's Create, or expires."""
        with self.lock:
            self.last_activity = time.monotonic()
            self.reservations[req.id] = self.last_activity + RESERVATION_SECONDS
        return empty_pb2.Empty()

    def reservation_service(self) -> Service:
        s = Service(RESERVE_SERVICE)
        s.method("Reserve", shim_pb2.ReserveRequest, self.reserve)
        return s

    def closeio(self, req: task_pb2.CloseIORequest, call: Call) -> empty_pb2.Empty:
        self._get(req.id)  # the guest holds the stdin FIFO; it sees EOF when containerd closes its end
        return empty_pb2.Empty()

    def stats(self, req: task_pb2.StatsRequest, call: Call) -> task_pb2.StatsResponse:
        task = self._get(req.id)
        usage = None
        if not task.exited.is_set():
            with contextlib.suppress(OSError):  # it may exit while we read /proc or its cgroup
                usage = metrics(task.pid, task.memory_limit, task.cgroup)
        if usage is None:
            raise RpcError(Code.NOT_FOUND, f"task {req.id} has no running process")
        return task_pb2.StatsResponse(stats=any_pb2.Any(type_url=usage.DESCRIPTOR.full_name,
                                                        value=usage.SerializeToString()))

    def update(self, req: task_pb2.UpdateTaskRequest, call: Call) -> empty_pb2.Empty:
        self._get(req.id)
        raise RpcError(Code.UNIMPLEMENTED, "a running wasm guest's limits cannot be changed")

    def _admit(self, container_id: str, config: dict[str, Any], namespace: str) -> None:
        """The node's signature policy for the image the container was made from: the container's image in
        containerd (`ctr run IMAGE`), else the one its spec's annotations name (the CRI's), resolved to its
        manifest (or index) digest by containerd's image store, as `wasmctr pull` checks what a name resolves
        to; an index's digest covers each of its manifests. Raises with the reason, which Create returns."""
        rules = admission.rules()
        if rules.accepts_anything:
            return
        from wasmctr.signing import attach, referrers

        from .imagestore import Containerd, ContentStore

        client = Containerd(self.containerd_address, namespace)

        def kept(ref: Reference, digest: str) -> list[attach.Signature] | None:
            return referrers.read(ContentStore(client, ref.registry), ref.repository, digest).signatures or None

        try:
            image = client.container_image(container_id) or admission.annotated_image(config)
            target = client.image_target(image) if image else None
            if image and target is None:
                raise ImageNotFound(f"containerd has no image {image}, which container {container_id} was made from: "
                                    "its signatures cannot be checked")
            admission.admit(rules, image, target.digest if target else None, kept, container_id)
        finally:
            client.close()

    # -- native containers -------------------------------------------------------------------------

    def _create_native(self, task: Task, cgroups_path: str | None) -> None:
        """`runc create` with the container's stdio; the init it leaves behind is ours to reap."""
        if task.logger:
            fds = (stdio.open_stdio(task.stdin, os.O_RDONLY), task.logger.stdout, task.logger.stderr)
        else:
            fds = (stdio.open_stdio(task.stdin, os.O_RDONLY), stdio.open_stdio(task.stdout, os.O_WRONLY),
                   stdio.open_stdio(task.stderr, os.O_WRONLY))
        try:
            cgroup = Cgroup.open(cgroups_path) if cgroups_path else None  # a bad path fails before runc runs
            task.pid = self.runc.create(task.id, str(task.bundle), fds)
            task.pidfd = os.pidfd_open(task.pid)  # ours to reap (we are its subreaper): not reused before
        finally:
            os.close(fds[0])
            if task.logger:
                task.logger.release()
            else:
                os.close(fds[1])
                os.close(fds[2])
        task.cgroup = cgroup  # runc made it; Stats reads it
        threading.Thread(target=self._reap, args=(task,), daemon=True).start()

    # -- the child ---------------------------------------------------------------------------------

    def _fork(self, task: Task, container: Container) -> tuple[int, int]:
        """Fork the container process (with the fork lock held); its pid and the start pipe's end."""
        start_r, start_w = os.pipe()
        try:
            pid = container.fork(lambda keep: _enter(task, container.executor, keep | {start_r}),
                                 lambda: os.read(start_r, 1) == b"s")
        except OSError:
            os.close(start_r)
            os.close(start_w)
            raise
        os.close(start_r)
        if task.logger:
            task.logger.release()
        return pid, start_w

    def _await_ready(self, task: Task, container: Container, pid: int, start_w: int) -> None:
        """Wait until the container process is ready (its cgroup joined, confined), then reap it alone."""
        failure = container.ready(pid)
        if failure is not None:  # it ended before it was ready: reaped, before any reaper exists
            os.close(start_w)
            raise ExecutorError(failure)
        task.pid, task.start_fd, task.report_pipe = pid, start_w, container.report
        task.pidfd = os.pidfd_open(pid)  # before the reaper exists: the pid cannot have been reused
        threading.Thread(target=self._reap, args=(task,), daemon=True).start()

    def _reap(self, task: Task) -> None:
        _, status = os.waitpid(task.pid, 0)
        ended = _ended(task, status)
        task.exit_status = ended.exit_code
        with task.lock:
            task.exited_at = time.time()
            task.status = task_pb2.STOPPED
            task.close_start_pipe(start=False)
        if ended.reason == "oom":
            self.publisher.task_oom(task)
        task.exited.set()
        self.publisher.task_exit(task)

    def _get(self, task_id: str) -> Task:
        """The task; if its Create is still under way, once that has ended. containerd stops waiting for
        a Create at its deadline and cleans up with a Delete at once: that Delete must find the task the
        Create goes on to make, or the task (and its process) would outlive containerd's knowledge of it."""
        with self.lock:
            self.created.wait_for(lambda: task_id not in self.creating, timeout=CREATE_SETTLE_SECONDS)
            task = self.tasks.get(task_id)
        if task is None:
            raise RpcError(Code.NOT_FOUND, f"task {task_id} not found")
        return task


def _enter(task: Task, executor: Executor, keep: set[int]) -> None:
    """The shim's setup step in a container process (`Container.fork`): it closes what it inherited from
    the shim but the descriptors in `keep`, the task's log pipes and the mapped compiled code, leads a
    session of its own, joins the pod's network namespace and takes containerd's stdio, while it is
    still root."""
    gc.disable()
    logger_fds = (task.logger.stdout, task.logger.stderr) if task.logger else ()
    stdio.close_inherited_fds(keep={*keep, *logger_fds},
                              keep_files_under=executor.cache.directory if executor.cache is not None else None)
    os.setsid()
    if task.netns:
        _join_network_namespace(task.netns)
    stdio.redirect(task.stdin, 0, os.O_RDONLY)
    if task.logger:
        stdio.move(task.logger.stdout, 1)
        stdio.move(task.logger.stderr, 2)
    else:
        stdio.redirect(task.stdout, 1, os.O_WRONLY)
        stdio.redirect(task.stderr, 2, os.O_WRONLY)
    # new stdio objects: another thread of the shim may have held the old ones' locks at the fork
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)


def _ended(task: Task, status: int) -> Outcome:
    """How a task's process ended: a wasm container's as it reported (its exit code is its process's),
    any other's, or one that reported nothing or an error, as its wait status says."""
    if task.report_pipe is not None:
        with contextlib.suppress(ExecutorError):
            return task.report_pipe.outcome(status)
    return report.from_status(status)


def _commit(call: Call) -> None:
    """Past this point Create has an effect (a container process): not if containerd gave up on it."""
    if not call.commit():
        raise TimeoutError("containerd stopped waiting (its deadline passed) before the container was made")


def _join_network_namespace(path: str) -> None:
    """setns(2) into the pod's network namespace (os.setns exists only from Python 3.12)."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _unimplemented(why: str):  # type: ignore[no-untyped-def]
    def handler(_req: Any, _call: Call) -> Any:
        raise RpcError(Code.UNIMPLEMENTED, why)

    return handler
