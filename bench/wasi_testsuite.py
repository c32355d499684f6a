"""Run the public WASI test suite's wasip1 tests under `wasmctr run` and under bare wasmtime (wasmtime-py,
in-process), side by side, mapped as the suite's own wasmtime adapter maps them: `env` as variables,
`args` after the module, `root` (relative to the test's directory) granted at `/`.

Give it a checkout of WebAssembly/wasi-testsuite, branch prod/testsuite-base (its `tests/*/testsuite/
wasm32-wasip1/*.wasm` are prebuilt; each has a JSON spec: args, env, root, exit_code, stdout):

    git clone -b prod/testsuite-base https://github.com/WebAssembly/wasi-testsuite
    python bench/wasi_testsuite.py wasi-testsuite

It prints, per suite (C, Rust, AssemblyScript), how many pass under each, and every test whose outcome
differs between the two.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from bare import run_bare  # noqa: E402

WASMCTR = str(Path(sys.executable).parent / "wasmctr")


def spec_of(test: Path) -> dict:  # type: ignore[type-arg]
    path = test.with_suffix(".json")
    spec = json.loads(path.read_text()) if path.exists() else {}
    return {"args": spec.get("args") or [], "env": spec.get("env") or {}, "root": spec.get("root"),
            "exit_code": spec.get("exit_code", 0), "stdout": spec.get("stdout")}


def fresh_root(test: Path, root: str | None, work: Path) -> Path | None:
    """A copy of the test's root directory: tests write to it, and each run starts from the original."""
    if root is None:
        return None
    copy = work / f"{test.stem}-{len(list(work.iterdir()))}"
    shutil.copytree(test.parent / root, copy, symlinks=True)
    for cleanup in copy.rglob("*.cleanup"):
        cleanup.unlink()
    return copy


def under_wasmctr(test: Path, spec: dict, root: Path | None) -> tuple[int, str]:  # type: ignore[type-arg]
    argv = [WASMCTR, "run", "-q", *(a for k, v in spec["env"].items() for a in ("-e", f"{k}={v}")),
            *(["-v", f"{root}:/"] if root else []), str(test), *spec["args"]]
    proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=120)
    return proc.returncode, proc.stdout


def under_wasmtime(test: Path, spec: dict, root: Path | None, work: Path) -> tuple[int, str]:  # type: ignore[type-arg]
    out = work / "stdout"
    code = run_bare(test, spec["args"], spec["env"], root, out)
    return code, out.read_text(errors="replace") if out.exists() else ""


def main() -> None:
    suite = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if suite is None or not (suite / "tests").is_dir():
        sys.exit("usage: python bench/wasi_testsuite.py PATH-TO-wasi-testsuite (branch prod/testsuite-base)")
    work = Path(tempfile.mkdtemp(prefix="wasmctr-wasi-testsuite-"))
    differing = []
    try:
        for language in sorted(p.name for p in (suite / "tests").iterdir() if p.is_dir()):
            tests = sorted((suite / "tests" / language / "testsuite" / "wasm32-wasip1").glob("*.wasm"))
            passed = {"wasmctr": 0, "wasmtime": 0}
            for test in tests:
                spec = spec_of(test)
                outcomes = {
                    "wasmctr": under_wasmctr(test, spec, fresh_root(test, spec["root"], work)),
                    "wasmtime": under_wasmtime(test, spec, fresh_root(test, spec["root"], work), work)}
                verdicts = {}
                for runner, (code, stdout) in outcomes.items():
                    verdicts[runner] = code == spec["exit_code"] and (spec["stdout"] is None
                                                                       or stdout == spec["stdout"])
                    passed[runner] += verdicts[runner]
                if verdicts["wasmctr"] != verdicts["wasmtime"]:
                    differing.append(f"{language}/{test.stem}: wasmctr {outcomes['wasmctr'][0]}, "
                                     f"wasmtime {outcomes['wasmtime'][0]}, expected {spec['exit_code']}")
            if tests:
                print(f"{language:15} {len(tests):3} tests: wasmctr passes {passed['wasmctr']}, "
                      f"bare wasmtime {passed['wasmtime']}")
        print("differing:", "none" if not differing else "")
        for line in differing:
            print("  " + line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
