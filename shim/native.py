"""Containers that are not wasm — a pod's sandbox (pause) container, native sidecars — run by runc.

runwasi hands such containers to youki; this shim hands them to runc, doing what containerd's own
runc shim does: `runc create` with the container's stdio and the rootfs containerd mounted, `runc
start`, and, as the child subreaper, the reaping of the container's init process when it exits (runc's
own process is gone by then, so the init is re-parented to the shim). runc applies the spec's
namespaces, cgroups, capabilities and seccomp profile, so a native container here is the container it
would be under io.containerd.runc.v2. runc's errors arrive through its JSON `--log`, so a failed
create is one line with runc's own message.

A bundle is refused before runc sees it unless it is what containerd always sends: a mount namespace
of the container's own (runc builds the rootfs and its /dev there; without one it made device nodes
on the host's) and a root directory below the bundle (containerd mounts the rootfs at `rootfs`).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from typing import Any

from wasmctr.errors import ExecutorError

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans below this process (a container init whose `runc create` exited) become its children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def check_bundle(bundle: str, config: dict[str, Any]) -> None:
    """ExecutorError unless the spec has a mount namespace of its own (an entry with a `path` joins
    another process's, the host's for /proc/1/ns/mnt) and its root, opened as runc will open it (relative
    to the bundle), is a directory below the bundle and not the host's `/` (bound there): the check walks
    up from that directory through `..` until it meets the bundle, by identity, not by comparing strings."""
    namespaces = (config.get("linux") or {}).get("namespaces") or []
    if not any(isinstance(ns, dict) and ns.get("type") == "mount" and not ns.get("path") for ns in namespaces):
        raise ExecutorError("a native container needs a mount namespace of its own (linux.namespaces)")
    root = str((config.get("root") or {}).get("path") or "")
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    bundle_status = os.stat(bundle)
    try:
        fd = os.open(os.path.join(bundle, root), flags)
    except OSError as exc:
        raise ExecutorError(f"root.path {root!r}: {exc.strerror}") from None
    try:
        previous = os.fstat(fd)
        host_root = os.stat("/")
        if (previous.st_dev, previous.st_ino) == (host_root.st_dev, host_root.st_ino):  # a bind mount of `/`
            raise ExecutorError(f"root.path {root!r} is the host's root")
        while True:
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            status = os.fstat(fd)
            if (status.st_dev, status.st_ino) == (bundle_status.st_dev, bundle_status.st_ino):
                return
            if (status.st_dev, status.st_ino) == (previous.st_dev, previous.st_ino):  # the filesystem's root
                raise ExecutorError(f"root.path {root!r} is not a directory below the bundle")
            previous = status
    finally:
        os.close(fd)


class Runc:
    """The runc binary with one state directory (`--root`) for this shim's containers."""

    def __init__(self, root: str, binary: str | None = None) -> None:
        self.root = root
        self.binary = binary or os.environ.get("WASMCTR_RUNC", "runc")

    def create(self, container_id: str, bundle: str, stdio: tuple[int, int, int]) -> int:
        """Create the container (its init waits for `start`) and return the init's pid."""
        pid_file = os.path.join(bundle, "runc.pid")
        self._run(bundle, "create", "--bundle", bundle, "--pid-file", pid_file, container_id, stdio=stdio)
        with open(pid_file) as f:
            return int(f.read())

    def start(self, container_id: str, bundle: str) -> None:
        self._run(bundle, "start", container_id)

    def delete(self, container_id: str, bundle: str) -> None:
        """Remove runc's state and the container's cgroup (forcibly: the init may still be there)."""
        self._run(bundle, "delete", "--force", container_id)

    def _run(self, bundle: str, *args: str, stdio: tuple[int, int, int] | None = None) -> None:
        log = os.path.join(bundle, "runc-log.json")
        stdin, stdout, stderr = stdio or (subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
        proc = subprocess.run([self.binary, "--root", self.root, "--log", log, "--log-format", "json", *args],
                              stdin=stdin, stdout=stdout, stderr=stderr, cwd=bundle, check=False)
        if proc.returncode != 0:
            raise ExecutorError(f"runc {args[0]}: {_last_error(log)}")


def _last_error(log: str) -> str:
    """runc's last error message from its JSON log (what containerd's runc shim reports too)."""
    message = "failed"
    try:
        with open(log) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("level") in ("error", "fatal"):
                    message = str(record.get("msg", message))
    except OSError:
        pass
    return message
