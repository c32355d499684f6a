"""`wasmctr-runtime`: a runc-compatible OCI runtime CLI that runs wasm containers and hands every other
container, flags and all, to runc.

Callers (containerd's runc shim via `--runc-binary`, `dockerd --add-runtime`, podman, CRI-O) drive it
like runc: `create --bundle DIR --pid-file FILE ID` leaves a process that has loaded the guest and
blocks on `ROOT/ID/exec.fifo`; its pid is the container's, and it becomes the guest, so the caller
reaps it as its subreaper; `start ID` opens the FIFO and lets it run; `state`, `kill`, `delete`, `ps`
follow the runtime-spec. State lives in `ROOT/ID/wasmctr.json` (ROOT from `--root`, default
/run/wasmctr-runtime), beside runc's own files when both share a root.

A container is wasm, as crun decides it, if annotation `run.oci.handler` is `wasm` (or `wasm-smart`),
or `module.wasm.image/variant` is `compat` (or `compat-smart`), or `process.args[0]` is a wasm file in
the rootfs; the smart variants also require that (`wasmctr.running.ocispec.is_wasm`, which the shim
asks too); a pod's sandbox never is. Everything else runs under runc (`--delegate PATH` or
`WASMCTR_RUNTIME_DELEGATE` to choose another).

`create` of a wasm container checks the node's signature policy first (shim/admission.py) for the image its
bundle names (`io.kubernetes.cri.image-name` or `org.opencontainers.image.ref.name`; the manifest digest
when the name has one, else what its registry names now); a bundle that names no image is refused where the
policy's default asks for signatures, as the runtime cannot tell which image it was made from.
"""

from __future__ import annotations

import os
import sys
import time

from . import hooks, jsonload, process

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NoReturn

OCI_VERSION = "1.0.2"
STATE_FILE = "wasmctr.json"
START_TIME = "init_process_start"
CGROUPS_PATH = "cgroups_path"


class SpecError(Exception):
    """A runtime-spec error: printed (and logged) on one line, exit 1."""


class Globals:
    """The global flags. A plain class: every runc-style call is a new process, and dataclasses (with
    typing and inspect) would add ~10 ms to each. What `start`, `state`, `kill` and `delete` run imports
    no more than os, sys, time and this package's light modules (no pathlib, json, re, enum, contextlib
    or subprocess: ~50 ms of each call before); `create` loads the engine."""

    def __init__(self, root: str, log: str | None, log_format: str, debug: bool, delegate: str,
                 argv: list[str]) -> None:
        self.root, self.log, self.log_format, self.debug, self.delegate, self.argv = (
            root, log, log_format, debug, delegate, argv)


def main() -> None:
    g: Globals | None = None
    try:
        g, command, rest = _parse_globals(sys.argv[1:])
        if g is not None:
            _dispatch(g, command, rest)
    except (SpecError, OSError) as exc:  # OSError: e.g. an unwritable --root; one line, as for runc
        _error(exc, g)
        sys.exit(1)


def _parse_globals(argv: list[str]) -> tuple[Globals | None, str, list[str]]:
    root, log, log_format, debug = "/run/wasmctr-runtime", None, "text", False
    delegate = os.environ.get("WASMCTR_RUNTIME_DELEGATE", "runc")
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        flag, eq, value = argv[i].lstrip("-").partition("=")
        if flag in ("root", "log", "log-format", "criu", "rootless", "delegate") and not eq:
            i += 1
            value = argv[i] if i < len(argv) else ""
        if flag == "root":
            root = value
        elif flag == "log":
            log = value
        elif flag == "log-format":
            log_format = value
        elif flag == "delegate":
            delegate = value
        elif flag == "debug":
            debug = True
        elif flag in ("v", "version"):
            from wasmctr import __version__

            print(f"wasmctr-runtime version {__version__}\nspec: {OCI_VERSION}")
            return None, "", []
        elif flag in ("h", "help"):
            print(__doc__)
            return None, "", []
        i += 1
    if i >= len(argv):
        raise SpecError("no command given (create, start, state, kill, delete, ps, run, features)")
    globals_ = Globals(root, log, log_format, debug, delegate, argv)
    return globals_, argv[i], argv[i + 1:]


