"""A wasm container's cgroup: the spec's `linux.cgroupsPath`, its `linux.resources`, its usage.

runc puts every container it runs in the cgroup the spec names; Kubernetes relies on it (a pod's
cgroup is the parent of its containers', and PodSandboxStats, ContainerStats and `kubectl top` read
them). The shim does the same for the wasm containers it forks, so a pod of wasm containers is a pod
to the node: the kernel enforces memory, CPU and pids limits on top of wasmtime's own caps.

Both hierarchies: cgroup v2 (unified, at /sys/fs/cgroup) and v1 (one mount per controller, as on
hybrid hosts). Paths are those containerd writes: `/parent/id` (cgroupfs driver) or systemd's
`slice:prefix:name`, expanded as runc expands it (`kubepods-besteffort-pod1.slice:cri-containerd:ID` →
`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-ID.scope`).

The path comes from a spec, so it is hostile: it is cleaned as runc's `CleanPath` cleans it (lexically,
against `/`: `/../../srv/x` is the cgroup `/srv/x`, never the host's /srv/x), a systemd slice, prefix or
name that names a path (`/`, `..`) is refused, and so is the root cgroup itself. Creating walks down
from the controller's mount one directory at a time, never through a link, and checks that each is on
that mount's filesystem, so nothing is made or written outside the hierarchy.
"""

from __future__ import annotations

import os
import posixpath

TYPE_CHECKING = False  # wasmctr-runtime's `delete` imports this module: no typing, no dataclasses
if TYPE_CHECKING:
    from typing import Any

ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


def expand(cgroups_path: str) -> str:
    """The cgroup's path below the hierarchy root, for either driver's notation, cleaned; ValueError for
    a systemd part that names a path or a path that is the root cgroup."""
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        parts = cgroups_path.split(":")
        if len(parts) > 3:
            raise ValueError(f"cgroupsPath {cgroups_path!r}: expected slice:prefix:name")
        slice_name, prefix, name = (parts + ["", ""])[:3]
        for what, part in (("slice", slice_name), ("prefix", prefix), ("name", name)):
            if "/" in part or ".." in part:
                raise ValueError(f"cgroupsPath {cgroups_path!r}: the {what} {part!r} is a path, not a unit name")
        if name in ("", "."):  # the slice itself (or, for `-.slice`, the root): not a cgroup of its own
            raise ValueError(f"cgroupsPath {cgroups_path!r}: a container needs a unit name of its own")
        parent = _expand_slice(slice_name or "system.slice")
        path = f"{parent.rstrip('/')}/{prefix}-{name}.scope" if prefix else f"{parent.rstrip('/')}/{name}"
    else:
        path = clean(cgroups_path)
    if path == "/":
        raise ValueError(f"cgroupsPath {cgroups_path!r}: a container needs a cgroup of its own, not the root")
    return path


def clean(path: str) -> str:
    """runc's CleanPath against `/`: lexical, so `..` stops at the root (`/../../srv/x` is `/srv/x`)."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def _expand_slice(name: str) -> str:
    """systemd's `a-b.slice` as the path `/a.slice/a-b.slice`; ValueError for a name systemd (and
    runc's ExpandSlice) would refuse: no `.slice` suffix, an empty dash-separated component."""
    if name == "-.slice":
        return "/"
    stem = name.removesuffix(".slice")
    parts = stem.split("-")
    if stem == name or "" in parts:
        raise ValueError(f"cgroupsPath: invalid slice name {name!r}")
    path = ""
    for i in range(len(parts)):
        path += f"/{'-'.join(parts[:i + 1])}.slice"
    return path


def is_v2() -> bool:
    return os.path.exists(os.path.join(ROOT, "cgroup.controllers"))


_found_v1_mounts: dict[str, str] | None = None


def _v1_mounts() -> dict[str, str]:
    """Controller name -> its v1 hierarchy's mount point (from /proc/self/mountinfo), read once per
    process: a shim opens a cgroup for every container, and mountinfo grows with every rootfs mounted."""
    global _found_v1_mounts
    if _found_v1_mounts is not None:
        return _found_v1_mounts
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if tail and tail[0] == "cgroup":
                for option in tail[2].split(","):
                    if option in V1_CONTROLLERS:
                        found.setdefault(option, fields[4])
    _found_v1_mounts = found
    return found


