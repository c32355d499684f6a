"""From an image (or a bare `.wasm` file) and `docker run`-style flags to a `RunSpec`.

Docker's rules: arguments replace the image's Cmd, `--entrypoint` replaces its Entrypoint (and drops
its Cmd), `-w` replaces WorkingDir, `-e`/`--env-file` add to its Env. A compat image's layers are
unpacked once per manifest into `$WASMCTR_HOME/rootfs/` by the one safe extractor (`unpack`), and that
tree is the guest's read-only `/`; the entrypoint is found in it as the guest would find it (`inroot`).

An image's labels set defaults for its runs, below the flags: `io.wasmctr.wasm-features`,
`io.wasmctr.opt-level` (the engine's settings, `engine.py`), `io.wasmctr.fuel`, `io.wasmctr.memory` and
`io.wasmctr.timeout` (as `--fuel`, `-m`, `--timeout` write them). Each is checked before the guest
starts (by `build` too), and a label of ours that names no setting is an error, as a typo would be.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wasmctr.errors import ExecutorError, UsageError, parameter
from wasmctr.image import inroot, stored, wasm
from wasmctr.image.store import Store
from wasmctr.record import field, record
from wasmctr.running.engine import DEFAULT as DEFAULT_ENGINE
from wasmctr.running.engine import EngineSettings
from wasmctr.running.policy import Policy
from wasmctr.running.spec import Mount, RunSpec
from wasmctr.running.units import MIN_MEMORY, parse_duration, parse_size


@record
class RunOptions:
    """The `wasmctr run` flags, before they meet an image."""

    args: list[str] = field(default_factory=list)
    entrypoint: str | None = None
    workdir: str | None = None
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    memory: str | None = None
    timeout: str | None = None
    fuel: int | None = None
    policy: Policy = field(default_factory=Policy)
    wasm_features: str | None = None
    opt_level: str | None = None


LABEL_PREFIX = "io.wasmctr."
LABELS = ("wasm-features", "opt-level", "fuel", "memory", "timeout")  # after LABEL_PREFIX


@record(frozen=True)
class Labelled:
    """The run settings an image's labels set (None: not set)."""

    engine: EngineSettings = DEFAULT_ENGINE
    memory: int | None = None
    timeout: float | None = None
    fuel: int | None = None


def labelled(labels: Mapping[str, Any]) -> Labelled:
    """The run settings in an image's `io.wasmctr.*` labels, each checked (a UsageError names the label)."""
    ours: dict[str, str] = {}
    for name, value in labels.items():
        if not name.startswith(LABEL_PREFIX):
            continue
        if name.removeprefix(LABEL_PREFIX) not in LABELS:
            raise UsageError(f"label {name}: wasmctr reads no such label (it reads "
                             f"{', '.join(LABEL_PREFIX + s for s in LABELS)})")
        if not isinstance(value, str):
            raise UsageError(f"label {name}: its value is not a string")
        ours[name.removeprefix(LABEL_PREFIX)] = value

    def label(setting: str) -> str:
        return f"label {LABEL_PREFIX}{setting}"

    memory, timeout, fuel = (ours.get(s) for s in ("memory", "timeout", "fuel"))
    return Labelled(
        DEFAULT_ENGINE.overlay(ours.get("wasm-features"), ours.get("opt-level"),
                               {"features": label("wasm-features"), "opt_level": label("opt-level")}),
        None if memory is None else _memory(memory, label("memory")),
        None if timeout is None else _duration(timeout, label("timeout")),
        None if fuel is None else _fuel(_units(fuel, label("fuel")), label("fuel")))


def spec_for_file(path: Path, options: RunOptions, cleanup: list[Path]) -> RunSpec:
    """A bare module or component: argv[0] is its file name; no filesystem but what is granted."""
    spec = RunSpec(wasm=path, args=[path.name, *options.args], cwd=options.workdir or "/")
    return _apply(spec, options, [], Labelled(), cleanup)