def _dispatch(g: Globals, command: str, rest: list[str]) -> None:
    if command == "features":
        import json

        print(json.dumps(_features(), indent=2))
        return
    if command in ("list", "ls"):
        _list(g, rest)
        return
    if command in ("create", "run"):
        from pathlib import Path

        opts, container_id = _options(rest)
        bundle = Path(opts.get("bundle") or opts.get("b") or os.getcwd()).resolve()
        config = _config(bundle)
        from wasmctr.running.ocispec import is_wasm

        if not is_wasm(bundle, config):
            _delegate(g)
        if opts.get("console-socket"):
            raise SpecError("a terminal is not supported for wasm containers (no --console-socket)")
        pid = _create(g, container_id, bundle, config, opts.get("pid-file"))
        code = 0
        if command == "run":
            _start(g, container_id)
            if "detach" not in opts and "d" not in opts:
                _, status = os.waitpid(pid, 0)
                if "keep" not in opts:  # as `runc run` does: the container goes once it has exited
                    _delete(g, container_id, force=True)
                code = _exit_code(status)
        _exit_now(code)
    if command in ("start", "state", "kill", "delete", "ps"):
        opts, container_id = _options(rest)
        if not os.path.exists(os.path.join(g.root, container_id, STATE_FILE)):
            _delegate(g)
        if command == "start":
            _start(g, container_id)
        elif command == "state":
            import json

            print(json.dumps(_public(_state(g, container_id)), indent=2))
        elif command == "kill":
            _kill(g, container_id, opts.get("_signal", "SIGTERM"))
        elif command == "delete":
            _delete(g, container_id, force="force" in opts or "f" in opts)
        elif command == "ps":
            state = _state(g, container_id)
            pids = [state["pid"]] if state["status"] != "stopped" else []
            if opts.get("format") == "json" or opts.get("f") == "json":
                print(f"[{', '.join(str(p) for p in pids)}]")
            else:
                print("PID\n" + "\n".join(str(p) for p in pids))
        return
    _delegate(g)  # update, events, pause, exec, checkpoint...: whatever runc makes of them


# -- commands -------------------------------------------------------------------------------------


