"""Benchmark wasmctr-runtime behind containerd's own runc shim (`ctr run --runc-binary`), against plain
runc running a busybox `echo` on the same containerd in the same run. Aim: <= 1.2x.

    python bench/runtime.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import compile_sources

from shim import lab, latency


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
              f"{runc * 1000:5.0f} ms   ratio {ours / runc:.2f}x (aim <= 1.2x)")


if __name__ == "__main__":
    main()
