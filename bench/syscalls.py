"""Measure the host syscalls a container process makes once its guest is prepared: the source of the
allowlist in `wasmctr/sandbox/seccomp.py` (the talk's "only 44 usable syscalls in wasip1": measure!).

Each case runs a container process as the shim does (`wasmctr_node.container.become_guest` with a prepared
guest) under `strace -f`; what it calls after the point where the shim installs the filter is
collected, per case and in all. The cases exercise every kind of WASI call the hostile guest makes
(files read, written, created, renamed, linked, removed; directories listed; stdin and stdout;
sleep; memory growth; traps; a timeout; SIGTERM). It prints the union, and what is missing from or
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

MARKER = 987654  # close(MARKER) fails with EBADF: the line in strace's output where the filter would go

DRIVER = f"""
import os, sys
from pathlib import Path
from wasmctr.image import home
from wasmctr.sandbox import landlock
from wasmctr.running.compile_cache import CompileCache
from wasmctr.running.executor import Executor
from wasmctr.running.spec import Mount, RunSpec
from wasmctr_node.container import become_guest
wasm, data, timeout, args = sys.argv[1], sys.argv[2], float(sys.argv[3]) or None, sys.argv[4:]
# as the shim's: code mapped from the compile cache
executor = Executor(CompileCache(home.compile_cache_dir(home.store_root())), map_cached_code=True)
spec = RunSpec(Path(wasm), ["guest", *args], mounts=[Mount(Path(data), "/data", False)], timeout=timeout,
               memory_limit=64 << 20)
guest = executor.prepare(spec)
ruleset = landlock.ruleset_for(guest.spec)  # made before the fork in the shim, enforced once started
try:
    os.close({MARKER})
except OSError:
    pass
outcome = become_guest(executor, guest, lambda: True, ruleset)
os._exit(outcome.exit_code if outcome else 137)
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
    after = False
    for line in trace.read_text().splitlines():
        if f"close({MARKER})" in line:
            after = True
        elif after and (match := LINE.match(line)):  # a call, or its `<... NAME resumed>` half
            seen.add(match.group(2))
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
