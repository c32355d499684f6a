"""The one-line diagnostics wasmctr writes to its stderr.

A line that cannot be written (stderr is a FIFO nobody reads, a closed pipe, a full disk) is lost, and
nothing else: the exit code a caller waits for (134 for a trap, 128+N for signal N) must not turn into
a traceback or Python's 120 for an unflushable stream. So the line goes to fd 2 in one write, around
sys.stderr's buffer, and a failure is swallowed.
"""

from __future__ import annotations

import contextlib
import os


def emit(line: str) -> None:
    """Write `line` and a newline to fd 2, or nothing if fd 2 cannot take it."""
    with contextlib.suppress(OSError):
        os.write(2, f"{line}\n".encode(errors="replace"))


def one_line(text: str) -> str:
    """A multi-line message (wasmtime's, with its causes) as one line of at most 500 characters."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:500]
