"""Benchmark wasmctr-runtime behind containerd's own runc shim (`ctr run --runc-binary`), against plain
runc running a busybox `echo` on the same containerd in the same run (aim <= 1.5x), and the least a
Python CLI could take there: the shim runs the CLI four times per container (create, start, delete
twice), so four interpreter starts in place of four of runc's, and one import of wasmtime.

    python bench/runtime.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import compile_sources, exec_ms
from wasmctr_node import lab, latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    compile_sources()
    runtime = str(Path(sys.executable).parent / "wasmctr-runtime")
    with tempfile.TemporaryDirectory() as tmp, lab(Path(tmp)) as setup:
        ours, runc = latency(setup.wasm("--runtime", "io.containerd.runc.v2", "--runc-binary", runtime),
                             setup.runc(), args.repeat)
        print(f"latency: ctr run --runc-binary wasmctr-runtime {ours * 1000:5.0f} ms   runc busybox echo "
              f"{runc * 1000:5.0f} ms   ratio {ours / runc:.2f}x (aim <= 1.5x)")
        interpreter = exec_ms([sys.executable, "-c", "pass"])
        engine = exec_ms([sys.executable, "-c", "import os, wasmtime; os._exit(0)"]) - interpreter
        runc_exec = exec_ms(["runc", "--version"])
        floor = runc * 1000 - 4 * runc_exec + 4 * interpreter + engine
        print(f"  floor: 4 interpreter starts of {interpreter:.0f} ms in place of 4 runc runs of {runc_exec:.0f} ms "
              f"(counted as its start alone), and wasmtime's import, {engine:.0f} ms: {floor:.0f} ms, "
              f"{floor / (runc * 1000):.2f}x runc at best")


if __name__ == "__main__":
    main()
