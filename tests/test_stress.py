"""bench/stress.py, runwasi's stress-test protocol, run for a few tasks per runtime so it cannot rot, and
for 50 tasks of each wasmctr runtime: nothing may be left behind (processes, cgroups, sockets, state
directories, mounts). Neither asserts a speed: the figures belong in docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO

STRESS = REPO / "bench" / "stress.py"


def stress(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(STRESS), "--json", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_the_stress_driver_runs_every_runtime_through_the_task_api() -> None:
    results = stress("--count", "3", "--parallel", "2")
    assert sorted(results) == ["runc-busybox", "runc-wasmtime", "wasmctr", "wasmctr-shared"]
    for name, result in results.items():
        assert result["tasks_failed"] == 0, (name, result["errors"])
        assert result["tasks_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"] > 0, (name, result)
        assert all(step["p50_ms"] > 0 for step in result["steps"].values()), (name, result["steps"])
        assert result["events_missing"] == 0, (name, result)  # create, start, exit, delete: each published
        assert result["leftovers"] == {}, (name, result["leftovers"])


def test_fifty_tasks_of_each_wasmctr_runtime_leave_nothing_behind() -> None:
    results = stress("--count", "50", "--parallel", "2", "--runtime", "wasmctr", "--runtime", "wasmctr-shared")
    for name, result in results.items():
        assert result["tasks"] == 50 and result["tasks_failed"] == 0, (name, result["errors"])
        assert result["leftovers"] == {}, (name, result["leftovers"])


def test_bad_arguments_are_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(STRESS), "--count", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["bench/stress.py: --count must be at least 1 and --parallel at least 0"]