class Cgroup:
    """One container's cgroup, in every hierarchy it lives in (one on v2, one per controller on v1)."""

    def __init__(self, path: str, mounts: dict[str, str]) -> None:
        self.path = path
        self.mounts = mounts  # controller (or "" on v2) -> its hierarchy's mount
        self.directories = {controller: mount + path for controller, mount in mounts.items()}

    @classmethod
    def open(cls, cgroups_path: str) -> Cgroup:
        """The cgroup at that path (as another runtime, runc, made it), to read; ValueError for a path
        `expand` refuses, before anything is made."""
        path = expand(cgroups_path)
        return cls(path, {"": ROOT} if is_v2() else dict(_v1_mounts()))

    @classmethod
    def create(cls, cgroups_path: str, resources: dict[str, Any]) -> Cgroup:
        group = cls.open(cgroups_path)
        group.make(resources)
        return group

    def make(self, resources: dict[str, Any]) -> None:
        """Make the cgroup in every hierarchy (on v2, each parent delegating the controllers) and set
        the spec's limits in it."""
        for controller, mount in self.mounts.items():
            _make(mount, self.path, delegate=controller == "")
        self.limit(resources)

    def limit(self, resources: dict[str, Any]) -> None:
        """Write the spec's `linux.resources` (memory limit, CPU shares/quota/period, pids limit)."""
        memory = (resources.get("memory") or {}).get("limit")
        cpu = resources.get("cpu") or {}
        pids = (resources.get("pids") or {}).get("limit")
        if is_v2() and "" in self.directories:
            if memory and memory > 0:
                self._write("", "memory.max", str(memory))
            if cpu.get("shares"):
                self._write("", "cpu.weight", str(1 + (int(cpu["shares"]) - 2) * 9999 // 262142))
            if cpu.get("quota") and cpu["quota"] > 0:
                self._write("", "cpu.max", f"{cpu['quota']} {cpu.get('period') or 100000}")
            if pids and pids > 0:
                self._write("", "pids.max", str(pids))
            return
        if memory and memory > 0:
            self._write("memory", "memory.limit_in_bytes", str(memory))
        if cpu.get("shares"):
            self._write("cpu", "cpu.shares", str(cpu["shares"]))
        if cpu.get("period"):
            self._write("cpu", "cpu.cfs_period_us", str(cpu["period"]))
        if cpu.get("quota"):
            self._write("cpu", "cpu.cfs_quota_us", str(cpu["quota"]))
        if pids and pids > 0:
            self._write("pids", "pids.max", str(pids))

    def join(self) -> None:
        """Move the calling process, which must have a single thread (a container process just forked),
        into the cgroup in every hierarchy. On v1 it writes 0 (itself) to each hierarchy's `tasks`: the
        kernel moves one thread that is the caller without write-locking every process's thread group,
        which a write to `cgroup.procs` does and which waits for an RCU grace period (~10-15 ms a
        container, on an idle machine and a busy one alike). v2 moves processes only, by `cgroup.procs`."""
        for controller in self.directories:
            self._write(controller, "cgroup.procs" if controller == "" else "tasks", "0")

    def remove(self) -> None:
        """Remove the container's directories (empty once its process is gone); parents stay."""
        for directory in self.directories.values():
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass

    def usage(self) -> tuple[int, int, int, int]:
        """(CPU time in microseconds, memory in use, memory limit, number of processes)."""
        if "" in self.directories:
            stat = dict(line.split() for line in self._read("", "cpu.stat").splitlines())
            maximum = self._read("", "memory.max").strip()
            return (int(stat.get("usage_usec", 0)), int(self._read("", "memory.current")),
                    0 if maximum == "max" else int(maximum), int(self._read("", "pids.current")))
        cpu = int(self._read("cpuacct", "cpuacct.usage") or 0) // 1000
        limit = int(self._read("memory", "memory.limit_in_bytes") or 0)
        return (cpu, int(self._read("memory", "memory.usage_in_bytes") or 0),
                0 if limit >= 1 << 62 else limit, int(self._read("pids", "pids.current") or 0))

    def _write(self, controller: str, name: str, value: str) -> None:
        directory = self.directories.get(controller)
        if directory is not None:
            with open(os.path.join(directory, name), "w") as f:
                f.write(value)

    def _read(self, controller: str, name: str) -> str:
        directory = self.directories.get(controller)
        if directory is None:
            return ""
        with open(os.path.join(directory, name)) as f:
            return f.read()


def _make(mount: str, path: str, delegate: bool) -> None:
    """mkdir -p of `path` below `mount`, one component at a time from the mount's descriptor, none
    opened through a link, each checked to be on the mount's filesystem (a mount or link planted in the
    hierarchy cannot lead out of it). With `delegate` (v2), each parent first enables the memory, cpu
    and pids controllers its own parent gives it for its children (subtree_control): a controller's
    files exist in a cgroup only then."""
    fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        device = os.fstat(fd).st_dev
        for part in path.strip("/").split("/"):
            if delegate:
                _delegate(fd)
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
            if os.fstat(fd).st_dev != device:
                raise OSError(f"{mount}{path} leaves the cgroup hierarchy at {mount}")
    finally:
        os.close(fd)


def _delegate(fd: int) -> None:
    try:
        with open(os.open("cgroup.controllers", os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)) as f:
            available = set(f.read().split()) & {"memory", "cpu", "pids"}
        with open(os.open("cgroup.subtree_control", os.O_WRONLY | os.O_CLOEXEC, dir_fd=fd), "w") as f:
            f.write(" ".join(f"+{c}" for c in sorted(available)))
    except OSError:
        pass
