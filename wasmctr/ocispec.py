"""From an OCI runtime bundle (`config.json`, as containerd and runc callers write it) to a `RunSpec`.

- `root.path` (relative to the bundle) is the guest's `/`, read-only unless `root.readonly` is false
  and it is granted as a volume; `process.args[0]` resolved in it is the wasm program;
- `process.env`, `process.args`, `process.cwd`;
- `mounts` of type `bind` (or with a `bind`/`rbind` option) become preopens, `ro` honoured; kernel
  filesystems (proc, sysfs, devpts, tmpfs of /dev...) have no meaning for a wasm guest and are skipped;
- `linux.resources.memory.limit` is the linear-memory cap;
- annotations `wasmctr.io/timeout`, `wasmctr.io/fuel`, `wasmctr.io/network` (`host`),
  `wasmctr.io/deny-wasi`, `wasmctr.io/allow-wasi`, `wasmctr.io/syscall-policy` carry the policy.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from . import inroot, wasm
from .errors import ExecutorError, WasmctrError
from .executor import Mount, RunSpec
from .launch import parse_duration
from .policy import Policy

ANNOTATION_PREFIX = "wasmctr.io/"
KERNEL_FILESYSTEMS = {"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "tmpfs", "shm"}


def rootfs_of(bundle: Path, config: dict[str, Any]) -> Path:
    root = (config.get("root") or {}).get("path") or "rootfs"
    return (bundle / root).resolve() if not Path(root).is_absolute() else Path(root)


def program_of(bundle: Path, config: dict[str, Any]) -> Path | None:
    """The host path of `process.args[0]` inside the rootfs, if it is a file there."""
    process = config.get("process") or {}
    args = process.get("args") or []
    if not args:
        return None
    return inroot.is_file(rootfs_of(bundle, config), posixpath.join(process.get("cwd") or "/", args[0]))


def is_wasm(bundle: Path, config: dict[str, Any]) -> bool:
    program = program_of(bundle, config)
    if program is None:
        return False
    with open(program, "rb") as f:
        return wasm.sniff(f.read(8)) is not None


def spec_from_bundle(bundle: Path, config: dict[str, Any]) -> RunSpec:
    process = config.get("process") or {}
    args = list(process.get("args") or [])
    program = program_of(bundle, config)
    if program is None:
        raise ExecutorError(f"process.args[0] {args[0] if args else '(none)'!r} is not a file in the rootfs")
    if not is_wasm(bundle, config):
        raise ExecutorError(f"{args[0]} is not WebAssembly; this container needs a Linux runtime such as runc")
    annotations = config.get("annotations") or {}
    mounts = []
    for m in config.get("mounts") or []:
        options = m.get("options") or []
        if m.get("type") in KERNEL_FILESYSTEMS and "bind" not in options and "rbind" not in options:
            continue
        if m.get("type") != "bind" and "bind" not in options and "rbind" not in options:
            continue
        source = Path(m.get("source", ""))
        if source.is_dir():
            mounts.append(Mount(source.resolve(), posixpath.normpath(m["destination"]), "ro" in options))
    memory = (((config.get("linux") or {}).get("resources") or {}).get("memory") or {}).get("limit")
    try:
        timeout = annotations.get(ANNOTATION_PREFIX + "timeout")
        fuel = annotations.get(ANNOTATION_PREFIX + "fuel")
        policy = Policy.from_flags(annotations.get(ANNOTATION_PREFIX + "network") == "host",
                                   [annotations.get(ANNOTATION_PREFIX + "deny-wasi", "")],
                                   [annotations.get(ANNOTATION_PREFIX + "allow-wasi", "")],
                                   annotations.get(ANNOTATION_PREFIX + "syscall-policy", "refuse"))
        return RunSpec(
            wasm=program, args=args, env=list(process.get("env") or []), cwd=process.get("cwd") or "/",
            rootfs=rootfs_of(bundle, config), mounts=mounts,
            memory_limit=int(memory) if memory and int(memory) > 0 else None,
            timeout=parse_duration(timeout) if timeout else None, fuel=int(fuel) if fuel else None, policy=policy)
    except (WasmctrError, ValueError) as exc:
        raise ExecutorError(f"bad wasmctr annotation: {exc}") from None
