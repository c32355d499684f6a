"""`wasmctr node doctor`: whether this node can run a wasm pod, one check per line, each failure with its fix.

The checks: the kernel features the host walls use (cgroups v1 or v2, seccomp with libseccomp, Landlock,
pidfds, openat2), containerd's version, whether its config names our runtimes with their annotations
and whether their shim binaries are there, a real container through containerd's API (`ctr`: a tiny
wasm image imported into a namespace of its own, run with our runtime, then removed with the
namespace), the shim template's state and the compile cache's size and integrity. A check fails only
where a wasm pod could not run; one that merely weakens a wall or costs time (no Landlock, no openat2, a
damaged cache entry, which the next run rebuilds) warns.

WASMCTR_DOCTOR_ASSUME_MISSING (a comma-separated list of `seccomp`, `landlock`, `pidfd`, `openat2`) makes
the doctor report those kernel features missing without probing them: a node that lacks one cannot be
made on demand, so the tests show the verdict and fix this way.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmctr.errors import WasmctrError
from wasmctr.node import runtimes, tomledit

OK, WARN, FAIL = "ok", "warn", "FAIL"
ASSUME_MISSING = "WASMCTR_DOCTOR_ASSUME_MISSING"
SMOKE_NAMESPACE = "wasmctr-doctor"
SMOKE_OUTPUT = "wasmctr doctor: the shim ran a guest"
# a module that prints SMOKE_OUTPUT and exits 0
_SMOKE_WAT = f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{SMOKE_OUTPUT}\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {len(SMOKE_OUTPUT) + 1}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
SYS_OPENAT2 = 437  # the same number on every architecture


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.verdict:<4}  {self.name:<19} {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")


def examine(config: Path, address: Path) -> list[Check]:
    """Every check, in the order a node is set up (kernel, containerd, config, shim, caches)."""
    parsed, config_check = _config(config)
    return [_cgroups(), _seccomp(), _landlock(), _pidfd(), _openat2(), _containerd(), config_check,
            *_binaries(parsed), _smoke(address, parsed), _template(), _compile_cache()]


def _missing(feature: str) -> bool:
    return feature in os.environ.get(ASSUME_MISSING, "").replace(" ", "").split(",")


def _cgroups() -> Check:
    kinds = {fields[-3]: fields[4] for fields in
             (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines())
             if fields[-3] in ("cgroup", "cgroup2")}
    if "cgroup" in kinds:
        hybrid = f" (hybrid: cgroup2 at {kinds['cgroup2']})" if "cgroup2" in kinds else ""
        return Check("cgroups", OK, f"v1{hybrid}")
    if "cgroup2" in kinds:
        return Check("cgroups", OK, f"v2 at {kinds['cgroup2']}")
    return Check("cgroups", FAIL, "no cgroup hierarchy is mounted: pod limits and stats need one",
                 "mount cgroup2 at /sys/fs/cgroup (as systemd does)")


def _seccomp() -> Check:
    fix = "a kernel with CONFIG_SECCOMP_FILTER, and libseccomp2 (apt-get install libseccomp2)"
    if _missing("seccomp"):
        return Check("seccomp", FAIL, f"unavailable ({ASSUME_MISSING})", fix)
    status = Path("/proc/self/status").read_text()
    if "\nSeccomp:" not in status:
        return Check("seccomp", FAIL, "the kernel has no seccomp: the shim confines every guest with a filter", fix)
    try:
        from wasmctr.sandbox import libseccomp  # noqa: F401  (opening libseccomp.so.2 as the shim does)
    except OSError as exc:
        return Check("seccomp", FAIL, f"libseccomp cannot be loaded ({exc})", fix)
    return Check("seccomp", OK, "filters, libseccomp.so.2")


def _landlock() -> Check:
    from wasmctr.sandbox import landlock

    abi = 0 if _missing("landlock") else landlock.abi()
    if abi:
        return Check("landlock", OK, f"ABI {abi}")
    return Check("landlock", WARN, "none: guests run without the filesystem wall below WASI",
                 "Linux 5.13+ with landlock in the `lsm=` boot parameter")


def _pidfd() -> Check:
    fix = "Linux 5.3+ (the shim signals and waits for its containers through pidfds)"
    if _missing("pidfd"):
        return Check("pidfd", FAIL, f"unavailable ({ASSUME_MISSING})", fix)
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (OSError, AttributeError) as exc:
        return Check("pidfd", FAIL, f"pidfd_open: {exc}", fix)
    return Check("pidfd", OK, "pidfd_open")


def _openat2() -> Check:
    fix = "Linux 5.6+ (without it, paths in a rootfs are resolved by a slower walk)"
    if _missing("openat2"):
        return Check("openat2", WARN, "unavailable", fix)

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    libc = ctypes.CDLL(None, use_errno=True)
    how = OpenHow(os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, 0x10)  # RESOLVE_IN_ROOT
    fd = libc.syscall(SYS_OPENAT2, -100, b"/", ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))  # AT_FDCWD
    if fd < 0:
        return Check("openat2", WARN, f"openat2: {os.strerror(ctypes.get_errno())}", fix)
    os.close(fd)
    return Check("openat2", OK, "RESOLVE_IN_ROOT")


def _containerd() -> Check:
    version = runtimes.containerd_version()
    fix = "install containerd 1.6 or later (apt-get install containerd)"
    if version is None:
        return Check("containerd", FAIL, "no `containerd` on PATH answers --version", fix)
    if (runtimes.major(version), int(version.split(".")[1])) < (1, 6):
        return Check("containerd", FAIL, f"{version}: the shim needs 1.6 or later", fix)
    return Check("containerd", OK, version)


def _config(config: Path) -> tuple[dict[str, Any], Check]:
    """The config's runtimes table (empty where it cannot be read) and the verdict on it."""
    fix = f"wasmctr node install --config {config}, then restart containerd"
    try:
        parsed = tomledit.parse(config.read_text(), str(config))
    except (OSError, UnicodeDecodeError) as exc:
        return {}, Check("config", FAIL, f"{config}: {getattr(exc, 'strerror', None) or exc}", fix)
    except WasmctrError as exc:
        return {}, Check("config", FAIL, str(exc), f"correct {config}")
    version = parsed.get("version")
    if version not in runtimes.CRI_PLUGIN:
        return {}, Check("config", FAIL, f"{config}: config version {version!r} (2 or 3 expected)", fix)
    table = tomledit.dig(parsed, runtimes.runtimes_path(version))
    for runtime in runtimes.RUNTIMES:
        entry = table.get(runtime.name)
        if not isinstance(entry, dict) or entry.get("runtime_type") != runtime.runtime_type:
            return table, Check("config", FAIL, f"{config} has no runtime {runtime.name} "
                                                f"({runtime.runtime_type})", fix)
        for key in ("pod_annotations", "container_annotations"):
            if not set(runtimes.ANNOTATIONS) <= set(entry.get(key) or []):
                return table, Check("config", FAIL, f"runtime {runtime.name} lacks {key} = "
                                                    f"{runtimes.ANNOTATIONS}: pods' wasmctr.io/* policy would not "
                                                    "reach the shim", fix)
    return table, Check("config", OK, f"{config} (version {version}) names runtimes "
                                      f"{', '.join(r.name for r in runtimes.RUNTIMES)} with their annotations")


