"""Benchmark Kubernetes pods through containerd's CRI plugin: wasmctr pods against runc pods, one run.

1. pod start: RunPodSandbox -> CreateContainer -> StartContainer -> the container has exited, for a
   wasm pod (the hello C module) under each wasmctr runtime handler (`wasmctr`: a shim per pod;
   `wasmctr-shared`: one shim for all pods) and a busybox pod (`echo`, handler `runc`), in turn, same
   containerd; median (aim: wasm <= 1.2x runc);
2. memory: what each pod adds to the node, with one running container per pod, over several pods at
   once (aim: wasmctr <= runc's + 4 MiB): the PSS of every process of the runtime (its shims and
   everything below them: pause, the containers) with the pods running, minus the same with none, per
   pod. PSS splits each shared page among its sharers, so the sum is the memory these processes hold,
   and the difference is what the pods added. For wasmctr the processes include the node-wide template
   (the shims' parent); what it holds with no pod at all is printed apart, a cost per node, as
   containerd's own is. The shared runtime's one shim starts with the first pod and is counted in the
   difference, spread over the pods.

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


def runtime_processes(handler: str, containerd_socket: Path) -> list[int]:
    """Every process of one runtime for this containerd: its shims (for wasmctr, the template they
    are forked from) and everything below them."""
    if handler == "runc":
        return subtree(pgrep(f"containerd-shim-runc-v2 .*-address {containerd_socket}"))
    found = pgrep(f"wasmctr_node.containerd .*-address {containerd_socket} ")
    return subtree([pid for pid in found if ppid(pid) not in found])  # the template, and spawned shims


def is_template(pid: int) -> bool:
    return Path(f"/proc/{pid}/cmdline").read_bytes().endswith(b"\0template\0")


def settled_pss(handler: str, containerd_socket: Path, timeout: float = 30) -> int:
    """The runtime's PSS once the shims of earlier pods have gone (they linger a little)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = runtime_processes(handler, containerd_socket)
        templates = [pid for pid in pids if ppid(pid) not in pids and is_template(pid)]
        if len(pids) == len(templates) or time.monotonic() > deadline:
            return sum(pss_kib(pid) for pid in pids)
        time.sleep(0.2)


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
        wasm_handlers = ("wasmctr", "wasmctr-shared")
        for handler in (*wasm_handlers, "runc"):  # compile cache, template
            image, args = (refs["busybox"], ["echo", "w"]) if handler == "runc" else (refs["hello"], ["warm"])
            node.remove_pod(run_to_exit(node, handler, image, args, f"warm-{handler}")[1])
        times: dict[str, list[float]] = {"wasmctr": [], "wasmctr-shared": [], "runc": []}
        for i in range(opts.pods):
            order = ("wasmctr", "runc", "wasmctr-shared")
            for handler in order[i % 3:] + order[:i % 3]:
                image, args = (refs["busybox"], ["echo", "x"]) if handler == "runc" else (refs["hello"], ["bench"])
                elapsed, pod = run_to_exit(node, handler, image, args, f"{handler}-{i}")
                times[handler].append(elapsed)
                node.remove_pod(pod)
        medians = {handler: statistics.median(spent) * 1000 for handler, spent in times.items()}
        print(f"pod start (RunPodSandbox -> container exited), median of {opts.pods}:")
        for handler, spent in times.items():
            print(f"  {handler:14s} {medians[handler]:4.0f} ms (range {min(spent) * 1000:.0f}-{max(spent) * 1000:.0f})"
                  + ("" if handler == "runc" else f": {medians[handler] / medians['runc']:.2f}x runc (aim <= 1.2x)"))

        per_pod = {}
        for handler in (*wasm_handlers, "runc"):
            image = refs["busybox"] if handler == "runc" else refs["sleeper"]
            idle = settled_pss(handler, containerd.socket)
            pods = []
            for i in range(opts.resident):
                pod, config = node.run_pod(f"resident-{handler}-{i}", handler=handler)
                container = node.create(pod, config, "c", image, ["sleep", "120"])
                node.start(container)
                pods.append(pod)
            time.sleep(2)
            pids = runtime_processes(handler, containerd.socket)
            total = sum(pss_kib(pid) for pid in pids)
            if os.environ.get("BENCH_DEBUG"):  # where the memory is
                for pid in sorted(pids):
                    comm = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}").exists() else "?"
                    print(f"    {handler} pid {pid} {comm}: {pss_kib(pid) / 1024:.1f} MiB")
            per_pod[handler] = (total - idle) / opts.resident / 1024
            if handler == "wasmctr":
                print(f"node-wide template, no pods: {idle / 1024:.1f} MiB PSS")
            for pod in pods:
                node.remove_pod(pod)
        print(f"PSS added per pod with one running container ({opts.resident} pods at once): runc "
              f"{per_pod['runc']:.1f} MiB")
        for handler in wasm_handlers:
            print(f"  {handler:14s} {per_pod[handler]:.1f} MiB: +{per_pod[handler] - per_pod['runc']:.1f} MiB "
                  f"(aim <= +4 MiB)")
        node.close()
    finally:
        if containerd is not None:
            containerd.stop()
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
