"""Mounting the rootfs containerd hands a task (overlay or bind mounts from its snapshotter).

The shim's `delete` verb, run by containerd for every container, imports this module: it sticks to
os.path, and imports subprocess only when it has something to mount or unmount.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # not at run time: protobuf would cost `delete` ~25 ms
    from .api import task_pb2

Target = str | os.PathLike[str]


def mount_all(mounts: list[task_pb2.Mount], target: Target) -> None:
    import subprocess

    os.makedirs(target, exist_ok=True)
    for m in mounts:
        argv = ["mount"]
        if m.type and m.type != "bind":
            argv += ["-t", m.type]
        if m.options:
            argv += ["-o", ",".join(m.options)]
        argv += [m.source, os.fspath(target)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"mount {m.type} {m.source} on {os.fspath(target)}: {proc.stderr.strip()}")


def is_mounted(target: Target) -> bool:
    wanted = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == wanted for line in f)


def unmount_all(target: Target) -> None:
    """Unmount everything stacked on `target` (lazily if busy)."""
    for _ in range(16):
        if not os.path.exists(target) or not is_mounted(target):
            return
        import subprocess

        if subprocess.run(["umount", os.fspath(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(target)], capture_output=True)
