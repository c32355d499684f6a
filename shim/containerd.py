"""`containerd-shim-wasmctr-v1`: the containerd shim v2 binary for runtime `io.containerd.wasmctr.v1`.

containerd runs it as `containerd-shim-wasmctr-v1 -namespace NS -address ADDR -publish-binary BIN
-id ID [-debug] start` in the bundle directory, with TTRPC_ADDRESS (and 1.7+'s GRPC_ADDRESS,
NAMESPACE...) set and runtime options on stdin, and as `... -bundle DIR delete` once a task's
connection closes. Both runs sit on every container's path (`start` before its Create, `delete`
before Kubernetes sees it exit), so the binary does little itself: it sends its arguments, directory
and environment to the node's template process (`shim/template.py`: one per containerd, with
wasmtime and the shim loaded), which carries the verb out (`shim/verbs.py`) and answers what to
print. The binary imports os, sys, types, zlib and `_socket` and no more, so a run costs about what the
interpreter's start does. Where there is no current template, the binary carries the verb out itself
and starts a template for the runs that follow.

`containerd-shim-wasmctr-shared-v1` (runtime `io.containerd.wasmctr-shared.v1`) is the same binary
with one difference, passed on as `-shared`: its `start` hands every container of a namespace, whatever
its pod, to one shim (shim/verbs.py says what that trades).

`serve` (the long-lived shim server on an inherited socket) and `template` are this binary's own
verbs for the processes it starts.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from .layout import RUNC_ROOT, code_stamp, template_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms on every start/delete)
if TYPE_CHECKING:
    from typing import NoReturn

TEMPLATE_TIMEOUT = 20.0  # seconds a template may take to answer: it serves one request at a time
EVENTS_FLUSH_SECONDS = 5.0  # how long an exiting shim waits for containerd to take its last events

VALUE_FLAGS = ("namespace", "address", "publish-binary", "id", "bundle", "socket")
BOOL_FLAGS = {"debug": "debug", "v": "version", "version": "version", "shared": "shared"}
NAMES = {False: "containerd-shim-wasmctr-v1", True: "containerd-shim-wasmctr-shared-v1"}  # by `shared`


def parse(argv: list[str]) -> SimpleNamespace:
    """containerd's shim flags as Go's flag package reads them (`-flag value`, `--flag=value`, booleans
    alone or `=true`), then the action. Not argparse: its imports cost ~17 ms on each of the two runs
    containerd makes per container."""
    args = SimpleNamespace(**{f.replace("-", "_"): "" for f in VALUE_FLAGS}, debug=False, version=False, shared=False,
                           action="")
    items = iter(argv)
    for item in items:
        if not item.startswith("-") or item == "-":
            args.action = item
            continue
        name, eq, value = item.lstrip("-").partition("=")
        if name in VALUE_FLAGS:
            found = value if eq else next(items, None)
            if found is None:
                _usage(args, f"flag needs an argument: -{name}")
            setattr(args, name.replace("-", "_"), found)
        elif name in BOOL_FLAGS and value in ("", "true", "false"):
            setattr(args, BOOL_FLAGS[name], value != "false")
        else:
            _usage(args, f"flag provided but not defined: -{name}")
    return args


def _usage(args: SimpleNamespace, message: str) -> NoReturn:
    print(f"{NAMES[args.shared]}: {message}", file=sys.stderr)
    sys.exit(2)


def main(shared: bool = False) -> None:
    """The binary's entry; `shared` for containerd-shim-wasmctr-shared-v1 (its script passes it)."""
    argv = ["-shared", *sys.argv[1:]] if shared else sys.argv[1:]
    args = parse(argv)
    name = NAMES[args.shared]
    if args.version:
        from wasmctr import __version__

        print(f"{name} (wasmctr {__version__})")
        return
    if args.action in ("start", "delete"):
        sys.exit(_verb(args, argv))
    actions = {"serve": serve, "template": _template}
    if args.action not in actions:
        print(f"{name}: unknown action {args.action!r} (start, delete)", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(actions[args.action](args))
    except OSError as exc:
        print(f"{name} {args.action}: {exc}", file=sys.stderr)
        sys.exit(1)


def _verb(args: SimpleNamespace, argv: list[str]) -> int:
    """`start` or `delete`, by the template where there is a current one, else here."""
    if args.action == "start":
        sys.stdin.read()  # runtime options: none are needed by this shim
    try:
        answer = _ask_template(args.address, argv)
        if answer is None:
            from . import verbs

            output = verbs.run(args, os.getcwd(), os.environ, verbs.spawn_interpreter)
        elif answer.startswith(b"+"):
            output = answer[1:]
        else:
            raise OSError(answer[1:].decode(errors="replace"))
    except OSError as exc:  # containerd shows this line in its error: "failed to start shim: ..."
        print(f"{NAMES[args.shared]} {args.action}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    return 0


def encode_request(stamp: str, cwd: str, argv: list[str], env: dict[str, str]) -> bytes:
    """A request to the template: NUL-separated stamp, directory, argument count, arguments, KEY=VALUE."""
    fields = [stamp, cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
    return "\0".join(fields).encode("utf-8", "surrogateescape")


def _ask_template(address: str, argv: list[str]) -> bytes | None:
    """The template's answer (`+OUTPUT` or `-ERROR`), or None where there is no current template.
    A template that took the request but does not answer in time is an error, not a reason to do the
    verb a second time here."""
    from _socket import AF_UNIX, SHUT_WR, SOCK_STREAM, socket  # `socket`'s C core: the module costs ~18 ms

    request = encode_request(code_stamp(), os.getcwd(), argv, dict(os.environ))
    conn = socket(AF_UNIX, SOCK_STREAM)
    try:
        conn.settimeout(TEMPLATE_TIMEOUT)
        try:
            conn.connect(template_path(address))
        except OSError:
            return None
        conn.sendall(request)
        conn.shutdown(SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        raise OSError(f"the shim template did not answer in {TEMPLATE_TIMEOUT:.0f} s") from None
    finally:
        conn.close()
    answer = b"".join(chunks)
    if answer == b"stale" or not answer:
        return None  # it exits now; the verb is done here, and a current template is started
    return answer


def serve(args: SimpleNamespace) -> int:
    """The long-lived shim: warm executor, ttrpc task service on the inherited socket."""
    import contextlib
    import logging
    import signal
    import socket
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import wasmtime  # noqa: F401  (imported before any container is forked: every child starts warm)

    from wasmctr.sandbox import landlock

    from .events import Publisher
    from .native import become_subreaper
    from .tasks import TaskService
    from .template import warm_executor
    from .ttrpc import Server

    listener = socket.socket(fileno=int(os.environ["WASMCTR_SHIM_LISTEN_FD"]))
    server: Server | None = None
    publisher = Publisher(os.environ.get("TTRPC_ADDRESS"))

    def finish() -> None:
        with contextlib.suppress(OSError):
            os.unlink(args.socket)  # first: a `start` from now on spawns a new shim
        if server is not None:
            server.stop()
        publisher.flush(EVENTS_FLUSH_SECONDS)  # the last task's exit and delete reach containerd
        logging.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: finish())
    become_subreaper()  # the init of a native (runc) container is re-parented here when `runc create` exits
    if not landlock.abi():
        logging.getLogger("wasmctr.shim").warning(
            "this kernel has no Landlock (Linux 5.13+, `lsm=` must include landlock): wasm containers run "
            "without the filesystem confinement below WASI")
    linger = float(os.environ.get("WASMCTR_SHIM_LINGER", "2"))
    tasks = TaskService(publisher, args.namespace, finish, linger,
                        runc_root=RUNC_ROOT, executor=warm_executor(), containerd_address=args.address)
    server = Server([tasks.service(), tasks.reservation_service()])
    server.serve(listener)
    return 0


def _template(args: SimpleNamespace) -> int:
    """The node's template: answers `start` and `delete`, forking `serve`s warm (shim/template.py)."""
    from . import template, verbs

    def answer(cwd: str, argv: list[str], env: dict[str, str]) -> bytes:
        def spawn(shim_argv: list[str], shim_env: dict[str, str], listener: int, log: int) -> int:
            return template.fork_shim(shim_env, listener, log, lambda: serve(parse(shim_argv)))

        return verbs.run(parse(argv), cwd, env, spawn)

    return template.run(args.socket, code_stamp(), answer)


if __name__ == "__main__":
    main()
