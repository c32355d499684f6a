"""Benchmark `wasmctr run`, every figure a ratio against a peer measured in the same run.

1. warm start: `wasmctr run hello` (image precompiled and cached) vs the floor
   `python -c "import wasmtime"` (aim <= 1.3x);
2. compile cache: first vs cached run of a >= 5 MiB module (aim cached <= 0.1x first);
3. CPU: bench/cpu.c as wasm under `wasmctr run` vs the same source built natively by `zig cc`
   (aim <= 1.5x), and what `--fuel` and `--timeout` add.

    python bench/run.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import compile_sources
from synth import big_code_module

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def wall(argv: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process_load(path: Path, home: Path) -> tuple[float, float]:
    """Compile (cold cache) vs load (verified cache hit, new executor) of one module, inside one process."""
    sys.path.insert(0, str(REPO))
    from wasmctr.running.compile_cache import CompileCache
    from wasmctr.running.executor import Executor

    compile_times, load_times = [], []
    for n in range(3):
        cache = CompileCache(home / str(n))
        for executor, times in ((Executor(cache), compile_times), (Executor(cache), load_times)):
            start = time.perf_counter()
            executor.precompile(path)
            times.append(time.perf_counter() - start)
    return statistics.median(compile_times), statistics.median(load_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    compile_sources()
    python = sys.executable
    wasmctr = str(Path(python).parent / "wasmctr")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "WASMCTR_HOME": str(root / "store")}
        zig = [python, "-m", "ziglang", "cc", "-O2"]
        hello = root / "hello.wasm"
        subprocess.run([*zig, "--target=wasm32-wasi", "-s", "-o", str(hello), str(REPO / "examples/hello/hello.c")],
                       check=True)
        subprocess.run([wasmctr, "build", str(hello), "-t", "hello:1", "--precompile", "-q"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        floor = wall([python, "-c", "import wasmtime"], env, args.repeat)
        warm = wall([wasmctr, "run", "hello:1"], env, args.repeat)
        print(f"warm start: wasmctr run hello {warm * 1000:6.0f} ms   python -c 'import wasmtime' "
              f"{floor * 1000:6.0f} ms   ratio {warm / floor:.2f}x (aim <= 1.3x)")

        big = root / "big.wasm"
        big_code_module(big)
        firsts, cached = [], []
        for n in range(max(2, args.repeat // 2)):
            fresh = {**env, "WASMCTR_HOME": str(root / f"cold-{n}")}
            firsts.append(wall([wasmctr, "run", str(big)], fresh, 1))
            cached.append(wall([wasmctr, "run", str(big)], fresh, 1))
        first, again = statistics.median(firsts), statistics.median(cached)
        print(f"compile cache ({big.stat().st_size / 2**20:.1f} MiB module): first run {first:6.2f} s   cached "
              f"{again:6.2f} s   ratio {again / first:.3f}x (aim <= 0.1x)")
        compile_s, load_s = in_process_load(big, root / "inproc")
        print(f"   in process, start-up excluded: compile {compile_s * 1000:6.0f} ms   load from cache "
              f"{load_s * 1000:6.0f} ms   ratio {load_s / compile_s:.3f}x")

        cpu_wasm, cpu_native = root / "cpu.wasm", root / "cpu"
        subprocess.run([*zig, "--target=wasm32-wasi", "-s", "-o", str(cpu_wasm), str(HERE / "cpu.c")], check=True)
        subprocess.run([*zig, "-o", str(cpu_native), str(HERE / "cpu.c")], check=True)
        subprocess.run([wasmctr, "run", str(cpu_wasm), "1"], env=env, check=True, stdout=subprocess.DEVNULL)
        native = wall([str(cpu_native), "6000"], env, args.repeat)
        in_wasm = wall([wasmctr, "run", str(cpu_wasm), "6000"], env, args.repeat)
        with_timeout = wall([wasmctr, "run", "--timeout", "1h", str(cpu_wasm), "6000"], env, args.repeat)
        subprocess.run([wasmctr, "run", "--fuel", "1", str(cpu_wasm), "1"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with_fuel = wall([wasmctr, "run", "--fuel", str(10**15), str(cpu_wasm), "6000"], env, args.repeat)
        print(f"cpu: native {native:6.2f} s   wasm {in_wasm:6.2f} s   ratio {in_wasm / native:.2f}x (aim <= 1.5x)")
        print(f"     --timeout 1h {with_timeout:6.2f} s ({with_timeout / in_wasm:.2f}x)   --fuel "
              f"{with_fuel:6.2f} s ({with_fuel / in_wasm:.2f}x)")


if __name__ == "__main__":
    main()
