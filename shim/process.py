"""Signalling a container process by a pid read from a file, without hitting another process.

A pid written down (a runtime CLI's state file, a bundle's pid file) may name a different process by
the time it is read back: the container exited, something reaped it, and the kernel gave its number
to a new process. So the pid is recorded with the process's start time (field 22 of /proc/PID/stat,
as runc records it), and a signal is only sent through a pidfd opened for that pid whose start time
still matches: the pidfd pins the process, the start time proves it is the one recorded.

It imports os alone (`signal` and `contextlib` cost wasmctr-runtime's per-container verbs ~10 ms):
pidfd_send_signal comes from `_signal`, the C core the `signal` module re-exports.
"""

from __future__ import annotations

import os
from _signal import SIGKILL, pidfd_send_signal

__all__ = ["SIGKILL", "alive", "signal_recorded", "start_time"]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if there is no such process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22 overall; fields[0] is field 3 (the state)


def signal_recorded(pid: int, started: int | None, signum: int) -> bool:
    """Send `signum` to the recorded process; False if it is gone (or its pid was reused)."""
    found = _open_recorded(pid, started)
    if found is None:
        return False
    fd, _ = found
    try:
        pidfd_send_signal(fd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def alive(pid: int, started: int | None) -> bool:
    """Whether the recorded process still runs (a zombie has stopped: it waits to be reaped)."""
    found = _open_recorded(pid, started)
    if found is None:
        return False
    fd, fields = found
    os.close(fd)
    return fields[0] != b"Z"


def _open_recorded(pid: int, started: int | None) -> tuple[int, list[bytes]] | None:
    """A pidfd for the process recorded as (pid, start time), with its /proc stat fields read once the
    pidfd pins it; None if it is gone or the pid now names another process. Without a recorded start
    time (an older record), the pid is trusted."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, ValueError):
        return None
    fields = _stat(pid)
    if fields is None or (started is not None and int(fields[19]) != started):
        os.close(fd)
        return None
    return fd, fields


def _stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command name (fields[0] is the state); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None
