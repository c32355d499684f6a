"""A wasm container's cgroup: the spec's `linux.cgroupsPath`, its `linux.resources`, its usage.

runc puts every container it runs in the cgroup the spec names; Kubernetes relies on it (a pod's
cgroup is the parent of its containers', and PodSandboxStats, ContainerStats and `kubectl top` read
them). The shim does the same for the wasm containers it forks, so a pod of wasm containers is a pod
to the node: the kernel enforces memory, CPU and pids limits on top of wasmtime's own caps.

Both hierarchies: cgroup v2 (unified, at /sys/fs/cgroup) and v1 (one mount per controller, as on
hybrid hosts). Paths are those containerd writes: `/parent/id` (cgroupfs driver) or systemd's
`slice:prefix:name`, expanded as runc expands it (`kubepods-besteffort-pod1.slice:cri-containerd:ID` →
`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-ID.scope`).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # wasmctr-runtime's `delete` imports this module: no typing, no dataclasses
if TYPE_CHECKING:
    from typing import Any

ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


def expand(cgroups_path: str) -> str:
    """The cgroup's path below the hierarchy root, for either driver's notation."""
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        slice_name, prefix, name = (cgroups_path.split(":") + ["", ""])[:3]
        parent = _expand_slice(slice_name or "system.slice")
        return f"{parent.rstrip('/')}/{prefix}-{name}.scope" if prefix else f"{parent.rstrip('/')}/{name}"
    return "/" + cgroups_path.strip("/")


def _expand_slice(name: str) -> str:
    if name == "-.slice":
        return "/"
    stem = name.removesuffix(".slice")
    parts, path = stem.split("-"), ""
    for i in range(len(parts)):
        path += f"/{'-'.join(parts[:i + 1])}.slice"
    return path


def is_v2() -> bool:
    return os.path.exists(os.path.join(ROOT, "cgroup.controllers"))


def _v1_mounts() -> dict[str, str]:
    """Controller name -> its v1 hierarchy's mount point (from /proc/self/mountinfo)."""
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if tail and tail[0] == "cgroup":
                for option in tail[2].split(","):
                    if option in V1_CONTROLLERS:
                        found.setdefault(option, fields[4])
    return found


class Cgroup:
    """One container's cgroup, in every hierarchy it lives in (one on v2, one per controller on v1)."""

    def __init__(self, path: str, directories: dict[str, str]) -> None:
        self.path = path
        self.directories = directories  # controller (or "" on v2) -> directory

    @classmethod
    def open(cls, cgroups_path: str) -> Cgroup:
        """The cgroup at that path (as another runtime, runc, made it), to read."""
        path = expand(cgroups_path)
        if is_v2():
            return cls(path, {"": ROOT + path})
        return cls(path, {name: mount + path for name, mount in _v1_mounts().items()})

    @classmethod
    def create(cls, cgroups_path: str, resources: dict[str, Any]) -> Cgroup:
        group = cls.open(cgroups_path)
        if "" in group.directories:
            _enable_controllers(group.directories[""])
        for directory in group.directories.values():
            os.makedirs(directory, exist_ok=True)
        group.limit(resources)
        return group

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

    def add(self, pid: int) -> None:
        for controller in self.directories:
            self._write(controller, "cgroup.procs", str(pid))

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


def _enable_controllers(directory: str) -> None:
    """On v2, a controller's files exist in a cgroup only if its parent delegates it (subtree_control)."""
    parts = directory[len(ROOT):].strip("/").split("/")
    current = ROOT
    for part in parts[:-1] if parts else []:
        current = os.path.join(current, part)
        os.makedirs(current, exist_ok=True)
    current = ROOT
    for part in parts:
        available: set[str] = set()
        try:
            with open(os.path.join(current, "cgroup.controllers")) as f:
                available = set(f.read().split()) & {"memory", "cpu", "pids"}
            with open(os.path.join(current, "cgroup.subtree_control"), "w") as f:
                f.write(" ".join(f"+{c}" for c in sorted(available)))
        except OSError:
            pass
        current = os.path.join(current, part)