def _create(g: Globals, container_id: str, bundle: Path, config: dict[str, Any], pid_file: str | None) -> int:
    import contextlib
    from pathlib import Path

    from wasmctr.errors import ExecutorError
    from wasmctr.running.executor import Executor
    from wasmctr.running.ocispec import explain, spec_from_bundle
    from wasmctr.sandbox import devices
    from wasmctr.sandbox.container import Confinement, Container

    from .cgroups import Cgroup

    state_dir = Path(g.root, container_id)
    if (state_dir / STATE_FILE).exists():
        raise SpecError(f"container with id {container_id} already exists")
    executor = Executor.for_store(map_cached_code=True)
    try:
        _admit(container_id, config)
        # before the fork: a guest the policy refuses fails `create`, and the container process starts warm
        guest = executor.prepare(spec_from_bundle(bundle, config))
        # bad names fail `create`; a served component's host listens, so it keeps the socket calls
        confinement = Confinement.of_spec(config, guest.spec.policy.network or guest.world.listens)
        linux = config.get("linux") or {}
        cgroup = Cgroup.open(linux["cgroupsPath"]) if linux.get("cgroupsPath") else None  # a bad path fails here
    except Exception as exc:
        raise SpecError(explain(exc)) from None
    state_dir.mkdir(parents=True, exist_ok=True)
    guest.spec.devices = devices.populate(state_dir / "dev")  # the OCI default devices, at /dev
    fifo = state_dir / "exec.fifo"
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    os.mkfifo(fifo, 0o600)
    user = (config.get("process") or {}).get("user") or {}
    os.chown(fifo, int(user.get("uid") or 0), int(user.get("gid") or 0))  # the container process opens it as its user
    guest.spec.stdin = True
    if cgroup is not None:
        try:
            cgroup.make(linux.get("resources") or {})
        except OSError as exc:
            raise SpecError(f"cgroup {linux['cgroupsPath']}: {exc.strerror or exc}") from None
    container = Container(executor, guest, confinement, cgroup, speaks_as="wasmctr-runtime")
    start = _StartFifo(str(fifo))
    pid = container.fork(start.hold, start.wait)  # in the spec's pid namespace; it becomes the guest
    failure = container.ready(pid)
    if failure is not None:  # it ended before it was ready: reaped, and nothing of it is left
        if cgroup is not None:
            cgroup.remove()
        devices.remove(state_dir / "dev")
        devices.remove_files(state_dir, ("exec.fifo",))
        raise SpecError(explain(ExecutorError(failure)))
    assert container.report is not None
    container.report.close()  # its caller reaps it and reads its exit status: nobody here reads its outcome
    state = {"ociVersion": OCI_VERSION, "id": container_id, "pid": pid, "bundle": str(bundle),
             "created": _now(), "owner": "", "annotations": config.get("annotations") or {},
             START_TIME: process.start_time(pid),  # the pid's identity (runc's name)
             CGROUPS_PATH: linux.get("cgroupsPath") or ""}  # `state` prints neither
    _write_json(state_dir / STATE_FILE, state)
    try:
        for kind in ("prestart", "createRuntime", "createContainer"):
            hooks.run(config, kind, _public({**state, "status": "created"}))
    except hooks.HookError as exc:  # the spec: the runtime stops the container and reports the error
        _delete(g, container_id, force=True)
        raise SpecError(str(exc)) from None
    if pid_file:
        _write_text(Path(pid_file), str(pid))
    return pid


def _admit(container_id: str, config: dict[str, Any]) -> None:
    """The signature policy for the image the bundle names; its signatures from the wasmctr store where it
    keeps them (a node that loaded the image with them), else from the image's registry."""
    from . import admission

    rules = admission.rules()
    if rules.accepts_anything:
        return
    from wasmctr.image import home
    from wasmctr.image.store import Store
    from wasmctr.signing import attach

    def kept(_ref: object, digest: str) -> list[attach.Signature] | None:
        if not (home.store_root() / "index.json").exists():  # no store on this node: none made for the check
            return None
        return attach.stored(Store(), digest) or None

    admission.admit(rules, admission.annotated_image(config), None, kept, container_id)


class _StartFifo:
    """How `start` reaches a container process: it opens `ROOT/ID/exec.fifo`, which the process is
    blocked writing to. The process holds the FIFO by its path before its user changes (the state dir
    need not be searchable by that user), and opens it through /proc/self/fd after, which checks the
    FIFO's own owner and mode only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.held = -1

    def hold(self, _keep: set[int]) -> None:
        """The container process's setup step, while it is privileged."""
        self.held = os.open(self.path, os.O_PATH | os.O_CLOEXEC)

    def wait(self) -> bool:
        """Block until `start` opens the other end."""
        fd = os.open(f"/proc/self/fd/{self.held}", os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)
        return True


def _start(g: Globals, container_id: str) -> None:
    state = _state(g, container_id)
    if state["status"] != "created":
        raise SpecError(f"cannot start a container that is {state['status']}")
    config = _bundle_config(state)
    try:
        hooks.run(config, "startContainer", _public(state))
    except hooks.HookError as exc:
        process.signal_recorded(state["pid"], state.get(START_TIME), process.SIGKILL)
        raise SpecError(str(exc)) from None
    fifo = os.path.join(g.root, container_id, "exec.fifo")
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if os.read(fd, 1):
                    break
            except BlockingIOError:
                pass
            if not _alive(state):
                raise SpecError(f"container {container_id} exited before it started")
            if time.monotonic() > deadline:
                raise SpecError(f"container {container_id} did not become ready")
            time.sleep(0.002)
    finally:
        os.close(fd)
    os.unlink(fifo)
    hooks.run_warning(config, "poststart", _public({**state, "status": "running"}))