def _binaries(table: dict[str, Any]) -> list[Check]:
    """Each shim binary, where containerd looks for it: the entry's runtime_path, else its PATH."""
    checks = []
    for runtime in runtimes.RUNTIMES:
        entry = table.get(runtime.name) or {}
        path = entry.get("runtime_path") or shutil.which(runtime.binary) or ""
        fix = "wasmctr node install (links the shims into /usr/local/bin)"
        if not path:
            checks.append(Check(f"shim {runtime.name}", FAIL, f"{runtime.binary} is not on PATH", fix))
        elif not os.access(path, os.X_OK):
            checks.append(Check(f"shim {runtime.name}", FAIL, f"{path} is missing or not executable", fix))
        else:
            checks.append(Check(f"shim {runtime.name}", OK, str(Path(path).resolve())))
    return checks


def _smoke(address: Path, table: dict[str, Any]) -> Check:
    """A wasm container through containerd's task API with our runtime, removed after."""
    if shutil.which("ctr") is None:
        return Check("smoke container", FAIL, "no `ctr` on PATH", "install containerd's ctr")
    if not address.is_socket():
        return Check("smoke container", FAIL, f"no containerd listens at {address}",
                     "start containerd (systemctl start containerd), or give its --address")
    runtime = (table.get("wasmctr") or {}).get("runtime_path") or runtimes.RUNTIMES[0].runtime_type

    def ctr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(address), "--namespace", SMOKE_NAMESPACE, *args],
                              capture_output=True, text=True, timeout=120)

    container = f"wasmctr-doctor-{os.getpid()}"
    ref = f"docker.io/wasmctr/doctor-smoke:{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="wasmctr-doctor-") as scratch:
            archive = _smoke_image(Path(scratch), ref)
            imported = ctr("image", "import", "--platform", "wasi/wasm", str(archive))
            if imported.returncode:
                return Check("smoke container", FAIL, f"ctr image import: {_last_line(imported)}",
                             "see containerd's log")
        ran = ctr("run", "--rm", "--runtime", runtime, "--platform", "wasi/wasm", ref, container)
        if ran.returncode or SMOKE_OUTPUT not in ran.stdout:
            return Check("smoke container", FAIL, f"ctr run with {runtime}: {_last_line(ran)}",
                         "see containerd's log (journalctl -u containerd) for the shim's error")
        return Check("smoke container", OK, f"a wasm container ran through containerd with {runtime}")
    finally:
        ctr("task", "kill", "--signal", "SIGKILL", container)
        ctr("container", "rm", container)
        ctr("image", "rm", "--sync", ref)  # its content and snapshots too: a namespace goes only empty
        subprocess.run(["ctr", "--address", str(address), "namespaces", "rm", SMOKE_NAMESPACE],
                       capture_output=True, timeout=60)


