"""How a process that runs a guest tells the process that made it how things went: one format, one reader.

Every such process reports on a pipe: a container process (`wasmctr run --user`, each task of the
containerd shim, each container of wasmctr-runtime) and the child interpreter of a Python run with a
deadline (`isolated.py`). Each message is one line of JSON: `{"ready": true}` once a container process
has done everything that can fail before its guest runs, `{"outcome": [exit_code, reason, message]}`
once the guest has ended, `{"error": TEXT}` when it could not run. Its parent reads the pipe with a
`Reader`: whether the process became ready, then how its guest ended; a process that said nothing
(killed) ended as its wait status says. Of wasmctr it imports only the errors and the executor's `Outcome`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from typing import Any

from wasmctr.errors import ExecutorError, WasmctrError
from wasmctr.running.executor import Outcome

ERROR_LIMIT = 4096  # characters of an error's text: a reason, never a dump


def send(fd: int, said: Outcome | BaseException | None) -> None:
    """On the pipe's write end `fd`: ready (None), how the guest ended, or why it could not run. A reader
    that has gone (wasmctr-runtime's `create` ends once its container is ready) is no error."""
    if said is None:
        message: dict[str, object] = {"ready": True}
    elif isinstance(said, Outcome):
        message = {"outcome": [said.exit_code, said.reason, said.message]}
    else:  # a WasmctrError as raised, the parameters it names still marked: the reader's caller spells them
        text = said.args[0] if isinstance(said, WasmctrError) and said.args else str(said)
        message = {"error": str(text)[:ERROR_LIMIT]}
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(message).encode() + b"\n")


def from_status(status: int) -> Outcome:
    """How a process that reported nothing ended, from its wait status alone."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return Outcome(128 - code, "signal", f"guest stopped by signal {-code}")
    return Outcome(code, "signal")


class Reader:
    """The parent's end of the pipe (it owns and closes `fd`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = b""

    def ready(self, timeout: float) -> str | None:
        """Wait until the process says it is ready (None) or ends first: then the error it gave, or a
        plain reason; TimeoutError if it does neither within `timeout` seconds (blocked where it should
        not be: its parent, which may hold a lock while it waits, must not wait with it)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            if not select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"the container process was not ready within {timeout:g} s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                break
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        said = _parse(line)
        if said.get("ready") is True:
            return None
        if "error" in said:
            return str(said["error"]).strip() or "the container process failed before it was ready"
        return "the container process ended before it was ready"

    def outcome(self, status: int) -> Outcome:
        """Once the process has ended (`status`, from waitpid): how its guest ended, as it reported, or
        as its wait status says if it reported nothing; ExecutorError with the reason it could not run.
        Reads the rest of the pipe and closes it."""
        with os.fdopen(self.fd, "rb") as pipe:
            rest = self._pending + pipe.read()
        self.fd, self._pending = -1, b""
        for line in reversed(rest.splitlines()):
            said = _parse(line)
            if "error" in said:
                raise ExecutorError(str(said["error"]))
            ended = said.get("outcome")
            if isinstance(ended, list) and len(ended) == 3:
                return Outcome(int(ended[0]), str(ended[1]), str(ended[2]))
        return from_status(status)

    def close(self) -> None:
        """Stop listening: what the process says from now on goes nowhere."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _parse(line: bytes) -> dict[str, Any]:
    try:
        said = json.loads(line)
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}