def _list(g: Globals, rest: list[str]) -> None:
    """runc's `list [--format table|json] [-q]` over the containers of both runtimes sharing `--root`:
    the delegate's (it skips ours) and the wasm ones."""
    fmt, quiet = "table", False
    items = iter(rest)
    for arg in items:
        flag, eq, value = arg.lstrip("-").partition("=")
        if flag in ("format", "f"):
            fmt = value if eq else next(items, "")
        elif flag in ("quiet", "q"):
            quiet = True
        else:
            raise SpecError(f"flag provided but not defined: -{flag}")
    if fmt not in ("table", "json"):
        raise SpecError(f"invalid format option {fmt!r}")
    import json
    import subprocess
    from pathlib import Path

    try:
        native = subprocess.run([g.delegate, "--root", str(g.root), "list", "--format", "json"],
                                capture_output=True, text=True).stdout
        listed = json.loads(native or "null") or []
    except (OSError, ValueError):  # no delegate here, or nothing it could read: the wasm ones still list
        listed = []
    root = Path(g.root)
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if (entry / STATE_FILE).exists():
                state = _public(_state(g, entry.name))
                listed.append({**state, "rootfs": str(Path(state["bundle"]) / "rootfs")})
    listed.sort(key=lambda c: c["id"])
    if quiet:
        print("\n".join(c["id"] for c in listed))
    elif fmt == "json":
        print(json.dumps(listed))
    else:
        rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]] + [
            [c["id"], str(c["pid"] if c["status"] != "stopped" else 0), c["status"], c["bundle"], c["created"],
             c.get("owner", "")] for c in listed]
        widths = [max(12, *(len(row[i]) + 3 for row in rows)) for i in range(5)]  # Go's tabwriter, as runc's
        print("\n".join("".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + row[5]
                        for row in rows))


def _public(state: dict[str, Any]) -> dict[str, Any]:
    """The OCI state (what `state` prints and hooks read), without what only this runtime keeps."""
    return {k: v for k, v in state.items() if k not in (START_TIME, CGROUPS_PATH)}


