"""Start-up at every entry point, each against its peer measured in the same run (issue 15's table).

1. `wasmctr run IMAGE` warm (rootfs unpacked, code cached) vs `python -c "import typer, wasmtime"`, the
   floor of the chosen dependencies, and vs `import wasmtime` alone;
2. an 18 MB componentize-py component (examples/component): `wasmctr build` without and with
   `--precompile`, the first run from a fresh store, and its warm run vs a warm module run;
3. the containerd shim and the runtime CLI: bench/shim.py (latency and containers/s vs runc) and
   bench/runtime.py (`ctr run --runc-binary wasmctr-runtime` vs runc), run after this (`--containers`).

    python bench/startup.py [--repeat 15] [--containers]

Medians of `--repeat` runs; the spread (min-max) is printed beside each, as this machine is noisy.
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

from common import REPO, compile_sources


def runs(argv: list[str], env: dict[str, str], repeat: int, ok: tuple[int, ...] = (0,)) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        if proc.returncode not in ok:
            sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}")
    return times


def show(label: str, times: list[float], peer: list[float] | None = None, peer_label: str = "") -> float:
    median = statistics.median(times) * 1000
    line = f"{label:58s} {median:8.1f} ms  ({min(times) * 1000:.0f}-{max(times) * 1000:.0f})"
    if peer is not None:
        line += f"   {median / (statistics.median(peer) * 1000):.2f}x {peer_label}"
    print(line, flush=True)
    return median


# where a warm `wasmctr run` spends its time, phase by phase, in one interpreter (stdout: the guest's)
PROBE = """
import sys, time
t0 = time.perf_counter()
import typer, wasmtime
t1 = time.perf_counter()
import wasmctr.cli, wasmctr.api, wasmctr.running.launch, wasmctr.running.executor, wasmctr.image.stored
import wasmctr.running.policy, wasmctr.running.streams
t2 = time.perf_counter()
typer.main.get_command(wasmctr.cli.app)
t3 = time.perf_counter()
wasmctr.api.run("hello:1", stdout=-3)
t4 = time.perf_counter()
print(*(round((b - a) * 1000, 1) for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))), file=sys.stderr)
"""
PHASES = ("import typer, wasmtime", "import wasmctr's modules for run", "typer builds the command tree",
          "the run: store, policy, cached code, link, instantiate, guest")


def phases(env: dict[str, str], repeat: int) -> None:
    found: list[list[float]] = [[] for _ in PHASES]
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
        for column, value in zip(found, proc.stderr.splitlines()[-1].split(), strict=True):
            column.append(float(value))
    for label, values in zip(PHASES, found, strict=True):
        print(f"  {label:56s} {statistics.median(values):8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--containers", action="store_true", help="then run bench/shim.py and bench/runtime.py")
    args = parser.parse_args()
    compile_sources()
    bindir = Path(sys.executable).parent
    wasmctr = str(bindir / "wasmctr")
    with tempfile.TemporaryDirectory(prefix="wasmctr-bench-startup-") as scratch:
        work = Path(scratch)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["WASMCTR_HOME"] = str(work / "store")
        hello = work / "hello.wasm"
        subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s", "-o", str(hello),
                        str(REPO / "examples" / "hello" / "hello.c")], check=True)
        subprocess.run([wasmctr, "build", str(hello), "-t", "hello:1", "--precompile", "-q"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        runs([wasmctr, "run", "hello:1"], env, 1)  # unpacked once: from here on, warm

        print("== wasmctr run, warm, against the import floor of its dependencies")
        floor = runs([sys.executable, "-c", "import typer, wasmtime"], env, args.repeat)
        engine = runs([sys.executable, "-c", "import wasmtime"], env, args.repeat)
        warm = runs([wasmctr, "run", "hello:1"], env, args.repeat)
        show('python -c "import typer, wasmtime"', floor)
        show('python -c "import wasmtime"', engine)
        show("wasmctr run hello:1", warm, floor, "the typer+wasmtime floor")
        show("", warm, engine, "import wasmtime alone")
        print("where the time goes (medians; the rest is Python's own start and exit):")
        phases(env, args.repeat)

        print("== an 18 MB componentize-py component")
        component = work / "hello-component.wasm"
        example = REPO / "examples" / "component"
        subprocess.run([str(bindir / "componentize-py"), "-d", str(example / "wit"), "-w", "hello", "componentize",
                        "app", "-o", str(component)], cwd=example, check=True, stdout=subprocess.DEVNULL)
        print(f"component: {component.stat().st_size / 1e6:.1f} MB")
        build = runs([wasmctr, "build", str(component), "-t", "comp:1", "-q"], env, 3)
        show("wasmctr build (compat, validated, not compiled)", build)
        show("wasmctr build --format artifact", runs([wasmctr, "build", str(component), "-t", "comp:a", "-q",
                                                      "--format", "artifact"], env, 3))
        fresh = {**env, "WASMCTR_HOME": str(work / "fresh")}
        subprocess.run([wasmctr, "build", str(component), "-t", "comp:1", "-q"], env=fresh, check=True,
                       stdout=subprocess.DEVNULL)
        show("first run from a fresh store (one compile, then cached)",
             runs([wasmctr, "run", "--network", "host", "comp:1"], fresh, 1))
        pre = {**env, "WASMCTR_HOME": str(work / "pre")}
        show("wasmctr build --precompile (one compile)",
             runs([wasmctr, "build", str(component), "-t", "comp:1", "-q", "--precompile"], pre, 1))
        runs([wasmctr, "run", "--network", "host", "comp:1"], pre, 1)
        warm_component = runs([wasmctr, "run", "--network", "host", "comp:1"], pre, args.repeat)
        show("warm run of the component", warm_component, warm, "a warm module run")

    if args.containers:
        for script in ("shim.py", "runtime.py"):
            print(f"== bench/{script}", flush=True)
            subprocess.run([sys.executable, str(REPO / "bench" / script)], check=True)


if __name__ == "__main__":
    main()
