"""The executor: run one WASI guest (preview 1 module or preview 2 component) under a sandbox.

One API for every caller (`wasmctr run`, the containerd shim, the OCI runtime CLI), after runwasi's
engine trait: `precompile(path)` and `run(spec) -> Outcome`, which is
`start(prepare(spec))` (the shims prepare before they fork a container). A `RunSpec` says what the
guest may reach, and nothing else is reachable:

- files: the rootfs (read-only at `/`) and the granted mounts, as WASI preopens; no host path otherwise;
- environment: exactly `spec.env`; arguments: exactly `spec.args`;
- network: none unless granted (components only; wasip1 has no call that creates a socket);
- imports: checked against the policy before instantiation (refused, or linked to traps);
- memory: linear memory capped by the store limiter; CPU: a wall-clock deadline enforced by epoch
  interruption, and an optional fuel budget.

The guest runs on a worker thread while the calling thread supervises: it turns a deadline or a signal
into an epoch interrupt (the guest traps at its next loop or call). A thread cannot be killed, so a
guest that sits in a blocking host call past the grace period can only end with its process: a caller
whose process exists for its guest passes `hard_stop` (`exit_process`), which is called then; the
Python API runs a guest with a deadline in a child interpreter for this (`isolated.py`). Imports the store's
compile cache, the policy and wasm parsing; never the CLI.
"""

from __future__ import annotations

import contextlib
import os
import select  # with this module: a container process under Landlock can no longer load its extension
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from wasmctr import diagnostics
from wasmctr.errors import ExecutorError
from wasmctr.image import digest as digests
from wasmctr.image import inroot, wasm
from wasmctr.record import field, record
from wasmctr.running import policy as policies
from wasmctr.running.compile_cache import CompileCache, key

GRACE_SECONDS = 0.5
ENDED = b"\xff"  # what the guest thread writes when it ends (the supervisor then reads `finished`)
LOADED_CODE_LIMIT = 64
EXIT_TRAP = 134
EXIT_KILLED = 137


@record(frozen=True)
class Mount:
    """A host directory granted to the guest at `guest` (read-only if `readonly`)."""

    host: Path
    guest: str
    readonly: bool = False


@record
class RunSpec:
    wasm: Path
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    rootfs: Path | None = None
    mounts: list[Mount] = field(default_factory=list)
    memory_limit: int | None = None
    timeout: float | None = None
    fuel: int | None = None
    policy: policies.Policy = field(default_factory=policies.Policy)
    stdin: bool | str = False  # closed, inherited, or a file/FIFO path
    stdout: str | None = None  # inherited, or a path (a file, or a pipe's /proc/self/fd path)
    stderr: str | None = None
    wasm_digest: str | None = None  # what names the wasm's content for the compile cache (else: its sha256)
    function: str | None = None  # an export to call instead of the command's entry (`path#func`)
    devices: Path | None = None  # a directory of default device nodes, preopened at /dev (`devices.py`)


@record(frozen=True)
class Outcome:
    """How a run ended: `exit_code` as `docker run` reports it, `reason`, and a message for stderr."""

    exit_code: int
    reason: str  # exit | trap | oom | timeout | signal
    message: str = ""


HardStop = Callable[[Outcome], NoReturn]


def exit_process(outcome: Outcome) -> NoReturn:
    """The hard stop of a process that exists for its guest: say why, and end with the guest's code."""
    diagnostics.emit(f"wasmctr: {outcome.message}")
    os._exit(outcome.exit_code)


@record(frozen=True)
class Prepared:
    """A guest ready to start: its spec, kind (module or component), engine, loaded code, the imports
    the policy denies (linked to traps), and once `Executor.open` has made it, its store, whose WASI
    context holds the preopened directories."""

    spec: RunSpec
    kind: str
    engine: Any
    code: Any
    denied: list[str]
    store: Any = None


