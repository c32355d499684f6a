"""Benchmark the containerd shim against runc on one containerd, in one run.

1. latency: `ctr run --rm` of the hello wasm image through containerd-shim-wasmctr-v1 vs a busybox
   `echo` through runc (aim <= 1.0x runc), and how much of the difference is the interpreter's start
   on each of the shim binary's two runs per container, against a start of runc's Go shim binary;
2. density: 50 idle containers of one pod (guests asleep), total PSS of the shim and its container
   processes / 50 (aim <= 5 MiB per container); and 8 pods, each running a guest with 3 MiB of
   compiled code it has run once: what each pod adds (the code is mapped from the compile cache, so
   the pods share it through the page cache);
3. throughput: 100 containers, 4 at a time, tasks per second (aim >= 10), and runc's in the same run.

Needs Debian's containerd, runc, docker-registry and busybox-static, and zig (pip install ziglang).

    python bench/shim.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from common import compile_sources, exec_ms, pss_kib  # noqa: E402
from services import Containerd, RegistryProcess  # noqa: E402
from synth import big_code_module  # noqa: E402

POD = ["--annotation", "io.kubernetes.cri.sandbox-id=bench-pod"]


@dataclass
class Lab:
    """A registry and a containerd with the hello and sleeper wasm images pulled, and a busybox rootfs."""

    containerd: Containerd
    refs: dict[str, str]
    busybox: Path

    def ctr_run(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.containerd.socket), "run", "--rm", *args]

    def wasm(self, *runtime: str) -> list[str]:
        return self.ctr_run(*runtime, "--platform", "wasi/wasm", self.refs["hello"])

    def runc(self) -> list[str]:
        return self.ctr_run("--rootfs", str(self.busybox))


@contextlib.contextmanager
def lab(root: Path) -> Iterator[Lab]:
    if not shutil.which("busybox") and not Path("/bin/busybox").exists():
        sys.exit("needs busybox-static (apt-get install busybox-static)")
    python = sys.executable
    wasmctr = str(Path(python).parent / "wasmctr")
    registry = RegistryProcess(root / "registry").start()
    containerd = Containerd(root / "ctd").start()
    try:
        env = {**os.environ, "WASMCTR_HOME": str(root / "store")}
        hello, sleeper, big = root / "hello.wasm", root / "hostile.wasm", root / "big.wasm"
        zig = [python, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s", "-o"]
        subprocess.run([*zig, str(hello), str(REPO / "examples/hello/hello.c")], check=True)
        subprocess.run([*zig, str(sleeper), str(REPO / "tests/guests/hostile.c")], check=True)
        big_code_module(big, functions=800, body_ops=200, sleep_seconds=600)
        refs = {"hello": f"{registry.host}/hello:1", "sleeper": f"{registry.host}/sleeper:1",
                "big": f"{registry.host}/big:1"}
        for path, ref in ((hello, refs["hello"]), (sleeper, refs["sleeper"]), (big, refs["big"])):
            subprocess.run([wasmctr, "build", str(path), "-t", ref, "--push", "--precompile", "-q"], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            containerd.ctr("image", "pull", "--plain-http", "--platform", "wasi/wasm", ref, check=True)
        rootfs = root / "busybox"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
        yield Lab(containerd, refs, rootfs)
    finally:
        containerd.stop()
        registry.stop()


def latency(ours: list[str], theirs: list[str], repeat: int) -> tuple[float, float]:
    """Median wall time of `ctr run --rm` through ours and runc, alternating; two warm-up rounds."""
    def timed(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    ours_times, runc_times = [], []
    for n in range(repeat + 2):
        w = timed(_named(ours, f"lat-w-{n}"))
        r = timed(_named(theirs, f"lat-r-{n}", "/bin/busybox", "echo", "hi"))
        if n >= 2:
            ours_times.append(w)
            runc_times.append(r)
    return statistics.median(ours_times), statistics.median(runc_times)


def _named(argv: list[str], name: str, *command: str) -> list[str]:
    return [*argv, name, *command]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--total", type=int, default=100)
    args = parser.parse_args()
    compile_sources()
    with tempfile.TemporaryDirectory() as tmp, lab(Path(tmp)) as setup:
        wasm_lat, runc_lat = latency(setup.wasm("--runtime", "io.containerd.wasmctr.v1"), setup.runc(), args.repeat)
        print(f"latency: wasmctr shim {wasm_lat * 1000:5.0f} ms   runc busybox echo {runc_lat * 1000:5.0f} ms   "
              f"ratio {wasm_lat / runc_lat:.2f}x (aim <= 1.0x)")
        interpreter = exec_ms([sys.executable, "-c", "pass"])
        go = exec_ms(["containerd-shim-runc-v2", "-v"])
        at_go = wasm_lat * 1000 - 2 * (interpreter - go)
        print(f"  the shim binary runs twice per container (start, delete): an interpreter's start is "
              f"{interpreter:.0f} ms, a start of runc's Go shim binary {go:.0f} ms; at Go's cost ours would be "
              f"{at_go:.0f} ms, {at_go / (runc_lat * 1000):.2f}x")
        containerd = setup.containerd
        for n in range(args.idle):
            subprocess.run(["ctr", "--address", str(containerd.socket), "run", "-d", *POD, "--runtime",
                            "io.containerd.wasmctr.v1", "--platform", "wasi/wasm", setup.refs["sleeper"],
                            f"idle-{n}", "/hostile.wasm", "sleep", "600"], check=True, stdout=subprocess.DEVNULL)
        time.sleep(1)
        pids = subprocess.run(["pgrep", "-f", f"wasmctr_node.containerd .*-address {containerd.socket}"],
                              capture_output=True, text=True).stdout.split()
        total = sum(pss_kib(pid) for pid in pids)
        print(f"density: {args.idle} idle containers in one pod, {len(pids)} processes, total PSS "
              f"{total / 1024:.1f} MiB = {total / 1024 / args.idle:.2f} MiB per container (aim <= 5 MiB)")
        for n in range(args.idle):
            containerd.ctr("task", "kill", "--signal", "SIGKILL", f"idle-{n}")
        time.sleep(1)
        for n in range(args.idle):
            containerd.ctr("task", "delete", f"idle-{n}")
            containerd.ctr("container", "delete", f"idle-{n}")
        per_pod = big_code_pods(setup, args.pods)
        print(f"density: {args.pods} pods each running a guest with 3 MiB of code: {per_pod / 1024:.2f} MiB PSS "
              "per pod")
        ours = setup.wasm("--runtime", "io.containerd.wasmctr.v1")
        wasm_rate = throughput([_named(ours, f"tp-{n}") for n in range(args.total)])
        runc_rate = throughput([_named(setup.runc(), f"tp-runc-{n}", "/bin/busybox", "echo", "hi")
                                for n in range(args.total)])
        print(f"throughput: {args.total} containers, 4 at a time: wasmctr shim {wasm_rate:.1f}/s   runc busybox "
              f"echo {runc_rate:.1f}/s   ratio {wasm_rate / runc_rate:.2f}x (aim >= 10/s)")


def big_code_pods(setup: Lab, pods: int) -> float:
    """KiB of PSS each pod adds while running the big-code guest: the shim processes' total (template,
    pod shims, guests) with the pods, less the template's alone before them, over the number of pods."""
    containerd = setup.containerd

    def processes() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"wasmctr_node.containerd .*-address {containerd.socket}"],
                              capture_output=True, text=True).stdout.split()

    deadline = time.monotonic() + 60
    while len(processes()) > 1 and time.monotonic() < deadline:  # earlier pods' shims linger, then exit
        time.sleep(0.5)
    before = sum(pss_kib(pid) for pid in processes())
    for n in range(pods):
        subprocess.run(["ctr", "--address", str(containerd.socket), "run", "-d", "--annotation",
                        f"io.kubernetes.cri.sandbox-id=big-pod-{n}", "--runtime", "io.containerd.wasmctr.v1",
                        "--platform", "wasi/wasm", setup.refs["big"], f"big-{n}"], check=True,
                       stdout=subprocess.DEVNULL)
    time.sleep(4)  # each guest has run its code and sleeps
    added = sum(pss_kib(pid) for pid in processes()) - before
    for n in range(pods):
        containerd.ctr("task", "kill", "--signal", "SIGKILL", f"big-{n}")
    time.sleep(1)
    for n in range(pods):
        containerd.ctr("task", "delete", f"big-{n}")
        containerd.ctr("container", "delete", f"big-{n}")
    return added / pods


def throughput(commands: list[list[str]]) -> float:
    """Containers per second, running the commands 4 at a time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda argv: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL), commands))
    return len(commands) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
