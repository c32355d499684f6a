"""The node's template process: wasmtime and the shim loaded once; the shim binary's verbs carried out
here, and a warm shim forked for each pod.

containerd runs the shim binary (`start`, `delete`) twice for every container and starts a shim server
per pod. A fresh interpreter that imports what those need costs each run tens of milliseconds, and each
pod's server hundreds of milliseconds and tens of MiB that no other pod shares. The template does that
work once: the binary sends it a request over a unix socket only root and containerd's user may use
(shim/sockets.py) and prints its answer; for a new pod it binds the pod's socket and forks, and the
child becomes that pod's shim server (a session of its own, containerd's environment, the shim's stderr
on containerd's log FIFO), sharing the template's pages copy-on-write. A request brings the binary's
directory and arguments, and of its environment only what containerd sets per run: what the verb and
the shim run with is otherwise the template's own environment (`verb_environment`). One shim per pod
is kept, for isolation: a pod's guests, its crash or its kill never touch another pod's shim.

The template is single-threaded (forking a threaded process could leave a lock held in the child),
serves one request at a time, and reaps the shims it forked. It exits when a request carries another
code stamp (wasmctr was upgraded or edited: that run does its verb itself and starts a current
template) or after WASMCTR_SHIM_TEMPLATE_IDLE seconds (600) without a request; the shims it forked live
on.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping

from . import sockets
from .layout import private_socket_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wasmctr.running.executor import Executor

MAX_REQUEST = 1 << 20
_executor: Executor | None = None  # the template's, inherited by the shims it forks
_shims: set[int] = set()  # forked here, not yet reaped

PER_RUN = ("TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION", "SCHED_CORE")
"""What containerd sets for each run of a shim binary, on top of its own environment."""

Answer = Callable[[str, list[str], dict[str, str]], bytes]
"""(the binary's directory, its arguments, the environment to carry it out in) -> what it prints;
OSError when it fails."""


def warm_executor() -> Executor | None:
    """The executor a shim forked from the template inherits (engine made, code shared); else None."""
    return _executor


def run(path: str, stamp: str, answer: Answer) -> int:
    """Serve the binary's requests on `path` until idle or stale."""
    global _executor
    import wasmtime  # noqa: F401  (what every shim needs, loaded before any fork)

    from wasmctr.running.executor import Executor
    from wasmctr.sandbox import seccomp

    from . import events, native, tasks, ttrpc, verbs  # noqa: F401

    _executor = Executor.for_store(map_cached_code=True)  # code shared through the page cache by every pod
    _executor.warm()
    seccomp.allowlist(False)  # the container filter, built once for every shim (and guest) forked below

    idle = float(os.environ.get("WASMCTR_SHIM_TEMPLATE_IDLE", "600"))
    os.close(private_socket_dir())
    server = sockets.listen(path, 64)
    bound = os.stat(path).st_ino  # the socket file's inode (fstat of the socket gives sockfs's)
    server.settimeout(idle)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # through `finally`: the socket file goes too
    gc.freeze()  # what is loaded now is shared with every shim: keep their collectors off these pages
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return 0
            with conn:
                if not sockets.trusted(sockets.peer_uid(conn)):
                    continue  # closed unanswered
                conn.settimeout(10)
                try:
                    request_stamp, cwd, argv, env = decode_request(_receive(conn))
                except (OSError, ValueError):
                    continue
                if request_stamp != stamp:
                    with contextlib.suppress(OSError):
                        conn.sendall(b"stale")
                    return 0
                try:
                    reply = b"+" + answer(cwd, argv, verb_environment(env))
                except Exception as exc:  # the binary reports it; the template serves on
                    reply = b"-" + (str(exc) or type(exc).__name__).encode(errors="replace")
                with contextlib.suppress(OSError):
                    conn.sendall(reply)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:  # not a newer template's
                os.unlink(path)
        server.close()


def verb_environment(request: Mapping[str, str]) -> dict[str, str]:
    """What a request's verb runs in, and a pod's shim forked for it inherits: the template's own
    environment (containerd's, from the run that started it), with only the variables containerd sets per
    run (PER_RUN) taken from the request. What chooses a program or how it loads (WASMCTR_RUNC, PATH,
    LD_PRELOAD) is never the request's."""
    return {**os.environ, **{name: request[name] for name in PER_RUN if name in request}}


def _receive(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while data := conn.recv(65536):
        chunks.append(data)
        size += len(data)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
    return b"".join(chunks)


def decode_request(data: bytes) -> tuple[str, str, list[str], dict[str, str]]:
    """(stamp, directory, arguments, environment) from `containerd.encode_request`'s bytes."""
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    if len(fields) < 3 or not fields[2].isdigit() or len(fields) < 3 + int(fields[2]):
        raise ValueError("malformed request")
    count = int(fields[2])
    env = dict(item.split("=", 1) for item in fields[3 + count:] if "=" in item)
    return fields[0], fields[1], fields[3:3 + count], env


def fork_shim(env: dict[str, str], listener: int, log: int, serve: Callable[[], int]) -> int:
    """Fork a pod's shim server on `listener`, its stderr on `log`; returns its pid."""
    pid = os.fork()
    if pid == 0:
        os._exit(_become_shim(env, listener, log, serve))
    _shims.add(pid)
    return pid


def _become_shim(env: dict[str, str], listener: int, log: int, serve: Callable[[], int]) -> int:
    """In the forked child: the pod's own session, stdio and environment, then the shim server."""
    try:
        for signum in (signal.SIGCHLD, signal.SIGTERM):  # the template's reaper and exit are not the shim's
            signal.signal(signum, signal.SIG_DFL)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        from .stdio import close_inherited_fds

        close_inherited_fds(keep={listener})  # the template's socket and the binary's connection
        os.chdir("/")
        os.environ.clear()
        os.environ.update(env)
        os.environ["WASMCTR_SHIM_LISTEN_FD"] = str(listener)
        return serve()
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        with contextlib.suppress(OSError):
            os.write(2, f"wasmctr shim: {exc}\n".encode())
        return 1


def _reap(*_: object) -> None:
    """Reap the shims forked here, and only those: a verb's own subprocesses (runc, mount) are theirs."""
    for pid in list(_shims):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                _shims.discard(pid)
