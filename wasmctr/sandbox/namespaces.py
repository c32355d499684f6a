"""The pid, IPC, UTS and mount namespaces of a wasm container's process, as its spec lists them.

runc puts a container in every namespace its spec's `linux.namespaces` lists: the one at `path` when
one is given (a pod's containers share its sandbox's), else a new one. A wasm container's process does
the same for these four (its network namespace is joined where the network is set up). A pid
namespace holds only for the children of the thread that enters it, so the thread that forks the
container process enters it for that fork alone (`fork`) and returns to its own; the forked process
enters the other three itself (`enter`), while it is still root and single-threaded. In a new pid
namespace the container process is pid 1 and no process outside is visible to it: no pid it can name
reaches one (the seccomp filter denies kill and lets tgkill name the process itself only). A new mount
namespace is a copy of the forking process's made a slave of it (runc's default root propagation), so
no mount made in it reaches the host; joining another (`path`) is refused, since the guest's files are
host paths that another mount namespace need not have.

A `path` comes from the spec: it is opened only if it is a regular file (what a namespace file is),
never as a device or FIFO, and must be a namespace of the type named (checked before the fork, so a
wrong one fails Create; setns checks it again). Imports only ctypes, fcntl, os, stat, typing and the errors.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
from typing import Any

from wasmctr.errors import WasmctrError

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
FLAGS = {"pid": CLONE_NEWPID, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "mount": CLONE_NEWNS}
MS_REC = 0x4000
MS_SLAVE = 0x80000
NS_GET_NSTYPE = 0xB703  # ioctl: the CLONE_NEW* type of a namespace file
_LIBC = ctypes.CDLL(None, use_errno=True)  # once: each CDLL makes a class of its own, garbage for the collector

Namespaces = list[tuple[str, str | None]]
"""(type, the path of the namespace to join, or None for a new one), in the spec's order."""


_NO_USER_NAMESPACE = ("linux.namespaces lists a user namespace, which wasm containers are not put in: its root "
                      "would be the host's root, not the unprivileged user the spec asks for")


def of_spec(config: dict[str, Any]) -> Namespaces:
    """The spec's pid, ipc, uts and mount namespaces; WasmctrError for a type listed twice (runc refuses
    it too), a mount namespace to join, or a path that is not a namespace of its type. A user namespace
    (or uid/gid mappings) is refused rather than ignored: a pod with `hostUsers: false` is admitted as one
    whose root is unprivileged on the host, which it would not be here. Called before the container
    process is forked."""
    if (config.get("linux") or {}).get("uidMappings") or (config.get("linux") or {}).get("gidMappings"):
        raise WasmctrError(_NO_USER_NAMESPACE)
    found: Namespaces = []
    linux = config.get("linux") or {}
    for namespace in linux.get("namespaces") or []:
        kind, path = namespace.get("type"), namespace.get("path") or None
        if kind == "user":
            raise WasmctrError(_NO_USER_NAMESPACE)
        if kind not in FLAGS:
            continue
        if any(kind == seen for seen, _ in found):
            raise WasmctrError(f"linux.namespaces: {kind} is listed twice")
        if kind == "mount" and path:
            raise WasmctrError(f"linux.namespaces: a wasm container cannot join the mount namespace {path}: "
                               "its files are the host's")
        if path:
            _check_type(path, kind)
        found.append((kind, path))
    return found


def fork(namespaces: Namespaces) -> int:
    """os.fork(), the child in the spec's pid namespace (joined, or made new: the child is its pid 1).
    This thread enters it for the fork alone and returns to its own pid namespace after."""
    listed = dict(namespaces)
    if "pid" not in listed:
        return os.fork()
    own = os.open("/proc/thread-self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(CLONE_NEWPID, listed["pid"])
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:  # the parent (or a failed fork): its next children are its own namespace's again
                _setns(own, CLONE_NEWPID, "its own pid namespace")
    finally:
        os.close(own)
    return pid


def enter(namespaces: Namespaces) -> None:
    """In the forked container process: join or make its ipc, uts and mount namespaces. Each path is
    opened before any namespace is entered, so one cannot change what the next path names."""
    fds = {kind: _open(path) for kind, path in namespaces if path and kind != "pid"}
    try:
        for kind, path in namespaces:
            if kind == "pid":
                continue
            if kind in fds:
                _setns(fds[kind], FLAGS[kind], str(path))
                continue
            _unshare(FLAGS[kind])
            if kind == "mount" and _libc().mount(None, b"/", None, MS_REC | MS_SLAVE, None) != 0:
                raise OSError(ctypes.get_errno(), "making the new mount namespace a slave of the host's")
    finally:
        for fd in fds.values():
            os.close(fd)


def _enter(flag: int, path: str | None) -> None:
    if path is None:
        _unshare(flag)
        return
    fd = _open(path)
    try:
        _setns(fd, flag, path)
    finally:
        os.close(fd)


def _open(path: str) -> int:
    """A namespace file the spec names, opened for setns: held by O_PATH first, and reopened only if it is
    a regular file (a namespace is; opening a device or a FIFO could block or act)."""
    held = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(held).st_mode):
            raise WasmctrError(f"linux.namespaces: {path} is not a namespace")
        return os.open(f"/proc/self/fd/{held}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(held)


def _check_type(path: str, kind: str) -> None:
    try:
        fd = _open(path)
    except OSError as exc:
        raise WasmctrError(f"linux.namespaces: {kind} {path}: {exc.strerror}") from None
    try:
        found = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        found = 0
    finally:
        os.close(fd)
    if found != FLAGS[kind]:
        raise WasmctrError(f"linux.namespaces: {path} is not a namespace of type {kind}")


def _setns(fd: int, flag: int, what: str) -> None:
    if _libc().setns(fd, flag) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns {what}: {os.strerror(error)}")


def _unshare(flag: int) -> None:
    if _libc().unshare(flag) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"unshare {flag:#x}: {os.strerror(error)}")


def _libc() -> Any:
    return _LIBC
