"""Mounting the rootfs containerd hands a task (overlay or bind mounts from its snapshotter).

Through mount(2) and umount2(2) themselves, as containerd's own mount package does, not mount(8): a run
of the binary from the shim (a fork of a large process, then mount's own start and its libraries) cost
each task ~6 ms of CPU to mount and as much to unmount (bench/stress.py). Options are read as mount(8)
reads them: flag words become mount flags, anything else (`lowerdir=...`) the filesystem's data.

The shim's `delete` verb, run by containerd for every container, imports this module: it sticks to
os.path, and imports ctypes only when it has something to mount or unmount.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # not at run time: protobuf would cost `delete` ~25 ms
    from typing import Any

    from .api import task_pb2

Target = str | os.PathLike[str]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS, MS_REMOUNT, MS_MANDLOCK, MS_DIRSYNC = (
    1, 2, 4, 8, 16, 32, 64, 128)
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1 << 10, 1 << 11, 1 << 12, 1 << 14
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED, MS_RELATIME, MS_STRICTATIME = (
    1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 24)
MNT_DETACH = 2

FLAGS = {  # option -> (whether it clears the flag, the flag), as mount(8) and containerd read them
    "async": (True, MS_SYNCHRONOUS), "atime": (True, MS_NOATIME), "bind": (False, MS_BIND),
    "defaults": (False, 0), "dev": (True, MS_NODEV), "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC), "exec": (True, MS_NOEXEC), "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME), "nodev": (False, MS_NODEV), "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC), "nomand": (True, MS_MANDLOCK), "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME), "nosuid": (False, MS_NOSUID), "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME), "remount": (False, MS_REMOUNT), "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY), "strictatime": (False, MS_STRICTATIME), "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}
PROPAGATION = {"private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "shared": MS_SHARED,
               "rshared": MS_SHARED | MS_REC, "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
               "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC}


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """(mount flags, propagation flags, the filesystem's data) from mount(8)-style options."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if option in FLAGS:
            clear, flag = FLAGS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in PROPAGATION:
            propagation |= PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


def mount_all(mounts: list[task_pb2.Mount], target: Target) -> None:
    os.makedirs(target, exist_ok=True)
    path = os.fspath(target)
    for m in mounts:
        flags, propagation, data = parse_options(list(m.options))
        if m.type == "bind":
            flags |= MS_BIND
        try:
            _mount(m.source, path, m.type, flags, data)
            if flags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:  # a bind mount is read-only only once remounted
                _mount("", path, "", flags | MS_REMOUNT, "")
            if propagation:
                _mount("", path, "", propagation, "")
        except OSError as exc:
            raise OSError(f"mount {m.type} {m.source} on {path}: {exc.strerror}") from None


def is_mounted(target: Target) -> bool:
    wanted = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == wanted for line in f)


def unmount_all(target: Target) -> None:
    """Unmount everything stacked on `target` (lazily if busy)."""
    for _ in range(16):
        if not os.path.exists(target) or not is_mounted(target):
            return
        path = os.fsencode(target)
        if _libc().umount2(path, 0) != 0:
            _libc().umount2(path, MNT_DETACH)


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    import ctypes

    if _libc().mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                     data.encode() or None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


_libc_loaded: Any = None


def _libc() -> Any:
    """libc through ctypes, loaded once (each CDLL makes a class of its own, garbage for the collector)
    and only by a process that mounts: wasmctr-runtime's verbs import this module without ctypes."""
    global _libc_loaded
    if _libc_loaded is None:
        import ctypes

        _libc_loaded = ctypes.CDLL(None, use_errno=True)
    return _libc_loaded