class Executor:
    def __init__(self, cache: CompileCache | None = None, map_cached_code: bool = False) -> None:
        """`map_cached_code`: load cached code by mapping its file, with no copy (35 MB for a Python
        component), and shared through the page cache by every process that maps it (the containers of
        every pod on a node). wasmtime then keeps the file open and maps memory images from it at
        instantiation, so a forked process that closes descriptors it did not open must keep those
        (`shim/stdio.close_inherited_fds`); without it, code is read and copied into this process."""
        self.cache = cache
        self.map_cached_code = map_cached_code
        self._engines: dict[bool, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._digests: dict[tuple[int, int, int, int], str] = {}
        self._linkers: dict[int, Any] = {}  # per engine, for `_check_linkable`
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, root: Path | None = None, map_cached_code: bool = False) -> Executor:
        """The executor every caller makes: its compile cache is that of the store at `root` (default
        `home.store_root()`, the user's store), which this does not open: wasmctr-runtime's `create`, a
        new interpreter per container, reaches the cache without importing the store."""
        from wasmctr.image import home

        return cls(CompileCache(home.compile_cache_dir(root if root is not None else home.store_root())),
                   map_cached_code)

    # -- the engine trait ---------------------------------------------------------------------------

    def warm(self) -> None:
        """Create the default engine now: the shim's template process does, so that every shim it forks
        (and every guest those fork) shares the engine's pages instead of building its own."""
        self._engine(False)

    def precompile(self, path: Path, digest: str | None = None, fuel: bool = False) -> bool:
        """Compile (or load from the cache) ahead of the first run and keep the code loaded, so that a
        run in this process, or in a process forked from it, starts at once and shares the code pages.
        False if nothing had to be compiled."""
        return self._code(path, digest, fuel)[1]

    def run(self, spec: RunSpec, hard_stop: HardStop | None = None) -> Outcome:
        return self.start(self.prepare(spec), hard_stop)

    def prepare(self, spec: RunSpec) -> Prepared:
        """Everything about a run that does not need the guest's own store: the code, loaded, its imports
        checked against the policy and against what the engine provides, its entrypoint found (a guest
        that could not run fails here, at Create, as runwasi's does). The shims prepare in the
        long-lived process, before forking the container: the container process then only creates the
        store and starts, and shares, rather than copies, the pages this work touched."""
        kind = _kind(spec.wasm)
        if spec.policy.network and kind == "module":
            raise ExecutorError("--network host: WASI preview 1 modules have no call that creates a socket; "
                                "network access needs a preview 2 component")
        engine = self._engine(spec.fuel is not None)
        code, _ = self._code(spec.wasm, spec.wasm_digest, spec.fuel is not None)
        verdict = policies.check(spec.policy, _imports(engine, kind, code))
        if verdict.denied and (spec.policy.mode == "refuse" or kind == "component"
                               or any(r == "not a WASI import" for r in verdict.denied.values())):
            listed = ", ".join(f"{name} ({why})" for name, why in sorted(verdict.denied.items()))
            raise ExecutorError(f"refused: the guest imports {listed}")
        # what the policy allows must also be there to link, and the entrypoint must exist: fail now
        if kind == "component":
            _check_provided(engine, code)
        else:
            self._check_linkable(engine, code)
        if spec.function is not None:
            _check_export(engine, kind, code, spec.function)
        return Prepared(spec, kind, engine, code, list(verdict.denied))

    def open(self, prepared: Prepared) -> Prepared:
        """The guest with its store made and its preopens (rootfs, mounts, /dev, working directory) open,
        stdio as its spec says at this point. A container process opens them while it is still
        privileged, as runc enters the rootfs as root, and runs the guest after it has become the
        spec's user, who may not be able to reach the bundle's path (a 0700 directory above it)."""
        import wasmtime

        spec = prepared.spec
        store = wasmtime.Store(prepared.engine)
        if spec.memory_limit is not None:
            store.set_limits(memory_size=spec.memory_limit)
        if spec.fuel is not None:
            store.set_fuel(spec.fuel)
        store.set_epoch_deadline(1)
        store.set_wasi(self._wasi(spec))
        return Prepared(spec, prepared.kind, prepared.engine, prepared.code, prepared.denied, store)

    def start(self, prepared: Prepared, hard_stop: HardStop | None = None,
              confine: Callable[[], None] | None = None) -> Outcome:
        """Run a prepared guest to its end, opening it first unless `open` has. `confine` runs once the
        guest's preopens are open and before the guest does: a process that is about to become
        another user, or give up syscalls, does it there. Without `hard_stop`, a guest stopped while
        blocked in a host call is left blocked (its thread ends when the call returns) and the outcome
        returned at once."""
        opened = prepared if prepared.store is not None else self.open(prepared)
        if confine is not None:
            confine()
        guest = _Guest(opened.engine, opened.store, opened.kind, opened.code, opened.spec, opened.denied)
        return _supervise(guest, opened.engine, opened.spec, hard_stop)

    def _check_linkable(self, engine: Any, code: Any) -> None:
        """A module importing a WASI function that does not exist, or with another signature, could not
        be instantiated: refuse it now (`instantiate_pre` links without running anything), naming it."""
        import wasmtime

        with self._lock:
            linker = self._linkers.get(id(engine))
            if linker is None:
                linker = self._linkers[id(engine)] = wasmtime.Linker(engine)
                linker.define_wasi()
        try:
            linker.instantiate_pre(code)
        except wasmtime.WasmtimeError as exc:
            raise ExecutorError(f"cannot instantiate the guest: {_one_line(str(exc))}") from None

    # -- compiling ---------------------------------------------------------------------------------

    def _engine(self, fuel: bool) -> Any:
        import wasmtime

        with self._lock:
            if fuel not in self._engines:
                config = wasmtime.Config()
                config.epoch_interruption = True
                config.consume_fuel = fuel
                self._engines[fuel] = wasmtime.Engine(config)
            return self._engines[fuel]

    def _code(self, path: Path, digest: str | None, fuel: bool) -> tuple[Any, bool]:
        """The guest's compiled code: already loaded, from the verified cache, or compiled now."""
        kind = _kind(path)
        engine = self._engine(fuel)
        cache_key = key(digest or self._digest(path), _settings(fuel))
        with self._lock:
            if cache_key in self._loaded:
                return self._loaded[cache_key], False
        code = None
        if self.cache is not None:
            with self.cache.entry(cache_key) as cached:
                if cached is not None:
                    try:
                        loader = _code_class(kind)
                        if self.map_cached_code:
                            code = loader.deserialize_file(engine, cached)
                        else:
                            with open(cached, "rb") as f:
                                code = loader.deserialize(engine, f.read())
                    except Exception:  # a verified entry from another engine build: rebuild it
                        self.cache.discard(cache_key)
        compiled = code is None
        if code is None:
            code = self._compile(engine, kind, path, cache_key)
        with self._lock:
            if len(self._loaded) >= LOADED_CODE_LIMIT:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[cache_key] = code
        return code, compiled

    def _digest(self, path: Path) -> str:
        """The file's sha256, remembered while the file is unchanged (same inode, size and mtime)."""
        st = path.stat()
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity not in self._digests:
            with open(path, "rb") as f:
                self._digests[identity] = digests.of_stream(f)[0]
        return self._digests[identity]

    def _compile(self, engine: Any, kind: str, path: Path, cache_key: str) -> Any:
        import wasmtime

        try:
            code = _code_class(kind)(engine, path.read_bytes())
        except wasmtime.WasmtimeError as exc:
            raise ExecutorError(f"{path}: invalid WebAssembly: {_one_line(str(exc))}") from None
        if self.cache is not None:
            self.cache.save(cache_key, bytes(code.serialize()))
        return code

    def _wasi(self, spec: RunSpec) -> Any:
        import wasmtime

        config = wasmtime.WasiConfig()
        config.argv = spec.args
        config.env = [tuple(item.split("=", 1)) if "=" in item else (item, "") for item in spec.env]
        preopens: list[tuple[Path, str, bool]] = []
        if spec.rootfs is not None:
            preopens.append((spec.rootfs, "/", False))
        for m in spec.mounts:
            if not m.host.is_dir():
                raise ExecutorError(f"volume {m.host}: not a directory on the host")
            preopens.append((m.host, m.guest, not m.readonly))
        if spec.devices is not None:
            preopens.append((spec.devices, "/dev", True))  # writable: /dev/null is written to
        cwd_host = _host_path(spec.cwd, preopens)
        if spec.cwd != "/" and cwd_host is not None:
            preopens.append((cwd_host[0], ".", cwd_host[1]))
        for host, guest, mutable in preopens:
            config.preopen_dir(str(host), guest, mutable)
        if isinstance(spec.stdin, str):
            config.stdin_file = spec.stdin
        elif spec.stdin:
            config.inherit_stdin()
        if spec.stdout is not None:
            config.stdout_file = spec.stdout
        else:
            config.inherit_stdout()
        if spec.stderr is not None:
            config.stderr_file = spec.stderr
        else:
            config.inherit_stderr()
        if spec.policy.network:
            from wasmtime import _ffi as ffi

            ffi.wasi_config_inherit_network(config.ptr())
            ffi.wasi_config_allow_ip_name_lookup(config.ptr(), True)
        return config


