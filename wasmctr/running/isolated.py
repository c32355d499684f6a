"""A guest in a child interpreter: how the Python API ends a guest at its deadline without ending its caller.

A guest runs on a thread, and a thread blocked in a host call (a read of a pipe nobody writes, a long
sleep) cannot be killed; only its process can. `wasmctr.run(..., timeout=...)` therefore runs the
guest in a new interpreter (`python -m wasmctr.running.isolated`), spawned rather than forked: neither the
caller's threads nor the engine's survive a fork. The child reads the run's spec from one pipe, runs
it with the deadline, stopping itself hard if it must, and writes its outcome to another, as a
container process reports its own (`report.py`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from wasmctr.running import report
from wasmctr.running.executor import Outcome, RunSpec

# past the guest's own deadline and grace, how long the child may take to start and report before it
# is killed: it stops itself, so this only bounds a child that cannot (wedged in start-up)
BACKSTOP_SECONDS = 60


def run(spec: RunSpec, store_root: Path, stdin: Any, stdout: Any, stderr: Any,
        data: bytes | None) -> tuple[Outcome, bytes | None, bytes | None]:
    """Run `spec` (its stdio inherited) in a child whose stdio Popen sets up from `stdin`, `stdout` and
    `stderr`, with the compile cache of the store at `store_root`; returns the outcome and what came
    back on pipes, as `Popen.communicate` does."""
    spec_r, spec_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-m", "wasmctr.running.isolated", str(spec_r), str(report_w)],
                                 stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=(spec_r, report_w))
    finally:
        os.close(spec_r)
        os.close(report_w)
    reader = report.Reader(report_r)
    with child:
        try:
            with os.fdopen(spec_w, "wb") as specs:  # read at once by the child, before it writes anything
                pickle.dump((spec, str(store_root)), specs)
            out, err = child.communicate(data, timeout=(spec.timeout or 0) + BACKSTOP_SECONDS)
        except BaseException:  # interrupted, or wedged: stop the guest as `wasmctr run` stops one
            reader.close()
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.communicate(timeout=BACKSTOP_SECONDS)
            child.kill()
            raise
        status = child.wait()
    return reader.outcome(_wait_status(status)), out, err


def _wait_status(returncode: int) -> int:
    """Popen's returncode (negative for a signal) as the wait status `Reader.outcome` reads."""
    return -returncode if returncode < 0 else returncode << 8


def _child(spec_fd: int, report_fd: int) -> NoReturn:
    from wasmctr.running.executor import Executor

    def stop_hard(outcome: Outcome) -> NoReturn:
        report.send(report_fd, outcome)
        os._exit(outcome.exit_code)

    code = 125
    try:
        with os.fdopen(spec_fd, "rb") as specs:
            spec, store_root = pickle.load(specs)
        outcome = Executor.for_store(Path(store_root), map_cached_code=True).run(spec, hard_stop=stop_hard)
        report.send(report_fd, outcome)
        code = outcome.exit_code
    except BaseException as exc:  # noqa: BLE001 - the parent raises it; nothing else may print
        report.send(report_fd, exc)
    finally:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        os._exit(code)


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
