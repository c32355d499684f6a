"""Benchmark Kubernetes pods through containerd's CRI plugin: wasmctr pods against runc pods, one run.

1. pod start: RunPodSandbox -> CreateContainer -> StartContainer -> the container has exited, for a
   wasm pod (the hello C module, runtime handler `wasmctr`) and a busybox pod (`echo`, handler `runc`),
   alternating, same containerd; median (aim: wasm <= 1.2x runc);
2. memory: PSS of every process a pod costs (its shim and everything below it: pause, the container)
   with one running container per pod, over several pods at once, per pod (aim: <= runc's + 4 MiB).
   For wasmctr the node-wide template process (the shims' parent) is counted too, shared by the pods.

Needs Debian's containerd, runc, docker-registry, skopeo and busybox-static, and zig (pip install ziglang).

    python bench/cri.py [--pods 10] [--resident 5]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from common import compile_sources, pss_kib  # noqa: E402
from cri.node import Node, node_config, node_images  # noqa: E402
from services import Containerd, RegistryProcess, ppid  # noqa: E402


def children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            tree.setdefault(ppid(int(entry)), []).append(int(entry))
    return tree


def subtree(roots: list[int]) -> list[int]:
    tree, found, stack = children(), [], list(roots)
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def pgrep(pattern: str) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()]


def run_to_exit(node: Node, handler: str, image: str, args: list[str], name: str) -> tuple[float, str]:
    marks = [time.perf_counter()]
    pod, config = node.run_pod(name, handler=handler)
    marks.append(time.perf_counter())
    container = node.create(pod, config, "c", image, args)
    marks.append(time.perf_counter())
    node.start(container)
    marks.append(time.perf_counter())
    status = node.wait_exited(container)
    marks.append(time.perf_counter())
    if status.exit_code != 0:
        sys.exit(f"{handler} pod failed: {status}")
    if os.environ.get("BENCH_DEBUG"):
        names = ("RunPodSandbox", "CreateContainer", "StartContainer", "exited")
        steps = ", ".join(f"{step} {(b - a) * 1000:.0f}"
                          for step, a, b in zip(names, marks[:-1], marks[1:], strict=True))
        print(f"    {handler}: {steps} ms")
    return marks[-1] - marks[0], pod


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10, help="pods of each kind for the start time")
    parser.add_argument("--resident", type=int, default=5, help="pods of each kind running at once for memory")
    opts = parser.parse_args()
    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="wasmctr-bench-cri-"))
    registry = RegistryProcess(work / "registry").start()
    containerd = None
    try:
        host = registry.host
        refs = {**node_images(work, host), "hello": f"{host}/hello:1", "sleeper": f"{host}/sleeper:1"}
        hello = work / "hello.wasm"
        subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s", "-o", str(hello),
                        str(REPO / "examples" / "hello" / "hello.c")], check=True)
        sleeper = work / "hostile.wasm"
        subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s", "-o",
                        str(sleeper), str(REPO / "tests" / "guests" / "hostile.c")], check=True)
        env = {**os.environ, "WASMCTR_HOME": str(work / "store")}
        exe = str(Path(sys.executable).parent / "wasmctr")
        for wasm, ref in ((hello, refs["hello"]), (sleeper, refs["sleeper"])):
            subprocess.run([exe, "build", str(wasm), "-t", ref, "--push", "-q"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        containerd = Containerd(work / "ctd", extra_config=node_config(host, refs["pause"])).start()
        node = Node(containerd.socket, work / "logs")
        for ref in refs.values():
            node.pull(ref)
        run_to_exit(node, "wasmctr", refs["hello"], ["warm"], "warm-wasm")  # first pod: compile cache, template
        run_to_exit(node, "runc", refs["busybox"], ["echo", "warm"], "warm-runc")
        times: dict[str, list[float]] = {"wasmctr": [], "runc": []}
        for i in range(opts.pods):
            for handler in ("wasmctr", "runc") if i % 2 == 0 else ("runc", "wasmctr"):
                image, args = (refs["hello"], ["bench"]) if handler == "wasmctr" else (refs["busybox"], ["echo", "x"])
                elapsed, pod = run_to_exit(node, handler, image, args, f"{handler}-{i}")
                times[handler].append(elapsed)
                node.remove_pod(pod)
        wasm_ms, runc_ms = (statistics.median(times[h]) * 1000 for h in ("wasmctr", "runc"))
        print(f"pod start (RunPodSandbox -> container exited), median of {opts.pods}:")
        print(f"  wasmctr {wasm_ms:.0f} ms (range {min(times['wasmctr']) * 1000:.0f}-"
              f"{max(times['wasmctr']) * 1000:.0f}), runc {runc_ms:.0f} ms (range "
              f"{min(times['runc']) * 1000:.0f}-{max(times['runc']) * 1000:.0f}): {wasm_ms / runc_ms:.2f}x runc "
              "(aim <= 1.2x)")

        per_pod = {}
        for handler, image, args, shim in (
                ("wasmctr", refs["sleeper"], ["sleep", "120"], f"shim.containerd .*-address {containerd.socket} "),
                ("runc", refs["busybox"], ["sleep", "120"], f"containerd-shim-runc-v2 .*-address {containerd.socket}")):
            before = set(pgrep(shim))
            pods = []
            for i in range(opts.resident):
                pod, config = node.run_pod(f"resident-{handler}-{i}", handler=handler)
                container = node.create(pod, config, "c", image, args)
                node.start(container)
                pods.append(pod)
            time.sleep(2)
            shims = sorted(set(pgrep(shim)) - before) or pgrep(shim)
            pids = set(subtree(shims))  # a guest matches the pattern too (its shim's command line): once
            total = sum(pss_kib(pid) for pid in pids)
            if os.environ.get("BENCH_DEBUG"):  # where the memory is
                for pid in sorted(pids):
                    comm = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}").exists() else "?"
                    print(f"    {handler} pid {pid} {comm}: {pss_kib(pid) / 1024:.1f} MiB")
            per_pod[handler] = total / opts.resident / 1024
            for pod in pods:
                node.remove_pod(pod)
        print(f"PSS per pod with one running container ({opts.resident} pods at once): wasmctr "
              f"{per_pod['wasmctr']:.1f} MiB, runc {per_pod['runc']:.1f} MiB: "
              f"+{per_pod['wasmctr'] - per_pod['runc']:.1f} MiB (aim <= +4 MiB)")
        node.close()
    finally:
        if containerd is not None:
            containerd.stop()
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
