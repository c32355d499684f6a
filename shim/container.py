"""What a container process does, for both runtime-facing entry points (the containerd shim forks it
per task; wasmctr-runtime's `create` forks it per container): wait to be started, run the guest its
caller prepared, and report how it ended."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from wasmctr import diagnostics, landlock
from wasmctr.executor import Outcome, Prepared, exit_process


def default_signals() -> None:
    """The first thing a forked container process does: its parent's handlers (the shim's SIGTERM
    cleanup unlinks the shim's socket) must never run in it, even while it blocks opening a FIFO."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)


def become_guest(executor: Any, guest: Prepared, started: Callable[[], bool], ruleset: int | None) -> Outcome | None:
    """Wait to be started, then run the prepared guest (prepared before: start is fast); None if the
    container was deleted before it was started. Once started, and before the guest's preopens are
    opened, the process enforces its Landlock `ruleset` (`landlock.ruleset_for`, made while it could
    still reach the paths): from then on it opens files only below its rootfs and mounts."""
    if not started():
        return None
    landlock.enforce(ruleset)
    outcome = executor.start(guest, hard_stop=exit_process)
    if outcome.message:
        diagnostics.emit(f"wasmctr: {outcome.message}")
    with contextlib.suppress(OSError):  # the guest's output went to fd 1 itself; nothing may change its code
        sys.stdout.flush()
    return outcome
