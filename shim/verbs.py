"""The shim binary's `start` and `delete`, as the node's template process or, where there is none, the
binary itself carries them out.

`start` finds the shim serving the container's group (a Kubernetes pod: annotation
`io.kubernetes.cri.sandbox-id`, read without json by shim/specscan.py; else the namespace) and
reserves it, or binds a new socket and has a new shim spawned on it; it writes the bundle's `address`
and `shim.pid` files and answers the address. A spec it cannot read as json would is refused.
The shared runtime (`-shared`) groups by namespace alone: all of a node's pods share one shim. A pod
then adds its container processes and no shim process (each of which copies megabytes of the pages
it shares with the template as it works); what it gives up is the wall between pods' shims: if that
one process dies, containerd ends every task it served, and every guest is forked from a process that
has read all the pods' specs.
`delete` cleans up after a shim that is gone and answers a DeleteResponse.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace

from wasmctr.image.leb128 import encode_unsigned as _varint

from . import process
from .layout import RUNC_ROOT, SOCKET_DIR, private_socket_dir, template_path
from .mounts import unmount_all
from .sockets import listen
from .specscan import annotation

GROUP_ANNOTATION = "io.kubernetes.cri.sandbox-id"
SHARED_GROUP = "shared"
# how long a lingering shim has to answer Reserve: one that is listening is alive, only slow on a busy node
# (2 s started a second shim for the pod when the machine was loaded, and the first lingered beside it)
RESERVE_SECONDS = 10

Spawn = Callable[[list[str], dict[str, str], int, int], int]
"""Start a shim server: (its argv, its environment, the listening socket's fd, the log fd) -> its pid."""


def run(args: SimpleNamespace, cwd: str, env: Mapping[str, str], spawn: Spawn) -> bytes:
    """What the verb prints on containerd's stdout; OSError when it fails."""
    if args.action == "start":
        return start(args, cwd, env, spawn).encode()
    return delete(args, cwd, env)


def socket_path(namespace: str, group: str, address: str) -> str:
    digest = hashlib.sha256(f"{address}|{namespace}|{group}".encode()).hexdigest()[:32]
    return os.path.join(SOCKET_DIR, f"{digest}.sock")


def start(args: SimpleNamespace, cwd: str, env: Mapping[str, str], spawn: Spawn) -> str:
    """Bind (or find) the shim socket, have a shim server started on it, return the address."""
    bundle = args.bundle or cwd
    try:
        group = _group(bundle, args.shared)
    except ValueError as exc:
        raise OSError(f"cannot tell the container's pod from its config.json: {exc}") from None
    path = socket_path(args.namespace, group, args.address)
    address = f"unix://{path}"
    lock = private_socket_dir()
    try:
        # concurrent starts of one group: the first spawns the shim, the others then find it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _reserve(path, args.id):
            pid = _spawn(args, path, bundle, env, spawn)
            with open(os.path.join(bundle, "shim.pid"), "w") as f:  # as containerd's runc shim writes it
                f.write(str(pid))
    finally:
        os.close(lock)
    with open(os.path.join(bundle, "address"), "w") as f:
        f.write(address)
    return address


def _spawn(args: SimpleNamespace, path: str, bundle: str, env: Mapping[str, str], spawn: Spawn) -> int:
    """Bind the socket here, so it accepts connections at once, and hand it to a new shim server."""
    listener = listen(path, 128)
    log = _shim_log(bundle)
    argv = ["-namespace", args.namespace, "-address", args.address, "-id", args.id, "-socket", path,
            *(["-debug"] if args.debug else []), "serve"]
    try:
        return spawn(argv, dict(env), listener.fileno(), log)
    finally:
        listener.close()
        os.close(log)


def spawn_interpreter(argv: list[str], env: dict[str, str], listener: int, log: int) -> int:
    """Where there is no template: the shim server in a new interpreter (it pays for importing wasmtime),
    and a template started for the pods that follow."""
    address = argv[argv.index("-address") + 1]
    subprocess.Popen([sys.executable, "-m", "wasmctr_node.containerd", "-address", address, "-socket",
                      template_path(address), "template"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, cwd="/", env=env)
    return subprocess.Popen(
        [sys.executable, "-m", "wasmctr_node.containerd", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=log, pass_fds=(listener,), env={**env, "WASMCTR_SHIM_LISTEN_FD": str(listener)},
        start_new_session=True, cwd="/").pid


def delete(args: SimpleNamespace, cwd: str, env: Mapping[str, str]) -> bytes:
    """Clean up after a shim that is gone: kill the task's process, unmount its rootfs, report."""
    bundle = args.bundle or cwd
    pid = 0
    with contextlib.suppress(OSError, ValueError), open(os.path.join(bundle, "wasmctr.pid")) as f:
        recorded, _, started = f.read().partition(" ")  # pid and start time (shim/process.py)
        pid = int(recorded)
        if process.signal_recorded(pid, int(started), signal.SIGKILL):
            time.sleep(0.05)
    if os.path.exists(os.path.join(bundle, "runc.pid")):  # a native container: runc's state and cgroup too
        subprocess.run([env.get("WASMCTR_RUNC", "runc"), "--root", os.path.join(RUNC_ROOT, args.namespace),
                        "delete", "--force", args.id], capture_output=True)
    unmount_all(os.path.join(bundle, "rootfs"))
    with contextlib.suppress(ValueError):  # a spec `start` refused: it made no socket
        path = socket_path(args.namespace, _group(bundle, args.shared), args.address)
        if not _alive(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return delete_response(pid, 128 + signal.SIGKILL, time.time())


def delete_response(pid: int, exit_status: int, exited_at: float) -> bytes:
    """containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 (Timestamp{seconds=1, nanos=2})},
    encoded here: the fallback path must not wait for protobuf."""
    seconds, nanos = int(exited_at), int((exited_at % 1) * 1e9)
    timestamp = _field(1, seconds) + _field(2, nanos)
    return _field(1, pid) + _field(2, exit_status) + _bytes_field(3, timestamp)


def _field(number: int, value: int) -> bytes:
    return bytes([number << 3]) + _varint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    return bytes([number << 3 | 2]) + _varint(len(value)) + value


def _group(bundle: str, shared: bool) -> str:
    """The containers that share one shim: a Kubernetes pod (its sandbox id), else the namespace's; for
    the shared runtime, the namespace's (a name no sandbox id takes: those are 64 hex digits).
    ValueError where the spec cannot be read without json as json reads it (shim/specscan.py)."""
    if shared:
        return SHARED_GROUP
    try:
        with open(os.path.join(bundle, "config.json"), "rb", buffering=0) as f:
            spec = bytearray(os.fstat(f.fileno()).st_size)
            size = 0
            while size < len(spec) and (count := f.readinto(memoryview(spec)[size:])):
                size += count
    except OSError:
        return ""
    try:
        return annotation(spec, size, GROUP_ANNOTATION)
    finally:
        spec[:] = bytes(len(spec))  # the template's pages are every later pod's: keep no other pod's spec


def _shim_log(bundle: str) -> int:
    """containerd's `log` FIFO in the bundle (it copies what arrives into its own log), else /dev/null."""
    try:
        return os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


def _reserve(path: str, container_id: str) -> bool:
    """Ask the shim on `path` to stay for the container being started; False if there is none (or it
    is on its way out). One ttrpc call, `wasmctr.shim.v1.Shim/Reserve` (shim/proto/shim.proto), framed
    here: the fallback path must not wait for protobuf either."""
    if not os.path.exists(path):
        return False
    request = (_bytes_field(1, b"wasmctr.shim.v1.Shim") + _bytes_field(2, b"Reserve")
               + _bytes_field(3, _bytes_field(1, container_id.encode())))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(RESERVE_SECONDS)
            conn.connect(path)
            conn.sendall(len(request).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x01\x00" + request)
            header = conn.recv(10, socket.MSG_WAITALL)
            if len(header) != 10:
                return False
            length = int.from_bytes(header[:4], "big")
            body = conn.recv(length, socket.MSG_WAITALL) if length else b""
    except OSError:
        return False
    return not body.startswith(b"\x0a")  # a Response whose field 1 (status) is set is an error


def _alive(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
            return True
        except OSError:
            return False