def _smoke_image(scratch: Path, ref: str) -> Path:
    """An OCI archive of a compat image whose module prints SMOKE_OUTPUT, built in a store of its own."""
    import wasmtime

    from wasmctr import api
    from wasmctr.image.store import Store

    module = scratch / "smoke.wasm"
    module.write_bytes(wasmtime.wat2wasm(_SMOKE_WAT))
    store = Store(scratch / "store")
    api.build(module, ref, store=store)
    archive = scratch / "smoke.tar"
    api.save(ref, archive, store=store)
    return archive


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _template() -> Check:
    """The shim's template processes: the listening sockets in its socket directory (/proc/net/unix)."""
    directory = Path(os.environ.get("WASMCTR_SHIM_SOCKET_DIR", "/run/wasmctr-shim"))
    if not directory.exists():
        return Check("shim template", OK, f"not started yet ({directory} is made by the first wasm container)")
    status = directory.lstat()
    if directory.is_symlink() or status.st_uid != os.geteuid():
        return Check("shim template", FAIL, f"{directory} is a link or another user's: the shim refuses it",
                     f"rm -r {directory} (the shim makes it again, 0700)")
    listening = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: a listening socket
            listening.add(fields[7])
    sockets = sorted(str(p) for p in directory.glob("template-*.sock"))
    live = [s for s in sockets if s in listening]
    if not live:
        return Check("shim template", OK, "not running (the next wasm container starts it)")
    stale = len(sockets) - len(live)
    return Check("shim template", OK, f"{len(live)} running in {directory}" +
                 (f", {stale} stale socket(s) the next start replaces" if stale else ""))


def _compile_cache() -> Check:
    from wasmctr.image.home import compile_cache_dir, store_root
    from wasmctr.running.compile_cache import MAX_VARIABLE, CompileCache

    directory = compile_cache_dir(store_root())
    try:
        survey = CompileCache(directory).survey()
    except WasmctrError as exc:
        return Check("compile cache", FAIL, str(exc), f"set {MAX_VARIABLE} to a size (512m, 4g) or unset it")
    detail = (f"{survey.entries} entries, {survey.size >> 20} MiB of {survey.max_bytes >> 20} MiB in "
              f"{directory}")
    if survey.damaged:
        return Check("compile cache", WARN, f"{detail}; {len(survey.damaged)} damaged (each is recompiled at its "
                                            "next run)", f"rm {directory}/<key>.* for " +
                     ", ".join(key[:12] for key in survey.damaged[:3]))
    if survey.size > survey.max_bytes:
        return Check("compile cache", WARN, f"{detail}: over its cap until the next entry is written",
                     f"raise {MAX_VARIABLE}, or wasmctr image prune --cache (entries are rebuilt)")
    return Check("compile cache", OK, detail)

