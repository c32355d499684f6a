"""Benchmark `wasmctr build` of a 64 MiB module against the I/O floor measured in the same run.

The module is synthesised: a valid WASI-shaped module whose data segment holds 64 MiB of half-random,
half-zero bytes (so gzip has real work, as with real data sections). The floor is what any builder must
at least do with those bytes: `sha256sum` plus `gzip -6` of the same file. We report wall time and peak
RSS of `wasmctr build`, the floor, and their ratio. Aims: ratio <= 1.5, peak RSS < 60 MiB.

    python bench/build.py [--size-mib 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import compile_sources, data_module, half_random_block, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    compile_sources()
    wasmctr = str(Path(sys.executable).parent / "wasmctr")
    with tempfile.TemporaryDirectory() as tmp:
        module = Path(tmp) / "big.wasm"
        data_module(module, args.size_mib << 20, half_random_block())
        subprocess.run(["cat", str(module)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        ours, rss, floor = [], [], []
        for n in range(args.repeat):
            env = {**os.environ, "WASMCTR_HOME": f"{tmp}/store{n}"}
            wall, peak = timed([wasmctr, "build", str(module), "-t", "bench:1"], env)
            ours.append(wall)
            rss.append(peak)
            sha, _ = timed(["sha256sum", str(module)])
            gz, _ = timed(["sh", "-c", f"gzip -6 -c {module} > /dev/null"])
            floor.append(sha + gz)
        ours_med, floor_med = statistics.median(ours), statistics.median(floor)
        print(f"module: {module.stat().st_size / 2**20:.1f} MiB, {args.repeat} runs, medians")
        print(f"wasmctr build:        {ours_med:6.2f} s   peak RSS {max(rss) / 1024:5.1f} MiB")
        print(f"floor (sha256+gzip):  {floor_med:6.2f} s")
        print(f"ratio:                {ours_med / floor_med:6.2f}x   (aim <= 1.5x; peak RSS aim < 60 MiB)")


if __name__ == "__main__":
    main()
