"""What a container process does, for both runtime-facing entry points (the containerd shim forks it
per task; wasmctr-runtime's `create` forks it per container): load the guest, wait to be started,
run it, and report how it ended."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from wasmctr.executor import Outcome, RunSpec


def become_guest(executor: Any, spec: RunSpec, started: Callable[[], bool]) -> Outcome | None:
    """Compile (or load from the cache) before `started()` returns, so start is fast; None if the
    container was deleted before it was started."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    executor.precompile(spec.wasm, spec.wasm_digest, spec.fuel is not None)
    if not started():
        return None
    outcome = executor.run(spec, hard_stop=True)
    if outcome.message:
        os.write(2, f"wasmctr: {outcome.message}\n".encode())
    sys.stdout.flush()
    return outcome