class _Guest(threading.Thread):
    """The worker thread: instantiate and call the guest, record how it ended."""

    def __init__(self, engine: Any, store: Any, kind: str, code: Any, spec: RunSpec, denied: list[str]) -> None:
        super().__init__(name="wasm-guest", daemon=True)
        self.engine, self.store, self.kind, self.code, self.spec, self.denied = engine, store, kind, code, spec, denied
        self.result: tuple[str, int | str] | None = None
        self.memory: Any = None
        self.finished = False
        self.ended_fd = -1  # this thread's own: written once the guest has ended (wakes its supervisor), closed

    def run(self) -> None:
        import wasmtime

        try:
            if self.kind == "component":
                self.result = ("exit", self._component())
            else:
                self.result = ("exit", self._module())
        except wasmtime.ExitTrap as exc:
            self.result = ("exit", exc.code)
        except ExecutorError as exc:
            self.result = ("error", str(exc))
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self.result = ("trap", _trap_reason(str(exc)))
        except Exception as exc:  # a host function raised: a trap as far as the guest is concerned
            self.result = ("trap", f"{type(exc).__name__}: {exc}")
        finally:
            self.finished = True
            if self.ended_fd >= 0:
                with contextlib.suppress(OSError):  # a supervisor that gave up on this thread has closed its end
                    os.write(self.ended_fd, ENDED)
                os.close(self.ended_fd)

    def _module(self) -> int:
        import wasmtime

        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        if self.denied:
            linker.allow_shadowing = True
            for imp in self.code.imports:
                if f"{imp.module}.{imp.name}" in self.denied and isinstance(imp.type, wasmtime.FuncType):
                    linker.define_func(imp.module, imp.name, imp.type, _denied_call(f"{imp.module}.{imp.name}"))
        instance = self._instantiate(linker)
        exports = instance.exports(self.store)
        memory = exports.get("memory")
        if isinstance(memory, wasmtime.Memory):
            self.memory = memory
        start = exports.get(self.spec.function or "_start")
        if not isinstance(start, wasmtime.Func):
            raise ExecutorError("the module has no _start export: it is a library (reactor), not a command")
        start(self.store)
        return 0

    def _component(self) -> int:
        from wasmtime import component

        linker = component.Linker(self.engine)
        linker.add_wasip2()
        instance = self._instantiate(linker)
        if self.spec.function is not None:  # a plain function export (`path#func`), called with no arguments
            instance.get_func(self.store, self.spec.function)(self.store)
            return 0
        names = [n for n in self.code.type.exports(self.engine) if n.startswith("wasi:cli/run@")]
        if not names:
            raise ExecutorError("the component does not export wasi:cli/run, so it is not a command")
        run_index = instance.get_export_index(self.store, names[0])
        func = instance.get_func(self.store, instance.get_export_index(self.store, "run", run_index))
        result = func(self.store)
        return 0 if getattr(result, "tag", "ok") == "ok" else 1

    def _instantiate(self, linker: Any) -> Any:
        import wasmtime

        try:
            return linker.instantiate(self.store, self.code)
        except wasmtime.WasmtimeError as exc:
            text = _one_line(str(exc))
            if self.spec.memory_limit is not None and "memory" in text and "limit" in text.lower():
                raise wasmtime.WasmtimeError(f"memory limit exceeded ({_mib(self.spec.memory_limit)})") from None
            raise ExecutorError(f"cannot instantiate the guest: {text}") from None


