"""Measure the host syscalls a container process makes once its guest is prepared: the source of the
allowlist in `wasmctr/sandbox/seccomp.py` (the talk's "only 44 usable syscalls in wasip1": measure!).

Each case runs a container process as the shim does (`wasmctr.sandbox.container.Container` with a
prepared guest, confined as a spec with no user and no capabilities asks) under `strace -f`; what that
process calls once it is started, its filter installed, is collected, per case and in all (a call the
allowlist lacks is still seen: it fails with EPERM). The cases exercise every kind of WASI call the
hostile guest makes (files read, written, created, renamed, linked, removed; directories listed; stdin
and stdout; sleep; memory growth; traps; a timeout; SIGTERM). It prints the union, and what is missing from or
unused in the allowlist.

    python bench/syscalls.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from wasmctr.sandbox import seccomp  # noqa: E402

MARKER = 987654  # close(MARKER) fails with EBADF: the line in strace's output where the container starts

DRIVER = f"""
import os, sys
from pathlib import Path
from wasmctr.running.executor import Executor
from wasmctr.running.spec import Mount, RunSpec
from wasmctr.sandbox.container import Confinement, Container
wasm, data, timeout, args = sys.argv[1], sys.argv[2], float(sys.argv[3]) or None, sys.argv[4:]
executor = Executor.for_store(map_cached_code=True)  # as the shim's: code mapped from the compile cache
spec = RunSpec(Path(wasm), ["guest", *args], mounts=[Mount(Path(data), "/data", False)], timeout=timeout,
               memory_limit=64 << 20)
guest = executor.prepare(spec)


def started():  # in the container process, its filter installed: what it calls from here is counted
    try:
        os.close({MARKER})
    except OSError:
        pass
    return True


container = Container(executor, guest, Confinement.of_spec({{}}, network=False), speaks_as="wasmctr")
pid = container.fork(started=started)
failure = container.ready(pid)
if failure is not None:
    sys.exit(f"wasmctr: {{failure}}")
os._exit(container.wait(pid).exit_code)
"""

CASES = [
    ("read", ["read", "/data/in.txt"], 0),
    ("write", ["write", "/data/out.txt"], 0),
    ("fs", ["fs", "/data"], 0),
    ("ls", ["ls", "/data"], 0),
    ("cat", ["cat"], 0),
    ("sleep", ["sleep", "1"], 0),
    ("bomb", ["bomb"], 0),
    ("recurse", ["recurse"], 0),
    ("abort", ["abort"], 0),
    ("flood", ["flood", "4"], 0),
    ("timeout", ["spin"], 0.5),
    ("sigterm", ["sleep", "30"], 0),
]

LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")
CHILD = re.compile(r"= (\d+)$")


def measure(wasm: Path, work: Path, name: str, args: list[str], timeout: float) -> set[str]:
    data = work / name
    data.mkdir()
    (data / "in.txt").write_text("hello")
    trace = work / f"{name}.strace"
    proc = subprocess.Popen(["strace", "-f", "-qq", "-s", "0", "-o", str(trace), sys.executable, "-c", DRIVER,
                             str(wasm), str(data), str(timeout), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    if name == "sigterm":
        import time

        time.sleep(3)
        subprocess.run(["pkill", "-TERM", "-f", f"{data} "], check=False)
    proc.communicate(b"some input\n", timeout=120)
    seen: set[str] = set()
    container: set[str] = set()  # the container process's threads, once it is started (not the driver's)
    for line in trace.read_text().splitlines():
        match = LINE.match(line)  # a call, or its `<... NAME resumed>` half
        if match is None:
            continue
        if f"close({MARKER}" in line:  # also its `<unfinished ...>` half, where another thread interleaved
            container.add(match.group(1))
        elif match.group(1) in container:
            seen.add(match.group(2))
            if match.group(2) in ("clone", "clone3") and (child := CHILD.search(line)):  # the guest's thread
                container.add(child.group(1))
    return seen


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="wasmctr-syscalls-"))
    wasm = work / "hostile.wasm"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s", "-o", str(wasm),
                    str(REPO / "tests" / "guests" / "hostile.c")], check=True)
    union: set[str] = set()
    for name, args, timeout in CASES:
        seen = measure(wasm, work, name, args, timeout)
        union |= seen
        print(f"{name:8} {len(seen):3} syscalls")
    # prctl for seccomp.PRCTL_OPTIONS only, clone without CLONE_NEW* flags, clone3 answered ENOSYS
    allowed = set(seccomp.ALLOWED) | set(seccomp.RULED)
    print(f"all cases: {len(union)} distinct syscalls; allowlist: {len(seccomp.ALLOWED)}, and "
          f"{', '.join(seccomp.RULED)} by rule")
    print("used:", " ".join(sorted(union)))
    print("missing from the allowlist:", " ".join(sorted(union - allowed)) or "none")
    print("allowed, not seen here:", " ".join(sorted(allowed - union)) or "none")
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
