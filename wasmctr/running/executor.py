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
  interruption, and an optional fuel budget;
- code: compiled with the spec's engine settings (wasm features, optimisation level: `engine.py`), one
  engine per distinct setting, and cached under a key that names them all.

The guest runs on a worker thread while the calling thread supervises: it turns a deadline or a signal
into an epoch interrupt (the guest traps at its next loop or call). A thread cannot be killed, so a
guest that sits in a blocking host call past the grace period can only end with its process: a caller
whose process exists for its guest passes `hard_stop` (`exit_process`), which is called then; the
Python API runs a guest with a deadline in a child interpreter for this (`isolated.py`).

What kind of guest it is (a command module, a command component, ...) is its world's business
(`worlds/world.py`): the executor loads the program, picks the world that matches it (`worlds/registry.py`)
and asks the world to check it and to run it on the guest thread; it holds no branch on a kind of guest.
Below the sandbox, the API and the CLI, beside the registry and building: it imports none of them
(pyproject.toml's `parts` import contract).
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
from wasmctr.image import inroot
from wasmctr.record import record
from wasmctr.running import policy as policies
from wasmctr.running.compile_cache import CompileCache, key
from wasmctr.running.engine import DEFAULT as DEFAULT_ENGINE
from wasmctr.running.engine import EngineSettings
from wasmctr.running.spec import RunSpec
from wasmctr.running.units import mib
from wasmctr.running.worlds import registry
from wasmctr.running.worlds.program import Program, format_of
from wasmctr.running.worlds.world import Guest, World

GRACE_SECONDS = 0.5
ENDED = b"\xff"  # what the guest thread writes when it ends (the supervisor then reads `finished`)
LOADED_CODE_LIMIT = 64
EXIT_TRAP = 134
EXIT_KILLED = 137


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
    """A guest ready to start: its spec, the world that runs it, its loaded program, the imports the
    policy denies (linked to traps), and once `Executor.open` has made it, its store, whose WASI
    context holds the preopened directories."""

    spec: RunSpec
    world: World
    program: Program
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
        self._engines: dict[tuple[EngineSettings, bool], Any] = {}  # per settings, and fuel or not
        self._loaded: dict[str, Program] = {}
        self._digests: dict[tuple[int, int, int, int], str] = {}
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
        (and every guest those fork) shares the engine's pages instead of building its own. Only the
        default settings' engine: a workload with settings of its own makes its engine at its first run."""
        self._engine(DEFAULT_ENGINE, False)

    def precompile(self, path: Path, digest: str | None = None, fuel: bool = False,
                   settings: EngineSettings = DEFAULT_ENGINE) -> bool:
        """Compile (or load from the cache) ahead of the first run and keep the code loaded, so that a
        run in this process, or in a process forked from it, starts at once and shares the code pages.
        False if nothing had to be compiled."""
        return self._code(path, digest, settings, fuel)[1]

    def load(self, path: Path, digest: str | None = None) -> tuple[Any, Any]:
        """The default engine and the guest's code (loaded, cached), for a caller that links the guest
        itself: the HTTP host (`wasmctr.running.http`) serves a proxy component through its own linker."""
        program = self._code(path, digest, DEFAULT_ENGINE, False)[0]
        return program.engine, program.code

    def run(self, spec: RunSpec, hard_stop: HardStop | None = None) -> Outcome:
        return self.start(self.prepare(spec), hard_stop)

    def prepare(self, spec: RunSpec) -> Prepared:
        """Everything about a run that does not need the guest's own store: the code, loaded, its imports
        checked against the policy and against what the engine provides, its entrypoint found (a guest
        that could not run fails here, at Create, as runwasi's does). The shims prepare in the
        long-lived process, before forking the container: the container process then only creates the
        store and starts, and shares, rather than copies, the pages this work touched."""
        program, _ = self._code(spec.wasm, spec.wasm_digest, spec.engine, spec.fuel is not None)
        world = registry.select(program, spec)
        verdict = policies.check(spec.policy, program.imports())
        # what the policy denies, what the world cannot link, an entrypoint it lacks: fail now
        world.check(program, spec, verdict.denied)
        return Prepared(spec, world, program, list(verdict.denied))

    def open(self, prepared: Prepared) -> Prepared:
        """The guest with its store made and its preopens (rootfs, mounts, /dev, working directory) open,
        stdio as its spec says at this point. A container process opens them while it is still
        privileged, as runc enters the rootfs as root, and runs the guest after it has become the
        spec's user, who may not be able to reach the bundle's path (a 0700 directory above it)."""
        import wasmtime

        spec = prepared.spec
        store = wasmtime.Store(prepared.program.engine)
        if spec.memory_limit is not None:
            store.set_limits(memory_size=spec.memory_limit)
        if spec.fuel is not None:
            store.set_fuel(spec.fuel)
        store.set_epoch_deadline(1)
        store.set_wasi(self._wasi(spec))
        return Prepared(spec, prepared.world, prepared.program, prepared.denied, store)

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
        guest = _GuestThread(opened.world, Guest(opened.program, opened.store, opened.spec, opened.denied))
        return _supervise(guest, opened.program.engine, opened.spec, hard_stop)

    # -- compiling ---------------------------------------------------------------------------------

    def _engine(self, settings: EngineSettings, fuel: bool) -> Any:
        """The engine for `settings` (checked by `EngineSettings.overlay`: wasmtime aborts on a refused one)."""
        import wasmtime

        with self._lock:
            if (settings, fuel) not in self._engines:
                self._engines[settings, fuel] = wasmtime.Engine(settings.configure(wasmtime.Config(), fuel))
            return self._engines[settings, fuel]

    def _code(self, path: Path, digest: str | None, settings: EngineSettings,
              fuel: bool) -> tuple[Program, bool]:
        """The guest's compiled code: already loaded, from the verified cache, or compiled now. A cache
        entry that wasmtime refuses to load (written by another wasmtime, or for other settings: wasmtime
        checks its version and features, not all settings) is a miss: it is compiled again and replaced."""
        program_format = format_of(path)
        engine = self._engine(settings, fuel)
        cache_key = key(digest or self._digest(path), settings.cache_text(fuel))
        with self._lock:
            if cache_key in self._loaded:
                return self._loaded[cache_key], False
        program: Program | None = None
        if self.cache is not None:
            with self.cache.entry(cache_key) as cached:
                if cached is not None:
                    try:
                        if self.map_cached_code:
                            program = program_format.deserialize_file(engine, cached)
                        else:
                            with open(cached, "rb") as f:
                                program = program_format.deserialize(engine, f.read())
                    except Exception:  # a verified entry from another engine build: rebuild it
                        self.cache.discard(cache_key)
        compiled = program is None
        if program is None:
            program = self._compile(engine, program_format, path, cache_key, settings)
        with self._lock:
            if len(self._loaded) >= LOADED_CODE_LIMIT:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[cache_key] = program
        return program, compiled

    def _digest(self, path: Path) -> str:
        """The file's sha256, remembered while the file is unchanged (same inode, size and mtime)."""
        st = path.stat()
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity not in self._digests:
            with open(path, "rb") as f:
                self._digests[identity] = digests.of_stream(f)[0]
        return self._digests[identity]

    def _compile(self, engine: Any, program_format: type[Program], path: Path, cache_key: str,
                 settings: EngineSettings) -> Program:
        import wasmtime

        try:
            program = program_format.compile(engine, path.read_bytes())
        except wasmtime.WasmtimeError as exc:
            under = f" with {settings.describe()}" if settings.describe() else ""  # a feature turned off, say
            raise ExecutorError(f"{path}: invalid WebAssembly{under}: {diagnostics.one_line(str(exc))}") from None
        if self.cache is not None:
            self.cache.save(cache_key, program.serialize())
        return program

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


class _GuestThread(threading.Thread):
    """The worker thread: the world runs the guest here; it records how the guest ended."""

    def __init__(self, world: World, guest: Guest) -> None:
        super().__init__(name="wasm-guest", daemon=True)
        self.world, self.guest = world, guest
        self.result: tuple[str, int | str] | None = None
        self.finished = False
        self.ended_fd = -1  # this thread's own: written once the guest has ended (wakes its supervisor), closed

    def run(self) -> None:
        import wasmtime

        try:
            self.result = ("exit", self.world.run(self.guest))
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


def _supervise(guest: _GuestThread, engine: Any, spec: RunSpec, hard_stop: HardStop | None) -> Outcome:
    """Run the guest thread; stop it on deadline or signal; classify how it ended.

    The supervisor sleeps until something happens: the guest's end (its thread writes a pipe), a
    signal (the pipe is also the process's wakeup fd, where the C-level handler writes the signal's
    number before Python's handler runs), the deadline, or the end of the grace a stopped guest has.
    An idle container process then wakes for nothing (it polled 50 times a second before: ~1 % of a
    core for each sleeping guest). poll(2), which the container's seccomp allowlist has (not select)."""
    stop: dict[str, Any] = {}

    def interrupt(reason: str, code: int) -> None:
        if not stop:
            stop.update(reason=reason, code=code, at=time.monotonic(), grace=GRACE_SECONDS)
            engine.increment_epoch()

    def signalled(signum: int) -> None:
        """A command is interrupted; a world that stops on its own (a server draining) is asked to. Only
        the first signal counts: one that comes while `world.stop` runs (a process group signalled twice,
        Ctrl-C pressed twice) runs this handler inside it, and must not ask again (its locks are held)."""
        if stop or guest.guest.signals:
            return
        guest.guest.signals.append(signum)
        grace = guest.world.stop(guest.guest, signum)
        if grace is None:
            interrupt("signal", 128 + signum)
        else:
            stop.update(reason="drain", code=128 + signum, at=time.monotonic(), grace=grace)

    ended_r, ended_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    woken = select.poll()
    woken.register(ended_r, select.POLLIN)
    previous: dict[int, Any] = {}
    previous_wakeup = None
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous[signum] = signal.signal(signum, lambda s, _f: signalled(s))
            previous_wakeup = signal.set_wakeup_fd(ended_w, warn_on_full_buffer=False)
        lifetime = guest.world.lifetime(spec)
        deadline = time.monotonic() + lifetime if lifetime else None
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
                wait = stop["at"] + stop["grace"] - now
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
    if stop and (stop["reason"] != "drain" or not guest.finished):
        return _stopped(stop, spec)
    assert guest.result is not None
    kind, value = guest.result
    if kind == "exit":
        return Outcome(int(value) & 0xFF if isinstance(value, int) else 1, "exit")
    if kind == "error":
        raise ExecutorError(str(value))
    message = diagnostics.one_line(str(value))
    if spec.fuel is not None and "fuel" in message:
        return Outcome(EXIT_TRAP, "trap", f"guest trapped: all fuel consumed ({spec.fuel} units)")
    if spec.memory_limit is not None and message.startswith("memory limit exceeded"):
        return Outcome(EXIT_TRAP, "oom", f"guest trapped: {message}")
    if spec.memory_limit is not None and _memory_exhausted(guest, spec.memory_limit):
        return Outcome(EXIT_TRAP, "oom", f"guest trapped: memory limit exceeded ({mib(spec.memory_limit)}): "
                                         f"{message}")
    return Outcome(EXIT_TRAP, "trap", f"guest trapped: {message}")


def _stopped(stop: dict[str, Any], spec: RunSpec) -> Outcome:
    if stop["reason"] == "timeout":
        return Outcome(EXIT_KILLED, "timeout", f"guest stopped: timeout after {spec.timeout:g}s")
    return Outcome(stop["code"], "signal", f"guest stopped by signal {stop['code'] - 128}")


def _memory_exhausted(thread: _GuestThread, limit: int) -> bool:
    """Whether the guest's memory stands near the cap: within one growth step an allocator would ask
    for (an eighth of the cap, at least 2 MiB), so that its last growth was most likely refused."""
    guest = thread.guest
    if guest.memory is None:
        return False
    try:
        return guest.memory.size(guest.store) * 65536 > limit - max(limit // 8, 2 << 20)
    except Exception:
        return False


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
