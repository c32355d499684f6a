"""How transfers look on a terminal: a rich bar per blob (size, speed, ETA) on a TTY, one plain line
per blob otherwise, nothing with --quiet. Implements `distribution.Progress`; used only by the CLI."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .model import Descriptor

if TYPE_CHECKING:
    from .distribution import Progress


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
    def __init__(self, bars: object) -> None:
        from rich.progress import Progress as Bars

        assert isinstance(bars, Bars)
        self._bars = bars
        self._tasks: dict[str, object] = {}
        self._lock = threading.Lock()

    def begin(self, desc: Descriptor, action: str) -> Callable[[int], None]:
        with self._lock:
            task = self._bars.add_task(f"{short_id(desc.digest)} {action}", total=desc.size)
            self._tasks[desc.digest] = task
        return lambda n: self._bars.advance(task, n)  # type: ignore[arg-type]

    def end(self, desc: Descriptor, outcome: str) -> None:
        with self._lock:
            task = self._tasks.get(desc.digest)
            if task is None:
                task = self._bars.add_task("", total=desc.size)
            self._bars.update(task, description=f"{short_id(desc.digest)} {outcome}", completed=desc.size)  # type: ignore[arg-type]


@contextlib.contextmanager
def progress(quiet: bool) -> Iterator[Progress]:
    if quiet:
        from .distribution import Silent

        yield Silent()
        return
    if not sys.stderr.isatty():
        yield LineProgress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bars:
        yield RichProgress(bars)