def _bundle_config(state: dict[str, Any]) -> dict[str, Any]:
    """The container's config.json, for its hooks (`create` checked its shape); empty if the bundle has
    gone or the file is no longer a JSON object."""
    try:
        config = jsonload.read(os.path.join(state["bundle"], "config.json"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _state(g: Globals, container_id: str) -> dict[str, Any]:
    path = os.path.join(g.root, container_id, STATE_FILE)
    try:
        state: dict[str, Any] = jsonload.read(path)
    except FileNotFoundError:
        raise SpecError(f"container \"{container_id}\" does not exist") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"container \"{container_id}\": unreadable state {path}: {exc}") from None
    if not _alive(state):
        state["status"] = "stopped"
    elif os.path.exists(os.path.join(g.root, container_id, "exec.fifo")):
        state["status"] = "created"
    else:
        state["status"] = "running"
    return state


def _kill(g: Globals, container_id: str, name: str) -> None:
    state = _state(g, container_id)
    if state["status"] == "stopped":
        raise SpecError("container not running")
    if not process.signal_recorded(state["pid"], state.get(START_TIME), _signal(name)):
        raise SpecError("container not running")


def _delete(g: Globals, container_id: str, force: bool) -> None:
    state = _state(g, container_id)
    if state["status"] == "running" and not force:
        raise SpecError(f"cannot delete container {container_id} that is not stopped: running")
    if state["status"] != "stopped":
        process.signal_recorded(state["pid"], state.get(START_TIME), process.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(state) and time.monotonic() < deadline:
            try:
                os.waitpid(state["pid"], os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.01)
    hooks.run_warning(_bundle_config(state), "poststop", _public({**state, "status": "stopped"}))
    if state.get(CGROUPS_PATH):
        from .cgroups import Cgroup

        try:
            Cgroup.open(state[CGROUPS_PATH]).remove()
        except (OSError, ValueError):  # ValueError: a path refused at `create`, recorded by an older version
            pass
    state_dir = os.path.join(g.root, container_id)
    from wasmctr.sandbox import devices

    devices.remove(os.path.join(state_dir, "dev"))
    devices.remove_files(state_dir, (STATE_FILE, "exec.fifo"))


# -- helpers --------------------------------------------------------------------------------------


def _options(rest: list[str]) -> tuple[dict[str, str], str]:
    """runc's command flags: `--flag value`, `--flag=value`, booleans; the container id; a signal."""
    valued = {"bundle", "b", "pid-file", "console-socket", "preserve-fds", "format", "f", "log", "process"}
    booleans = {"no-pivot", "no-new-keyring", "detach", "d", "force", "all", "a", "keep", "no-subreaper"}
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("-") and arg != "-":
            flag, eq, value = arg.lstrip("-").partition("=")
            if flag in valued and not eq:
                i += 1
                value = rest[i] if i < len(rest) else ""
            elif flag not in valued and flag not in booleans:
                raise SpecError(f"flag provided but not defined: -{flag}")
            opts[flag] = value
        else:
            positional.append(arg)
        i += 1
    if not positional:
        raise SpecError("container id cannot be empty")
    if len(positional) > 1:
        opts["_signal"] = positional[1]
    return opts, positional[0]


def _config(bundle: Path) -> dict[str, Any]:
    from wasmctr.errors import WasmctrError
    from wasmctr.running.ocispec import explain, load_config

    try:
        return load_config(bundle)
    except WasmctrError as exc:
        raise SpecError(explain(exc)) from None


def _delegate(g: Globals) -> NoReturn:
    try:
        os.execvp(g.delegate, [g.delegate, *g.argv])
    except OSError as exc:
        raise SpecError(f"cannot run the delegate runtime {g.delegate!r}: {exc.strerror}") from None


def _signal(name: str) -> int:
    if name.isdigit():
        return int(name)
    import signal

    upper = name.upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except KeyError:
        raise SpecError(f"unknown signal {name!r}") from None


def _alive(state: dict[str, Any]) -> bool:
    """Whether the container's process runs: the recorded pid, still the process it was (not a reuse)."""
    return process.alive(state["pid"], state.get(START_TIME))


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _features() -> dict[str, Any]:
    return {"ociVersionMin": "1.0.0", "ociVersionMax": "1.1.0", "hooks": list(hooks.KINDS),
            "mountOptions": ["bind", "rbind", "ro", "rw"],
            "annotations": {"run.oci.handler": "wasm | wasm-smart: run with wasmctr (others go to runc)",
                            "wasmctr.io/timeout": "wall-clock limit", "wasmctr.io/deny-wasi": "WASI imports"}}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    _write_text(path, json.dumps(data))


def _write_text(path: Path, text: str) -> None:
    from wasmctr.image import atomic

    atomic.write_bytes(path, text.encode())


def _now() -> str:
    """RFC 3339 UTC with nanoseconds, as runc writes times."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def _error(exc: Exception, g: Globals | None) -> None:
    """One line on stderr, and in `--log` as runc's callers read it (JSON lines with --log-format json)."""
    message = str(exc)
    if g is not None and g.log:
        import json

        now = _now()
        try:
            with open(g.log, "a") as f:
                if g.log_format == "json":
                    f.write(json.dumps({"level": "error", "msg": message, "time": now}) + "\n")
                else:
                    f.write(f'time="{now}" level=error msg="{message}"\n')
        except OSError:
            pass
    print(f"wasmctr-runtime: {message}", file=sys.stderr)


def _exit_now(code: int) -> NoReturn:
    """End `create` (or `run`) once its output is out, without the interpreter's teardown: freeing the
    engine and its code costs tens of milliseconds, and the container process, forked, lives on."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
