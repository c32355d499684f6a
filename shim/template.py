"""The node's template process: wasmtime and the shim loaded once, a warm shim forked for each pod.

containerd starts a shim per pod; a fresh interpreter that imports wasmtime costs each pod hundreds of
milliseconds and tens of MiB that no other pod shares. The template does that work once: `start`
hands it the pod's listening socket and log fd (SCM_RIGHTS over a unix socket only root can reach),
it forks, and the child becomes that pod's shim server (a session of its own, containerd's environment,
the shim's stderr on the log), sharing the template's pages copy-on-write. One shim per pod is kept,
for isolation: a pod's guests, its crash or its kill never touch another pod's shim.

The template is single-threaded (forking a threaded process could leave a lock held in the child) and
reaps the shims it forked. It exits when a request carries another code stamp (wasmctr was upgraded
or edited: the next `start` spawns a current one) or after WASMCTR_SHIM_TEMPLATE_IDLE seconds (600)
without a request; the shims it forked live on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
from collections.abc import Callable
from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wasmctr.executor import Executor

MAX_REQUEST = 1 << 20
_executor: Executor | None = None  # the template's, inherited by the shims it forks


def warm_executor() -> Executor | None:
    """The executor a shim forked from the template inherits (engine made, code shared); else None."""
    return _executor


def run(path: str, stamp: str, parse: Callable[[list[str]], SimpleNamespace],
        serve: Callable[[SimpleNamespace], int]) -> int:
    """Serve fork requests on `path` until idle or stale."""
    global _executor
    import wasmtime  # noqa: F401  (what every shim needs, loaded before any fork)

    from wasmctr import api

    from . import events, native, tasks, ttrpc  # noqa: F401

    _executor = api.executor()
    _executor.warm()

    idle = float(os.environ.get("WASMCTR_SHIM_TEMPLATE_IDLE", "600"))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(64)
    server.settimeout(idle)
    signal.signal(signal.SIGCHLD, _reap)
    gc.freeze()  # what is loaded now is shared with every shim: keep their collectors off these pages
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return 0
            with conn:
                conn.settimeout(10)
                try:
                    request, fds = _receive(conn)
                except (OSError, ValueError):
                    continue
                if request.get("stamp") != stamp or len(fds) != 2:
                    for fd in fds:
                        os.close(fd)
                    conn.sendall(b"stale")
                    return 0
                pid = os.fork()
                if pid == 0:
                    server.close()
                    conn.close()
                    os._exit(_become_shim(request, fds[0], fds[1], parse, serve))
                for fd in fds:
                    os.close(fd)
                conn.sendall(str(pid).encode())
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(server.fileno()).st_ino:
                os.unlink(path)
        server.close()


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """The request (JSON, read to EOF) and the two fds that came with it."""
    fds: list[int] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(2 * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += [int.from_bytes(payload[i:i + 4], "little") for i in range(0, len(payload) - 3, 4)]
        if not data:
            break
        chunks.append(data)
        size += len(data)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
    request = json.loads(b"".join(chunks))
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    return request, fds


def _become_shim(request: dict, listener: int, log: int, parse: Callable[[list[str]], SimpleNamespace],
                 serve: Callable[[SimpleNamespace], int]) -> int:
    """In the forked child: the pod's own session, stdio and environment, then the shim server."""
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        for fd in (null, log):
            os.close(fd)
        os.chdir("/")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
        os.environ["WASMCTR_SHIM_LISTEN_FD"] = str(listener)
        return serve(parse([str(a) for a in request.get("argv") or []]))
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        with contextlib.suppress(OSError):
            os.write(2, f"wasmctr shim: {exc}\n".encode())
        return 1


def _reap(*_: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
