"""How a guest of `wasmctr run` is stopped, and what it ends with: memory caps, deadlines, fuel,
SIGTERM, traps (abort, unbounded recursion), a supervisor that sleeps while its guest sleeps, exit
codes that hold when nobody reads stderr, and a gibibyte of output streamed in bounded memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import wasmtime
from conftest import EXE, run
from services import wait_for


def test_memory_bomb_is_capped(hostile_wasm: Path) -> None:
    proc = run("--memory", "64m", str(hostile_wasm), "bomb")
    assert proc.returncode == 2, proc.stderr
    allocated = int(proc.stdout.split()[1])
    assert 0 < allocated < 64


def test_initial_memory_over_the_cap_is_a_memory_limit_trap(tmp_path: Path) -> None:
    module = tmp_path / "big-memory.wasm"
    module.write_bytes(wasmtime.wat2wasm('(module (memory (export "memory") 2048) (func (export "_start")))'))
    proc = run("--memory", "64m", str(module))
    assert proc.returncode == 134 and "memory limit exceeded (64 MiB)" in proc.stderr


def test_spinning_guest_is_stopped_at_the_deadline(hostile_wasm: Path) -> None:
    """The guest never ends by itself: the run ending at all is the deadline at work (how close to it is
    a timing, not asserted here: wall-clock bounds flake on a busy machine)."""
    proc = run("--timeout", "1s", str(hostile_wasm), "spin")
    assert proc.returncode == 137 and "timeout after 1s" in proc.stderr


def wait_for_the_supervisor(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Until `wasmctr run`'s main thread sleeps in poll(2): the guest has started, and a signal is now the
    guest's stop (before, it ends `wasmctr run` itself: "wasmctr: error: terminated")."""
    wait_for(lambda: "poll" in Path(f"/proc/{proc.pid}/wchan").read_text(), 60, "the guest's supervisor")


def test_sigterm_stops_a_spinning_guest(hostile_wasm: Path) -> None:
    proc = subprocess.Popen([EXE, "run", str(hostile_wasm), "spin"], stderr=subprocess.PIPE, text=True)
    wait_for_the_supervisor(proc)
    proc.terminate()
    _, err = proc.communicate(timeout=5)
    assert proc.returncode == 143 and "signal 15" in err


def test_a_sleeping_guests_supervisor_sleeps_too_and_still_answers_sigterm(hostile_wasm: Path) -> None:
    """The main thread waits for the guest's end, a signal or a deadline, and wakes for nothing else: an
    idle container process costs no CPU (it polled 50 times a second before). Counted as the main
    thread's voluntary context switches, which a busy machine does not add to."""
    proc = subprocess.Popen([EXE, "run", str(hostile_wasm), "sleep", "60"], stderr=subprocess.PIPE, text=True)
    status = Path(f"/proc/{proc.pid}/status")
    wait_for_the_supervisor(proc)
    tasks = Path(f"/proc/{proc.pid}/task")
    wait_for(lambda: {(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()} == {"S"}, 30,
             "the guest and its supervisor to sleep")  # what is counted below is the idle that follows

    def switches() -> int:
        return int(next(line for line in status.read_text().splitlines()
                        if line.startswith("voluntary_ctxt_switches")).split()[1])

    before = switches()
    time.sleep(1.0)
    assert switches() - before <= 2
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143 and "signal 15" in err


def test_exit_codes_hold_when_nobody_reads_stderr(hostile_wasm: Path, tmp_path: Path) -> None:
    """The diagnostic line cannot be written (stderr is a pipe whose reader is gone): the code stays 134
    for a trap, 143 for SIGTERM, 125 for a guest that cannot start; no traceback, no Python 120."""
    def closed_pipe() -> int:
        read_end, write_end = os.pipe()
        os.close(read_end)
        return write_end

    for argv, code in (([str(hostile_wasm), "abort"], 134), ([str(tmp_path / "missing.wasm")], 125)):
        stderr = closed_pipe()
        try:
            proc = subprocess.run([EXE, "run", *argv], stderr=stderr, stdout=subprocess.DEVNULL, timeout=60)
        finally:
            os.close(stderr)
        assert proc.returncode == code, argv
    stderr = closed_pipe()
    try:
        spinner = subprocess.Popen([EXE, "run", str(hostile_wasm), "spin"], stderr=stderr, stdout=subprocess.DEVNULL)
    finally:
        os.close(stderr)
    wait_for_the_supervisor(spinner)
    spinner.terminate()
    assert spinner.wait(timeout=10) == 143


def test_the_smallest_memory_limit_is_taken_and_enforced(hostile_wasm: Path) -> None:
    """6m is not refused as a flag, and the guest starts under it: its memory is more, so it traps."""
    proc = run("-m", "6m", str(hostile_wasm), "exit", "0")
    assert proc.returncode == 134
    assert proc.stderr == "wasmctr: guest trapped: memory limit exceeded (6 MiB)\n"


def test_unbounded_recursion_traps(hostile_wasm: Path) -> None:
    proc = run(str(hostile_wasm), "recurse")
    assert proc.returncode == 134
    assert proc.stderr.strip() == "wasmctr: guest trapped: wasm trap: call stack exhausted"


def test_abort_is_a_trap_with_exit_134(hostile_wasm: Path) -> None:
    proc = run(str(hostile_wasm), "abort")
    assert proc.returncode == 134 and "unreachable" in proc.stderr


def test_fuel_budget_stops_a_spinning_guest(hostile_wasm: Path) -> None:
    proc = run("--fuel", "1000000", str(hostile_wasm), "spin")
    assert proc.returncode == 134 and "fuel" in proc.stderr
    assert run("--fuel", "10000000", str(hostile_wasm), "exit", "0").returncode == 0


def test_a_gibibyte_of_output_streams_without_buffering(hostile_wasm: Path) -> None:
    """Peak RSS from the process's own VmHWM: its rusage ru_maxrss also counts the memory of the parent it
    was forked from until exec (the pytest process, large late in the suite)."""
    proc = subprocess.Popen([EXE, "run", str(hostile_wasm), "flood", "1024"], stdout=subprocess.PIPE)
    total = peak_kib = 0
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
        with contextlib.suppress(OSError):
            status_lines = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            peak_kib = max([peak_kib] + [int(line.split()[1]) for line in status_lines if line.startswith("VmHWM:")])
    assert proc.wait() == 0
    assert total == 1 << 30
    assert 0 < peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB"