def _supervise(guest: _Guest, engine: Any, spec: RunSpec, hard_stop: HardStop | None) -> Outcome:
    """Run the guest thread; stop it on deadline or signal; classify how it ended.

    The supervisor sleeps until something happens: the guest's end (its thread writes a pipe), a
    signal (the pipe is also the process's wakeup fd, where the C-level handler writes the signal's
    number before Python's handler runs), the deadline, or the end of the grace a stopped guest has.
    An idle container process then wakes for nothing (it polled 50 times a second before: ~1 % of a
    core for each sleeping guest). poll(2), which the container's seccomp allowlist has (not select)."""
    stop: dict[str, Any] = {}

    def interrupt(reason: str, code: int) -> None:
        if not stop:
            stop.update(reason=reason, code=code, at=time.monotonic())
            engine.increment_epoch()

    ended_r, ended_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    woken = select.poll()
    woken.register(ended_r, select.POLLIN)
    previous: dict[int, Any] = {}
    previous_wakeup = None
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous[signum] = signal.signal(signum, lambda s, _f: interrupt("signal", 128 + s))
            previous_wakeup = signal.set_wakeup_fd(ended_w, warn_on_full_buffer=False)
        deadline = time.monotonic() + spec.timeout if spec.timeout else None
        guest.ended_fd = os.dup(ended_w)  # the thread's: it may outlive this function (left blocked)
        try:
            guest.start()
        except BaseException:
            os.close(guest.ended_fd)
            raise
        while not guest.finished:
            now = time.monotonic()
            wait: float | None = None
            if stop:
                wait = stop["at"] + GRACE_SECONDS - now
                if wait <= 0:  # blocked in a host call the epoch cannot interrupt
                    if hard_stop is not None:
                        hard_stop(_stopped(stop, spec))
                    break
            elif deadline is not None:
                wait = deadline - now
                if wait <= 0:
                    interrupt("timeout", EXIT_KILLED)
                    continue
            woken.poll(None if wait is None else max(1, int(wait * 1000) + 1))
            with contextlib.suppress(BlockingIOError):
                os.read(ended_r, 4096)
        else:
            guest.join()
    finally:
        if previous_wakeup is not None:
            signal.set_wakeup_fd(previous_wakeup)
        for number, handler in previous.items():
            signal.signal(number, handler)
        os.close(ended_r)
        os.close(ended_w)
    if stop:
        return _stopped(stop, spec)
    assert guest.result is not None
    kind, value = guest.result
    if kind == "exit":
        return Outcome(int(value) & 0xFF if isinstance(value, int) else 1, "exit")
    if kind == "error":
        raise ExecutorError(str(value))
    message = _one_line(str(value))
    if spec.fuel is not None and "fuel" in message:
        return Outcome(EXIT_TRAP, "trap", f"guest trapped: all fuel consumed ({spec.fuel} units)")
    if spec.memory_limit is not None and message.startswith("memory limit exceeded"):
        return Outcome(EXIT_TRAP, "oom", f"guest trapped: {message}")
    if spec.memory_limit is not None and _memory_exhausted(guest, spec.memory_limit):
        return Outcome(EXIT_TRAP, "oom", f"guest trapped: memory limit exceeded ({_mib(spec.memory_limit)}): "
                                         f"{message}")
    return Outcome(EXIT_TRAP, "trap", f"guest trapped: {message}")