def spec_for_image(store: Store, image: stored.Image, options: RunOptions, cleanup: list[Path]) -> RunSpec:
    if not image.is_wasm:
        raise ExecutorError(f"the image is a {image.format}; wasmctr runs wasm images (use runc or docker)")
    rc = image.runtime_config
    labels = labelled(image.labels)
    if image.format == "artifact":
        layer = image.wasm_layer
        assert layer is not None
        program = image.program or "/module.wasm"
        spec = RunSpec(wasm=store.blob_path(layer.digest), args=[program, *options.args],
                       cwd=options.workdir or "/", wasm_digest=layer.digest)
        return _apply(spec, options, [], labels, cleanup)
    entrypoint = [options.entrypoint] if options.entrypoint is not None else list(rc.get("Entrypoint") or [])
    cmd = options.args if options.args or options.entrypoint is not None else list(rc.get("Cmd") or [])
    argv = entrypoint + cmd
    if not argv:
        raise ExecutorError("no command: the image has no Entrypoint or Cmd and none was given")
    cwd = options.workdir or rc.get("WorkingDir") or "/"
    rootfs = store.rootfs_path(image.descriptor.digest)
    if not rootfs.is_dir():  # unpacked once per image: extraction (tar, gzip, zstd) is imported only for that
        from wasmctr.layers.unpack import unpack_image

        rootfs = unpack_image(store, image)
    host_program, function = inroot.is_file(rootfs, posixpath.join(cwd, argv[0])), None
    if host_program is None and "#" in argv[0]:  # runwasi's `/module.wasm#func`: run export `func`
        path, function = wasm.split_entrypoint(argv[0])
        host_program = inroot.is_file(rootfs, posixpath.join(cwd, path))
    if host_program is None:
        raise ExecutorError(f"entrypoint {argv[0]} is not a file in the image")
    spec = RunSpec(wasm=host_program, args=argv, cwd=cwd, rootfs=rootfs, function=function,
                   wasm_digest=stored.program_key(image, "/" + host_program.relative_to(rootfs).as_posix()))
    return _apply(spec, options, list(rc.get("Env") or []), labels, cleanup)


def _apply(spec: RunSpec, options: RunOptions, image_env: list[str], labels: Labelled,
           cleanup: list[Path]) -> RunSpec:
    """The flags over the image: each flag given replaces what the image's labels set."""
    spec.env = _env(image_env, options)
    spec.mounts = [_volume(v) for v in options.volumes]
    for guest in options.tmpfs:
        if not guest.startswith("/"):
            raise UsageError(f"{parameter('tmpfs')} {guest}: the path in the guest must be absolute")
        scratch = Path(tempfile.mkdtemp(prefix="wasmctr-tmpfs-"))
        cleanup.append(scratch)
        spec.mounts.append(Mount(scratch, guest, False))
    if spec.rootfs is not None and any(m.guest == "/" for m in spec.mounts):
        # as Docker refuses it: `/` is the image's root (a bare module has none: `/` may be granted, as
        # wasmtime's `--dir DIR::/`)
        raise UsageError("a volume cannot be mounted at / over an image's root; grant a directory below it")
    spec.memory_limit = _memory(options.memory, parameter("memory")) if options.memory else labels.memory
    spec.timeout = _duration(options.timeout, parameter("timeout")) if options.timeout else labels.timeout
    spec.fuel = _fuel(options.fuel, parameter("fuel")) if options.fuel is not None else labels.fuel
    spec.engine = labels.engine.overlay(options.wasm_features, options.opt_level,
                                        {"features": parameter("wasm_features"), "opt_level": parameter("opt_level")})
    spec.policy = options.policy
    return spec


def _memory(text: str, what: str) -> int:
    try:
        limit = parse_size(text)
    except UsageError as exc:
        raise UsageError(f"{what} {text}: {exc.args[0]}") from None
    if not MIN_MEMORY <= limit < 1 << 63:
        raise UsageError(f"{what} {text}: the memory limit must be at least 6 MiB (as Docker's) and below 8 EiB")
    return limit


def _duration(text: str, what: str) -> float:
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise UsageError(f"{what} {text}: {exc.args[0]}") from None


def _units(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected a whole number of units") from None


def _fuel(units: int, what: str) -> int:
    if units <= 0:
        raise UsageError(f"{what} must be a positive number of units")
    return units


def _env(image_env: list[str], options: RunOptions) -> list[str]:
    merged: dict[str, str] = {}
    for item in image_env:
        name, _, value = item.partition("=")
        merged[name] = value
    lines: list[str] = []
    for path in options.env_files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"{parameter('env_files')} {path}: {exc.strerror}") from None
        lines += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for item in lines + options.env:
        name, eq, value = item.partition("=")
        if not name or "\0" in item:
            raise UsageError(f"invalid environment variable {item!r}")
        if eq:
            merged[name] = value
        elif name in os.environ:
            merged[name] = os.environ[name]
    return [f"{k}={v}" for k, v in merged.items()]


def _volume(text: str) -> Mount:
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not parts[0] or not parts[1].startswith("/"):
        raise UsageError(f"{parameter('volumes')} {text}: expected HOST_DIR:/GUEST/PATH[:ro|:rw]")
    host = Path(parts[0]).expanduser()
    if not host.is_dir():
        raise UsageError(f"{parameter('volumes')} {text}: {host} is not a directory (WASI grants directories, "
                         "not files)")
    return Mount(host.resolve(), posixpath.normpath(parts[1]), mode == "ro")
