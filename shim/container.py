"""What a container process does, for both runtime-facing entry points (the containerd shim forks it
per task; wasmctr-runtime's `create` forks it per container): wait to be started, run the guest its
caller prepared, and report how it ended."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from wasmctr import diagnostics
from wasmctr.executor import Outcome, Prepared


def become_guest(executor: Any, guest: Prepared, started: Callable[[], bool]) -> Outcome | None:
    """Wait to be started, then run the prepared guest (prepared before: start is fast); None if the
    container was deleted before it was started."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    if not started():
        return None
    outcome = executor.start(guest, hard_stop=True)
    if outcome.message:
        diagnostics.emit(f"wasmctr: {outcome.message}")
    with contextlib.suppress(OSError):  # the guest's output went to fd 1 itself; nothing may change its code
        sys.stdout.flush()
    return outcome
