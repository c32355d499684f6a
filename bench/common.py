"""What the benchmarks share: timing a command with its own rusage, and synthesising wasm modules."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from synth import data_module  # noqa: E402,F401  (re-exported for the benchmarks)


def half_random_block(seed: int = 0) -> Callable[[], bytes]:
    """Blocks of half random, half zero bytes: gzip has real work, as with real data sections."""
    rng = random.Random(seed)
    return lambda: rng.randbytes(1 << 19) + bytes(1 << 19)


def random_block() -> bytes:
    return os.urandom(1 << 20)


def pss_kib(pid: int | str) -> int:
    """A process's proportional set size, from /proc (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(argv: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, from its own rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(argv)}")
    return time.perf_counter() - start, usage.ru_maxrss


def exec_ms(argv: list[str], repeat: int = 20) -> float:
    """Median wall milliseconds of running a short command to its end (a process's start and exit)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def compile_sources() -> None:
    """Write wasmctr's bytecode now: an editable install run with PYTHONDONTWRITEBYTECODE (as CI sets it)
    would otherwise compile every module at every start, which a wheel install never does."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "wasmctr"), str(REPO / "shim")],
                   check=True, stdout=subprocess.DEVNULL)
