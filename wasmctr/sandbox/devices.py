"""The devices every OCI container has (runtime-spec config-linux.md#default-devices), for wasm guests.

WASI reaches host files only through preopened directories, so a container's `/dev` is a directory of
its own holding just these device nodes, made with mknod (root only) and preopened at `/dev`: reads of
`zero` give zeros, writes to `null` vanish, writes to `full` fail with ENOSPC, as on Linux. Landlock,
where the kernel has it, lets the process read and write these nodes and list the directory, and
create or remove nothing in it.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # `remove` runs in wasmctr-runtime's `delete`, a new interpreter for every container
if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

DEFAULT = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


def populate(directory: Path, names: list[str] | None = None) -> Path:
    """Make `directory` hold the named default devices (all of them by default) and nothing else it
    did not already hold; an entry of that name that is not the right device is replaced."""
    chosen = list(DEFAULT) if names is None else names
    unknown = sorted(set(chosen) - set(DEFAULT))
    if unknown:
        raise ValueError(f"no such default device: {', '.join(unknown)} (there are {', '.join(DEFAULT)})")
    directory.mkdir(mode=0o755, exist_ok=True)
    for name in chosen:
        path = directory / name
        wanted = os.makedev(*DEFAULT[name])
        try:
            st = path.lstat()
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == wanted:
                continue
            path.unlink()
        os.mknod(path, stat.S_IFCHR | 0o666, wanted)
        os.chmod(path, 0o666)  # whatever the umask
    return directory


def remove(directory: str | os.PathLike[str]) -> None:
    """Remove a directory `populate` made (its nodes only)."""
    remove_files(directory, DEFAULT)


def remove_files(directory: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Remove the named files in `directory`, then the directory unless something else is left in it."""
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass
