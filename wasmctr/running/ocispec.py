"""From an OCI runtime bundle (`config.json`, as containerd and runc callers write it) to a `RunSpec`.

- `root.path` (relative to the bundle) is the guest's `/`, read-only unless `root.readonly` is false
  and it is granted as a volume; `process.args[0]` resolved in it is the wasm program;
- `process.env`, `process.args`, `process.cwd`;
- `mounts` of type `bind` (or with a `bind`/`rbind` option) become preopens, `ro` honoured; kernel
  filesystems (proc, sysfs, devpts, tmpfs of /dev...) have no meaning for a wasm guest and are skipped;
- `linux.resources.memory.limit` is the linear-memory cap;
- annotations `wasmctr.io/timeout`, `wasmctr.io/fuel`, `wasmctr.io/network` (`host`),
  `wasmctr.io/deny-wasi`, `wasmctr.io/allow-wasi`, `wasmctr.io/syscall-policy` carry the policy, and
  `wasmctr.io/wasm-features`, `wasmctr.io/opt-level` the engine's settings (`engine.py`; an image's
  `io.wasmctr.*` labels never reach a runtime: containerd passes it no image config);
- a wasi:http proxy serves at `WASMTIME_HTTP_PROXY_SOCKET_ADDR` from `process.env` (default
  `0.0.0.0:8080`, as runwasi), with `wasmctr.io/http-workers`, `-max-body`, `-max-headers`,
  `-max-header-bytes`, `-max-concurrent`, `-header-timeout`, `-reuse` and `-access-log` (`true`), and the
  hosts its outgoing requests may reach with `wasmctr.io/network: host`: `wasmctr.io/allow-hosts` (`a.example,b:8080`).
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmctr.errors import ExecutorError, WasmctrError, parameter
from wasmctr.image import inroot, shape, wasm

if TYPE_CHECKING:  # the runtime CLI's start, state and delete read config.json through this module only
    from wasmctr.running.executor import RunSpec

ANNOTATION_PREFIX = "wasmctr.io/"
HANDLER_ANNOTATION = "run.oci.handler"  # crun's and CRI-O's
VARIANT_ANNOTATION = "module.wasm.image/variant"  # the compat image format's
ALLOW_HOSTS_ANNOTATION = ANNOTATION_PREFIX + "allow-hosts"  # a proxy's outgoing hosts: serving.parse_allow_hosts
CONTAINER_TYPE_ANNOTATION = "io.kubernetes.cri.container-type"  # containerd's CRI: `sandbox` or `container`
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # runc's, when env has none
KERNEL_FILESYSTEMS = {"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "tmpfs", "shm"}
# the run parameters an annotation sets, as an error about one names it (`WasmctrError.spelled`)
ANNOTATIONS = {"deny_wasi": ANNOTATION_PREFIX + "deny-wasi", "allow_wasi": ANNOTATION_PREFIX + "allow-wasi",
               "syscall_policy": ANNOTATION_PREFIX + "syscall-policy",
               "network=True": ANNOTATION_PREFIX + "network=host", "publish": "WASMTIME_HTTP_PROXY_SOCKET_ADDR",
               "allow_hosts": ALLOW_HOSTS_ANNOTATION,
               "wasm_features": ANNOTATION_PREFIX + "wasm-features", "opt_level": ANNOTATION_PREFIX + "opt-level"}
# a served component's settings (`serving.options`), each from an annotation of its own
HTTP_SETTINGS = ("workers", "max_body", "max_headers", "max_header_bytes", "max_concurrent", "header_timeout",
                 "reuse")
ANNOTATIONS.update({name: ANNOTATION_PREFIX + "http-" + name.replace("_", "-") for name in HTTP_SETTINGS})
PROXY_ADDRESS_VARIABLE = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"  # runwasi's: where a served component listens
PROXY_ADDRESS = "0.0.0.0:8080"  # runwasi's default


def load_config(bundle: Path) -> dict[str, Any]:
    """The bundle's `config.json`, with the type of every field read here checked, so that a malformed
    one fails Create in one line (a gRPC error text, a runtime CLI error), not as an AttributeError."""
    what = f"{bundle / 'config.json'}"
    try:
        config = json.loads((bundle / "config.json").read_bytes())
    except OSError as exc:
        raise ExecutorError(f"cannot read {what}: {exc.strerror}") from None
    except ValueError as exc:
        raise ExecutorError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ExecutorError(f"{what} is not a JSON object")
    root = shape.field(config, "root", dict, what, error=ExecutorError) or {}
    shape.field(root, "path", str, f"{what} root", error=ExecutorError)
    process = shape.field(config, "process", dict, what, error=ExecutorError) or {}
    for key in ("args", "env"):
        shape.strings(process, key, f"{what} process", error=ExecutorError)
    shape.field(process, "cwd", str, f"{what} process", error=ExecutorError)
    user = shape.field(process, "user", dict, f"{what} process", error=ExecutorError) or {}
    for key in ("uid", "gid"):
        shape.field(user, key, int, f"{what} process.user", error=ExecutorError)
    for gid in shape.field(user, "additionalGids", list, f"{what} process.user", error=ExecutorError) or []:
        if not isinstance(gid, int):
            raise ExecutorError(f"{what}: process.user.additionalGids must be numbers")
    capabilities = shape.field(process, "capabilities", dict, f"{what} process", error=ExecutorError) or {}
    for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        shape.strings(capabilities, key, f"{what} process.capabilities", error=ExecutorError)
    shape.string_map(config, "annotations", what, error=ExecutorError)
    for mount in shape.field(config, "mounts", list, what, error=ExecutorError) or []:
        if not isinstance(mount, dict):
            raise ExecutorError(f"{what}: each of mounts must be a JSON object")
        shape.field(mount, "destination", str, f"{what} mount", required=True, error=ExecutorError)
        for key in ("source", "type"):
            shape.field(mount, key, str, f"{what} mount", error=ExecutorError)
        shape.strings(mount, "options", f"{what} mount", error=ExecutorError)
    hooks = shape.field(config, "hooks", dict, what, error=ExecutorError) or {}
    for kind, entries in hooks.items():
        if not isinstance(entries, list) or not all(isinstance(hook, dict) for hook in entries):
            raise ExecutorError(f"{what}: hooks.{kind} must be a list of JSON objects")
        for hook in entries:
            shape.field(hook, "path", str, f"{what} hooks.{kind}", required=True, error=ExecutorError)
            for key in ("args", "env"):
                shape.strings(hook, key, f"{what} hooks.{kind}", error=ExecutorError)
            shape.field(hook, "timeout", int, f"{what} hooks.{kind}", error=ExecutorError)
    linux = shape.field(config, "linux", dict, what, error=ExecutorError) or {}
    shape.field(linux, "cgroupsPath", str, f"{what} linux", error=ExecutorError)
    for namespace in shape.field(linux, "namespaces", list, f"{what} linux", error=ExecutorError) or []:
        if not isinstance(namespace, dict):
            raise ExecutorError(f"{what}: each of linux.namespaces must be a JSON object")
        for key in ("type", "path"):
            shape.field(namespace, key, str, f"{what} linux.namespaces", error=ExecutorError)
    resources = shape.field(linux, "resources", dict, f"{what} linux", error=ExecutorError) or {}
    for group, keys in (("memory", ("limit",)), ("cpu", ("shares", "quota", "period")), ("pids", ("limit",))):
        values = shape.field(resources, group, dict, f"{what} linux.resources", error=ExecutorError) or {}
        for key in keys:
            value = shape.field(values, key, int, f"{what} linux.resources.{group}", error=ExecutorError)
            if value is not None and not -(1 << 63) <= value < 1 << 63:  # wasmtime's and ctypes' int64 would wrap it
                raise ExecutorError(f"{what}: linux.resources.{group}.{key} {value} is out of range (a 64-bit "
                                    "signed integer, as runc reads it)")
    return config


def network_namespace(config: dict[str, Any]) -> str | None:
    """The network namespace the spec joins (a pod's, `/proc/PID/ns/net` or a bind mount), if any."""
    for namespace in (config.get("linux") or {}).get("namespaces") or []:
        if namespace.get("type") == "network" and namespace.get("path"):
            return str(namespace["path"])
    return None


def rootfs_of(bundle: Path, config: dict[str, Any]) -> Path:
    root = (config.get("root") or {}).get("path") or "rootfs"
    return (bundle / root).resolve() if not Path(root).is_absolute() else Path(root)


def program_of(bundle: Path, config: dict[str, Any]) -> Path | None:
    """The host path of `process.args[0]` inside the rootfs, if it is a file there (see `entrypoint_of`)."""
    return entrypoint_of(bundle, config)[0]


def entrypoint_of(bundle: Path, config: dict[str, Any]) -> tuple[Path | None, str | None]:
    """`process.args[0]` as (its host path inside the rootfs, if it is a file there; the export to call,
    if it names one). A name without a slash is looked up in the spec's PATH, as runc does; a relative
    path is taken from `process.cwd`. runwasi's `/module.wasm#func` runs export `func`: a `#` splits
    the path from the export unless the whole name is a file."""
    process = config.get("process") or {}
    args = process.get("args") or []
    if not args:
        return None, None
    rootfs = rootfs_of(bundle, config)
    found = _lookup(rootfs, process, args[0])
    if found is None and "#" in args[0]:
        path, function = wasm.split_entrypoint(args[0])
        return _lookup(rootfs, process, path), function
    return found, None


def _lookup(rootfs: Path, process: dict[str, Any], name: str) -> Path | None:
    if "/" in name:
        return inroot.is_file(rootfs, posixpath.join(process.get("cwd") or "/", name))
    env = dict(item.partition("=")[::2] for item in process.get("env") or [])
    for directory in (env.get("PATH") or DEFAULT_PATH).split(":"):
        found = inroot.is_file(rootfs, posixpath.join(directory or ".", name))
        if found is not None:
            return found
    return None


def is_wasm(bundle: Path, config: dict[str, Any]) -> bool:
    """Whether the bundle is a wasm container: the one answer the shim and wasmctr-runtime both give
    (the rest go to runc). A pod's sandbox (`io.kubernetes.cri.container-type` `sandbox`) never is.
    Otherwise, as crun decides it: annotation `run.oci.handler` `wasm`, or `module.wasm.image/variant`
    `compat`, says it is; their `-smart` variants say it is if `process.args[0]` also ends in `.wasm`
    or `.wat` and is WebAssembly; with neither, it is if `process.args[0]` is a WebAssembly file in
    the rootfs (its magic)."""
    annotations = config.get("annotations") or {}
    if annotations.get(CONTAINER_TYPE_ANNOTATION) == "sandbox":
        return False
    handler = annotations.get(HANDLER_ANNOTATION) or annotations.get(VARIANT_ANNOTATION)
    if handler in ("wasm", "compat"):
        return True
    if handler in ("wasm-smart", "compat-smart"):
        args = (config.get("process") or {}).get("args") or []
        return bool(args) and args[0].endswith((".wasm", ".wat")) and _has_wasm_program(bundle, config)
    return _has_wasm_program(bundle, config)


def _has_wasm_program(bundle: Path, config: dict[str, Any]) -> bool:
    program = program_of(bundle, config)
    return program is not None and _sniff(program)


def _sniff(program: Path) -> bool:
    with open(program, "rb") as f:
        return wasm.sniff(f.read(8)) is not None


def spec_from_bundle(bundle: Path, config: dict[str, Any]) -> RunSpec:
    from wasmctr.running.engine import DEFAULT as DEFAULT_ENGINE
    from wasmctr.running.policy import Policy
    from wasmctr.running.spec import Mount, RunSpec
    from wasmctr.running.units import parse_duration

    process = config.get("process") or {}
    args = list(process.get("args") or [])
    program, function = entrypoint_of(bundle, config)
    if program is None:
        raise ExecutorError(f"process.args[0] {args[0] if args else '(none)'!r} is not a file in the rootfs")
    if not _sniff(program):
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
        if posixpath.normpath(m["destination"]) == "/":  # the rootfs is `/`; a second `/` preopen would shadow it
            raise ExecutorError(f"mount {m.get('source', '')} on /: a bind mount cannot replace the rootfs")
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
        env = list(process.get("env") or [])
        return RunSpec(
            wasm=program, args=args, env=env, cwd=process.get("cwd") or "/",
            function=function,
            rootfs=rootfs_of(bundle, config), mounts=mounts,
            memory_limit=int(memory) if memory and int(memory) > 0 else None,
            timeout=parse_duration(timeout) if timeout else None, fuel=int(fuel) if fuel else None, policy=policy,
            serve=_serve_options(env, annotations),
            engine=DEFAULT_ENGINE.overlay(annotations.get(ANNOTATIONS["wasm_features"]),
                                          annotations.get(ANNOTATIONS["opt_level"]),
                                          {"features": parameter("wasm_features"),
                                           "opt_level": parameter("opt_level")}))
    except (WasmctrError, ValueError) as exc:
        raise ExecutorError("bad wasmctr annotation: " + explain(exc)) from None


def _serve_options(env: list[str], annotations: dict[str, str]) -> Any:
    """Where and how the container serves if its guest is a wasi:http proxy: at the process's
    `WASMTIME_HTTP_PROXY_SOCKET_ADDR` (runwasi's variable and default), inside the pod's network
    namespace, with the limits its `wasmctr.io/http-*` annotations set (each checked at Create)."""
    from wasmctr.running.http import serving

    address = PROXY_ADDRESS
    for item in env:
        name, _, value = item.partition("=")
        if name == PROXY_ADDRESS_VARIABLE:
            address = value
    settings = {name: annotations[ANNOTATIONS[name]] for name in HTTP_SETTINGS if ANNOTATIONS[name] in annotations}
    hosts = annotations.get(ALLOW_HOSTS_ANNOTATION)
    return serving.options(address, access_log=annotations.get(ANNOTATION_PREFIX + "http-access-log") == "true",
                           allow_hosts=[hosts] if hosts else [], **settings)


def explain(exc: BaseException) -> str:
    """An error's message as a runtime's caller reads it: a setting it names spelled as the annotation
    that carries it under containerd (`wasmctr.io/deny-wasi`), not as the Python parameter."""
    return exc.spelled(ANNOTATIONS) if isinstance(exc, WasmctrError) else str(exc)
