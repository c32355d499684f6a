"""Mounting the rootfs containerd hands a task (overlay or bind mounts from its snapshotter)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not at run time: the shim's `delete` verb imports this module and must start fast
    from .api import task_pb2


def mount_all(mounts: list[task_pb2.Mount], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for m in mounts:
        argv = ["mount"]
        if m.type and m.type != "bind":
            argv += ["-t", m.type]
        if m.options:
            argv += ["-o", ",".join(m.options)]
        argv += [m.source, str(target)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"mount {m.type} {m.source} on {target}: {proc.stderr.strip()}")


def is_mounted(target: Path) -> bool:
    wanted = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == wanted for line in f)


def unmount_all(target: Path) -> None:
    """Unmount everything stacked on `target` (lazily if busy)."""
    for _ in range(16):
        if not target.exists() or not is_mounted(target):
            return
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
