"""`containerd-shim-wasmctr-v1`: the containerd shim v2 binary for runtime `io.containerd.wasmctr.v1`.

containerd runs it as `containerd-shim-wasmctr-v1 -namespace NS -address ADDR -publish-binary BIN
-id ID [-debug] start` in the bundle directory, with TTRPC_ADDRESS (and 1.7+'s GRPC_ADDRESS,
NAMESPACE...) set and runtime options on stdin. `start` binds the task socket, hands it to a new
long-lived shim process (forked by the node's warm template process, `shim/template.py`, or where
there is none yet a new interpreter), writes the bundle's `address` and `shim.pid` files and prints
the address (and nothing else). Containers of one pod (annotation `io.kubernetes.cri.sandbox-id`) share a shim: `start`
returns the address of the one already serving the group. `delete` cleans up after a shim that is
gone and prints a DeleteResponse.

containerd runs this binary twice for every container (`start`, then `delete` once the connection
closes), so what those two verbs import is kept to the standard library they need (os.path, not
pathlib): modules that only the long-lived `serve` (or spawning it) uses are imported there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import time
from types import SimpleNamespace

from wasmctr.leb128 import encode_unsigned as _varint

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms on every start/delete)
if TYPE_CHECKING:
    from typing import NoReturn

SOCKET_DIR = os.environ.get("WASMCTR_SHIM_SOCKET_DIR", "/run/wasmctr-shim")
RUNC_ROOT = os.path.join(SOCKET_DIR, "runc")  # runc's state for the native containers, one dir per namespace
GROUP_ANNOTATION = "io.kubernetes.cri.sandbox-id"


VALUE_FLAGS = ("namespace", "address", "publish-binary", "id", "bundle", "socket")
BOOL_FLAGS = {"debug": "debug", "v": "version", "version": "version"}


def parse(argv: list[str]) -> SimpleNamespace:
    """containerd's shim flags as Go's flag package reads them (`-flag value`, `--flag=value`, booleans
    alone or `=true`), then the action. Not argparse: its imports cost ~17 ms on each of the two runs
    containerd makes per container."""
    args = SimpleNamespace(**{f.replace("-", "_"): "" for f in VALUE_FLAGS}, debug=False, version=False, action="")
    items = iter(argv)
    for item in items:
        if not item.startswith("-") or item == "-":
            args.action = item
            continue
        name, eq, value = item.lstrip("-").partition("=")
        if name in VALUE_FLAGS:
            found = value if eq else next(items, None)
            if found is None:
                _usage(f"flag needs an argument: -{name}")
            setattr(args, name.replace("-", "_"), found)
        elif name in BOOL_FLAGS and value in ("", "true", "false"):
            setattr(args, BOOL_FLAGS[name], value != "false")
        else:
            _usage(f"flag provided but not defined: -{name}")
    return args


def _usage(message: str) -> NoReturn:
    print(f"containerd-shim-wasmctr-v1: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    args = parse(sys.argv[1:])
    if args.version:
        from wasmctr import __version__

        print(f"containerd-shim-wasmctr-v1 (wasmctr {__version__})")
        return
    actions = {"start": start, "delete": delete, "serve": serve, "template": _template}
    if args.action not in actions:
        print(f"containerd-shim-wasmctr-v1: unknown action {args.action!r} (start, delete)", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(actions[args.action](args))
    except OSError as exc:  # containerd shows this line in its error: "failed to start shim: ..."
        print(f"containerd-shim-wasmctr-v1 {args.action}: {exc}", file=sys.stderr)
        sys.exit(1)


def socket_path(namespace: str, group: str, address: str) -> str:
    digest = hashlib.sha256(f"{address}|{namespace}|{group}".encode()).hexdigest()[:32]
    return os.path.join(SOCKET_DIR, f"{digest}.sock")


def start(args: SimpleNamespace) -> int:
    """Bind (or find) the shim socket, start the shim server on it, print the address."""
    sys.stdin.read()  # runtime options: none are needed by this shim
    bundle = args.bundle or os.getcwd()
    path = socket_path(args.namespace, _group(bundle, args.id), args.address)
    address = f"unix://{path}"
    os.makedirs(SOCKET_DIR, mode=0o711, exist_ok=True)
    lock = os.open(SOCKET_DIR, os.O_RDONLY)
    try:
        # concurrent starts of one group: the first spawns the shim, the others then find it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _reserve(path, args.id):
            pid = _spawn(args, path, bundle)
            with open(os.path.join(bundle, "shim.pid"), "w") as f:  # as containerd's runc shim writes it
                f.write(str(pid))
    finally:
        os.close(lock)
    with open(os.path.join(bundle, "address"), "w") as f:
        f.write(address)
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def _spawn(args: SimpleNamespace, path: str, bundle: str) -> int:
    """Bind the socket here, so it accepts connections at once, and hand it to a new shim process:
    forked by the node's template process (warm: wasmtime already loaded), or, where there is none
    yet, a new interpreter, while a template is started for the pods that follow. Returns its pid."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    log = _shim_log(bundle)
    argv = ["-namespace", args.namespace, "-address", args.address, "-id", args.id, "-socket", path,
            *(["-debug"] if args.debug else []), "serve"]
    try:
        pid = _fork_from_template(args.address, argv, listener.fileno(), log)
        if pid is None:
            import subprocess

            _start_template(args.address)
            env = {**os.environ, "WASMCTR_SHIM_LISTEN_FD": str(listener.fileno())}
            pid = subprocess.Popen(
                [sys.executable, "-m", "shim.containerd", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, pass_fds=(listener.fileno(),), env=env, start_new_session=True, cwd="/").pid
    finally:
        listener.close()
        os.close(log)
    return pid


def template_path(address: str) -> str:
    """The template's socket: one template per containerd (its address), under the shims' socket dir."""
    return os.path.join(SOCKET_DIR, f"template-{hashlib.sha256(address.encode()).hexdigest()[:16]}.sock")


def code_stamp() -> str:
    """What the template's code must match: the interpreter and every source file of wasmctr and the
    shim (an upgrade or edit makes a running template stale: it exits and a new one starts)."""
    here = os.path.dirname(os.path.abspath(__file__))
    parts = [sys.executable]
    for directory in (here, os.path.join(os.path.dirname(here), "wasmctr")):
        with os.scandir(directory) as entries:
            parts += sorted(f"{e.name}:{e.stat().st_mtime_ns}" for e in entries if e.name.endswith(".py"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _fork_from_template(address: str, argv: list[str], listener: int, log: int) -> int | None:
    """Ask the template to fork a shim server on `listener`; None if there is no (current) template."""
    import array

    request = json.dumps({"argv": argv, "env": dict(os.environ), "stamp": code_stamp()}).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(template_path(address))
            conn.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [listener, log]))])
            conn.shutdown(socket.SHUT_WR)
            answer = conn.recv(64)
    except OSError:
        return None
    return int(answer) if answer.isdigit() else None