def _stopped(stop: dict[str, Any], spec: RunSpec) -> Outcome:
    if stop["reason"] == "timeout":
        return Outcome(EXIT_KILLED, "timeout", f"guest stopped: timeout after {spec.timeout:g}s")
    return Outcome(stop["code"], "signal", f"guest stopped by signal {stop['code'] - 128}")


def _memory_exhausted(guest: _Guest, limit: int) -> bool:
    """Whether the guest's memory stands near the cap: within one growth step an allocator would ask
    for (an eighth of the cap, at least 2 MiB), so that its last growth was most likely refused."""
    if guest.memory is None:
        return False
    try:
        return guest.memory.size(guest.store) * 65536 > limit - max(limit // 8, 2 << 20)
    except Exception:
        return False


def _denied_call(name: str):  # type: ignore[no-untyped-def]
    def trap(*_args: Any) -> None:
        import wasmtime

        raise wasmtime.Trap(f"WASI call {name} is denied by the syscall policy")

    return trap


def _check_export(engine: Any, kind: str, code: Any, name: str) -> None:
    """A `path#name` entrypoint must name a function the guest exports that takes no arguments."""
    import wasmtime

    if kind == "component":
        from wasmtime import component

        exports: dict[str, Any] = {n: item.ty for n, item in code.type.exports(engine).items()}
        function_type: type = component.FuncType
    else:
        exports = {e.name: e.type for e in code.exports}
        function_type = wasmtime.FuncType
    found = exports.get(name)
    if found is None:
        raise ExecutorError(f"the guest has no export {name!r}; it exports: {', '.join(sorted(exports)) or 'nothing'}")
    is_function = isinstance(found, function_type)  # (not in the `if`: `found` stays Any for mypy)
    if not is_function:
        raise ExecutorError(f"export {name!r} is not a function")
    if list(found.params):
        raise ExecutorError(f"export {name!r} takes arguments; an entrypoint function must take none")


WASIP2_PROVIDED = {
    "wasi:cli": {"environment", "exit", "stdin", "stdout", "stderr", "terminal-input", "terminal-output",
                 "terminal-stdin", "terminal-stdout", "terminal-stderr"},
    "wasi:clocks": {"monotonic-clock", "wall-clock"},
    "wasi:filesystem": {"types", "preopens"},
    "wasi:io": {"error", "poll", "streams"},
    "wasi:random": {"random", "insecure", "insecure-seed"},
    "wasi:sockets": {"network", "instance-network", "udp", "udp-create-socket", "tcp", "tcp-create-socket",
                     "ip-name-lookup"},
}
"""What the component linker provides (`add_wasip2`): WASI 0.2's interfaces, at any 0.2.x version."""


def _check_provided(engine: Any, code: Any) -> None:
    """A component importing what the engine does not provide (`wasi:http/*`, a custom interface) could
    not be instantiated: refuse it now, naming what is missing, not when it is started."""
    missing = []
    for name in code.type.imports(engine):
        interface, _, version = name.partition("@")
        package, _, short = interface.rpartition("/")
        if short not in WASIP2_PROVIDED.get(package, ()) or not version.startswith("0.2."):
            missing.append(name)
    if missing:
        raise ExecutorError(f"the guest imports {', '.join(sorted(missing))}, which this engine does not provide "
                            "(it provides WASI 0.2: cli, clocks, filesystem, io, random, sockets)")


def _imports(engine: Any, kind: str, code: Any) -> list[tuple[str, str]]:
    if kind == "component":
        return [(name, "") for name in code.type.imports(engine)]
    return [(imp.module, imp.name or "") for imp in code.imports]


def _kind(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            kind = wasm.sniff(f.read(8))
    except OSError as exc:
        raise ExecutorError(f"{path}: {exc.strerror}") from None
    if kind is None:
        raise ExecutorError(f"{path} is not WebAssembly (no \\0asm header); run it with a Linux runtime such as runc")
    return kind


def _code_class(kind: str) -> Any:
    if kind == "component":  # wasmtime.component costs ~10 ms of imports: only for components
        from wasmtime import component

        return component.Component
    import wasmtime

    return wasmtime.Module


def _settings(fuel: bool) -> str:
    return f"epoch=1,fuel={int(fuel)}"


def _host_path(guest: str, preopens: list[tuple[Path, str, bool]]) -> tuple[Path, bool] | None:
    """The host directory behind a guest path, through the longest matching preopen; symlinks on the
    way are followed within that preopen only, as the guest would follow them."""
    best: tuple[Path, bool] | None = None
    best_len = -1
    for host, prefix, mutable in preopens:
        norm = prefix.rstrip("/") or "/"
        if (guest == norm or guest.startswith(norm.rstrip("/") + "/")) and len(norm) > best_len:
            try:
                best, best_len = (inroot.resolve(host, guest[len(norm):]), mutable), len(norm)
            except (OSError, ValueError):
                best, best_len = None, len(norm)
    if best is not None and not best[0].is_dir():
        return None
    return best


def _trap_reason(text: str) -> str:
    """The cause of a trap without wasmtime's backtrace: `wasm trap: call stack exhausted`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Caused by:" in lines:
        lines = lines[lines.index("Caused by:") + 1:]
    lines = [line for line in lines if not line.startswith("error while executing")
             and not line[:1].isdigit()]
    return "; ".join(lines) or text.strip()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:500]
