"""What a container process does, for both runtime-facing entry points (the containerd shim forks it
per task; wasmctr-runtime's `create` forks it per container): say it is ready (or why it never will
be), wait to be started, run the guest its caller prepared, and report how it ended."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from wasmctr import diagnostics
from wasmctr.running.executor import Outcome, Prepared, exit_process
from wasmctr.sandbox import landlock


def default_signals() -> None:
    """The first thing a forked container process does: its parent's handlers (the shim's SIGTERM
    cleanup unlinks the shim's socket) must never run in it, even while it blocks opening a FIFO."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)


class Ready:
    """A pipe on which a container process tells whoever forked it that it is ready to be started (its
    preopens open, its user, capabilities and filters in place: everything that can fail has been
    done), or why it never will be. runc's `create` likewise returns once its init waits for `start`,
    and fails with the init's own error if it died first, instead of leaving a process that `start`
    would then report as running until it is seen to be gone."""

    READY = b"\0"

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def ready(self) -> None:
        """In the container process: ready; nothing more is said on the pipe."""
        os.close(self.read_fd)
        os.write(self.write_fd, self.READY)
        os.close(self.write_fd)
        self.write_fd = -1

    def failed(self, reason: str) -> bool:
        """In the container process, as it gives up: the reason, for the caller; False if it was ready
        (the reason is then the container's to print)."""
        if self.write_fd < 0:
            return False
        with contextlib.suppress(OSError):
            os.write(self.write_fd, reason.encode(errors="replace")[:4096])
        return True

    def wait(self) -> str | None:
        """In the forking process: None once the container process is ready; the reason it gave, or a
        plain one, if it ended first."""
        os.close(self.write_fd)
        chunks = []
        with open(self.read_fd, "rb") as pipe:  # closes the read end
            while chunk := pipe.read(4096):
                chunks.append(chunk)
        said = b"".join(chunks)
        if said == self.READY:
            return None
        return said.decode(errors="replace").strip() or "the container process ended before it was ready"


def become_guest(executor: Any, guest: Prepared, started: Callable[[], bool], ruleset: int | None) -> Outcome | None:
    """Wait to be started, then run the prepared guest (prepared and opened before: start is fast);
    None if the container was deleted before it was started. Once started, the process enforces its
    Landlock `ruleset` (`landlock.ruleset_for`, made while it could still reach the paths): from then on
    it opens files only below its rootfs and mounts, through the preopens it holds as through any path."""
    if not started():
        return None
    landlock.enforce(ruleset)
    outcome = executor.start(guest, hard_stop=exit_process)
    if outcome.message:
        diagnostics.emit(f"wasmctr: {outcome.message}")
    with contextlib.suppress(OSError):  # the guest's output went to fd 1 itself; nothing may change its code
        sys.stdout.flush()
    return outcome