def _start_template(address: str) -> None:
    import subprocess

    subprocess.Popen([sys.executable, "-m", "shim.containerd", "-address", address, "-socket",
                      template_path(address), "template"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")


def serve(args: SimpleNamespace) -> int:
    """The long-lived shim: warm executor, ttrpc task service on the inherited socket."""
    import logging
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import wasmtime  # noqa: F401  (imported before any container is forked: every child starts warm)

    from .events import Publisher
    from .native import become_subreaper
    from .tasks import TaskService
    from .template import warm_executor
    from .ttrpc import Server

    listener = socket.socket(fileno=int(os.environ["WASMCTR_SHIM_LISTEN_FD"]))
    server: Server | None = None

    def finish() -> None:
        with contextlib.suppress(OSError):
            os.unlink(args.socket)  # first: a `start` from now on spawns a new shim
        if server is not None:
            server.stop()
        logging.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: finish())
    become_subreaper()  # the init of a native (runc) container is re-parented here when `runc create` exits
    linger = float(os.environ.get("WASMCTR_SHIM_LINGER", "2"))
    tasks = TaskService(Publisher(os.environ.get("TTRPC_ADDRESS")), args.namespace, finish, linger,
                        runc_root=RUNC_ROOT, executor=warm_executor())
    server = Server([tasks.service(), tasks.reservation_service()])
    server.serve(listener)
    return 0


def _template(args: SimpleNamespace) -> int:
    from .template import run

    return run(args.socket, code_stamp(), parse, serve)


def delete(args: SimpleNamespace) -> int:
    """Clean up after a shim that is gone: kill the task's process, unmount its rootfs, report.

    containerd runs this synchronously for every container whose shim connection closes, so it
    stays on the standard library: the DeleteResponse is three fields, encoded here directly.
    """
    from .mounts import unmount_all

    bundle = args.bundle or os.getcwd()
    pid = 0
    with contextlib.suppress(OSError, ValueError), open(os.path.join(bundle, "wasmctr.pid")) as f:
        pid = int(f.read())
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    if os.path.exists(os.path.join(bundle, "runc.pid")):  # a native container: runc's state and cgroup too
        import subprocess

        subprocess.run([os.environ.get("WASMCTR_RUNC", "runc"), "--root", os.path.join(RUNC_ROOT, args.namespace),
                        "delete", "--force", args.id], capture_output=True)
    unmount_all(os.path.join(bundle, "rootfs"))
    path = socket_path(args.namespace, _group(bundle, args.id), args.address)
    if not _alive(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sys.stdout.buffer.write(delete_response(pid, 128 + signal.SIGKILL, time.time()))
    sys.stdout.flush()
    return 0


def delete_response(pid: int, exit_status: int, exited_at: float) -> bytes:
    """containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 (Timestamp{seconds=1, nanos=2})}."""
    seconds, nanos = int(exited_at), int((exited_at % 1) * 1e9)
    timestamp = _field(1, seconds) + _field(2, nanos)
    return _field(1, pid) + _field(2, exit_status) + _bytes_field(3, timestamp)


def _field(number: int, value: int) -> bytes:
    return bytes([number << 3]) + _varint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    return bytes([number << 3 | 2]) + _varint(len(value)) + value


def _group(bundle: str, task_id: str) -> str:
    """The containers that share one shim: a Kubernetes pod (its sandbox id), else the namespace's."""
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            annotations = json.load(f).get("annotations") or {}
        return str(annotations.get(GROUP_ANNOTATION) or "")
    return ""


def _shim_log(bundle: str) -> int:
    """containerd's `log` FIFO in the bundle (it copies what arrives into its own log), else /dev/null."""
    try:
        return os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


def _reserve(path: str, container_id: str) -> bool:
    """Ask the shim on `path` to stay for the container being started; False if there is none (or it
    is on its way out). One ttrpc call, `wasmctr.shim.v1.Shim/Reserve` (shim/proto/shim.proto), framed
    here with the standard library: `start` runs once per container and must stay cheap."""
    if not os.path.exists(path):
        return False
    request = (_bytes_field(1, b"wasmctr.shim.v1.Shim") + _bytes_field(2, b"Reserve")
               + _bytes_field(3, _bytes_field(1, container_id.encode())))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
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


if __name__ == "__main__":
    main()
