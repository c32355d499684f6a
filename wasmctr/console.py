"""How transfers look on a terminal: a rich bar per blob (size, speed, ETA) on a TTY, one plain line
per blob otherwise, nothing with --quiet. Implements `distribution.Progress`; used only by the CLI."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from wasmctr.image.model import Descriptor

if TYPE_CHECKING:
    from wasmctr.registry.distribution import Progress


def short_id(digest: str) -> str:
    """A digest as Docker abbreviates it: its first 12 hex digits."""
    return digest.removeprefix("sha256:")[:12]


def size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


class LineProgress:
    """One line on stderr per blob when it is done: for logs and CI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def begin(self, desc: Descriptor, action: str) -> Callable[[int], None]:
        return lambda n: None

    def end(self, desc: Descriptor, outcome: str) -> None:
        with self._lock:
            print(f"{short_id(desc.digest)}: {outcome} ({size(desc.size)})", file=sys.stderr, flush=True)


class RichProgress:
    """A rich bar per blob. The live display starts with the first blob, so a command that transfers
    nothing draws nothing (and never hides the cursor), and `close` takes it down."""

    def __init__(self) -> None:
        self._bars: Any = None
        self._tasks: dict[str, object] = {}
        self._lock = threading.Lock()

    def _display(self) -> Any:
        if self._bars is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self._bars.start()
        return self._bars

    def begin(self, desc: Descriptor, action: str) -> Callable[[int], None]:
        with self._lock:
            bars = self._display()
            task = bars.add_task(f"{short_id(desc.digest)} {action}", total=desc.size)
            self._tasks[desc.digest] = task
        return lambda n: bars.advance(task, n)

    def end(self, desc: Descriptor, outcome: str) -> None:
        with self._lock:
            bars = self._display()
            task = self._tasks.get(desc.digest)
            if task is None:
                task = bars.add_task("", total=desc.size)
            bars.update(task, description=f"{short_id(desc.digest)} {outcome}", completed=desc.size)

    def close(self) -> None:
        """Draw the bars a last time, show the cursor again and stop redrawing."""
        with self._lock:
            if self._bars is not None:
                self._bars.stop()


@contextlib.contextmanager
def progress(quiet: bool) -> Iterator[Progress]:
    """The display for one command's transfers; on a terminal it is taken down, and the cursor shown
    again, however the block ends (an error, Ctrl-C)."""
    if quiet:
        from wasmctr.registry.distribution import Silent

        yield Silent()
        return
    if not sys.stderr.isatty():
        yield LineProgress()
        return
    bars = RichProgress()
    try:
        yield bars
    finally:
        bars.close()
