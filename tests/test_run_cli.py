"""`wasmctr run` as a Docker-like command: images (built, artifacts, components, pulled from a
registry), entrypoints (runwasi's `#export` too), arguments, environment and exit codes as Docker's,
exit 125 for what fails before the guest starts, the compile cache, and the WASI test suite's cases
passing as under bare wasmtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
from conftest import assert_one_line_error, run, wasmctr


def test_hash_entrypoint_runs_that_export(tmp_path: Path) -> None:
    """runwasi's `/module.wasm#func`, through --entrypoint: modules and components; a missing export,
    one that is not a function or one that takes arguments fails before the guest starts, naming the
    exports there are."""
    from conftest import FUNC_WAT

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.wasm").write_bytes(wasmtime.wat2wasm(FUNC_WAT))
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY app.wasm /app.wasm\nENTRYPOINT ["/app.wasm"]\n')
    wasmctr("build", str(ctx), "-t", "func:1")
    assert run("func:1").stdout == "from _start\n"
    assert run("--entrypoint", "/app.wasm#hello", "func:1").stdout == "from hello\n"
    for entry, why in (("nope", "the guest has no export 'nope'; it exports: _start, add, hello, memory"),
                       ("memory", "export 'memory' is not a function"),
                       ("add", "export 'add' takes arguments; an entrypoint function must take none")):
        proc = run("--entrypoint", f"/app.wasm#{entry}", "func:1")
        assert proc.returncode == 125 and proc.stderr.strip() == f"wasmctr: error: {why}", proc.stderr
    component = ctx / "app.wasm"
    component.write_bytes(wasmtime.wat2wasm("""
        (component
          (core module $m (func (export "hello")))
          (core instance $i (instantiate $m))
          (func $hello (canon lift (core func $i "hello")))
          (export "hello" (func $hello)))"""))
    wasmctr("build", str(ctx), "-t", "func-component:1")
    assert run("--entrypoint", "/app.wasm#hello", "func-component:1").returncode == 0
    missing = run("--entrypoint", "/app.wasm#nope", "func-component:1")
    assert missing.returncode == 125 and "it exports: hello" in missing.stderr


WASI_CASES = ["clocks", "seek-and-read", "write-at", "access-bounds", "directories", "identities", "sockets"]


@pytest.fixture(scope="module")
def wasi_cases_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import REPO, zig_cc

    return zig_cc(REPO / "tests" / "guests" / "wasi_cases.c", tmp_path_factory.mktemp("wasi-cases") / "cases.wasm")


@pytest.mark.parametrize("case", WASI_CASES)
def test_wasi_test_suite_cases_pass_as_under_bare_wasmtime(wasi_cases_wasm: Path, tmp_path: Path, case: str) -> None:
    """The behaviours the public WASI test suite's C tests check (tests/guests/wasi_cases.c; the whole
    suite runs with bench/wasi_testsuite.py), mapped as its wasmtime adapter maps them (root at `/`):
    each case passes under `wasmctr run` and under bare wasmtime alike."""
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "scratch").mkdir()
    (root / "data.txt").write_text("01234567")
    for name in ("a", "b"):
        (root / "dir" / name).touch()
    proc = run("-v", f"{root}:/", str(wasi_cases_wasm), case)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stdout + proc.stderr

    from bare import run_bare

    out = tmp_path / "bare.out"
    assert run_bare(wasi_cases_wasm, [case], {}, root, out) == 0
    assert out.read_text() == "ok\n"


def test_exit_codes_args_env_and_workdir_follow_docker(hello_c_wasm: Path, tmp_path: Path) -> None:
    wasmctr("build", str(hello_c_wasm.parent), "-t", "hello:1")
    default = run("hello:1")
    assert default.returncode == 0 and default.stdout == "Hello, world!\nargc=2\n"
    replaced = run("-e", "GREETING=Hi", "hello:1", "there", "3")
    assert replaced.returncode == 3 and replaced.stdout.startswith("Hi, there!")
    entry = run("--entrypoint", "/hello.wasm", "hello:1")
    assert entry.stdout.endswith("argc=1\n"), "--entrypoint drops the image's Cmd"
    missing = run("--entrypoint", "/nope.wasm", "hello:1")
    assert_one_line_error(missing, 125, "/nope.wasm is not a file in the image")


def test_artifact_image_runs(hostile_wasm: Path) -> None:
    wasmctr("build", str(hostile_wasm), "-t", "art:1", "--format", "artifact")
    proc = run("art:1", "exit", "4")
    assert proc.returncode == 4


def test_component_runs_wasi_cli_run(tmp_path: Path) -> None:
    for value, code in ((0, 0), (1, 1)):
        component = tmp_path / f"c{value}.wasm"
        component.write_bytes(wasmtime.wat2wasm(f"""
            (component
              (core module $m (func (export "run") (result i32) i32.const {value}))
              (core instance $i (instantiate $m))
              (func $run (result (result)) (canon lift (core func $i "run")))
              (instance $runi (export "run" (func $run)))
              (export "wasi:cli/run@0.2.0" (instance $runi)))"""))
        assert run(str(component)).returncode == code
    wasmctr("build", str(tmp_path / "c0.wasm"), "-t", "comp:1", "--format", "artifact")
    assert run("comp:1").returncode == 0


def test_pull_and_run_from_a_registry(plain_registry, hello_c_wasm: Path, tmp_path: Path) -> None:
    ref = f"{plain_registry.host}/runme:1"
    wasmctr("build", str(hello_c_wasm.parent), "-t", ref, "--push")
    proc = run(ref, "registry", env={"WASMCTR_HOME": str(tmp_path / "fresh")})
    assert proc.returncode == 0 and proc.stdout.startswith("Hello, registry!")
    assert_one_line_error(run(f"{plain_registry.host}/absent:1"), 125, f"no image {plain_registry.host}/absent:1 in "
                          "the local store, and pulling it failed:", "not found on the registry")


def test_failures_before_the_guest_starts_exit_125(tmp_path: Path) -> None:
    assert_one_line_error(run("/nonexistent/app.wasm"), 125, "no such file")
    notwasm = tmp_path / "x.wasm"
    notwasm.write_text("#!/bin/sh\n")
    assert_one_line_error(run(str(notwasm)), 125, "not WebAssembly")
    assert_one_line_error(run("127.0.0.1:9/missing-local-image:1", env={"WASMCTR_HOME": str(tmp_path / "h")}), 125,
                          "no image 127.0.0.1:9/missing-local-image:1 in the local store, and pulling it failed: "
                          "cannot reach 127.0.0.1:9")
    assert_one_line_error(run("--memory", "lots", str(notwasm)), 125, "invalid size")
    assert_one_line_error(run("-v", "/nonexistent:/x", str(notwasm)), 125, "not a directory")
    assert_one_line_error(run("--bogus", str(notwasm)), 125, "No such option: --bogus")
    assert_one_line_error(run("--network", "bridge", str(notwasm)), 125, "expected none or host")


def test_compile_cache_is_used_and_a_corrupt_entry_is_rebuilt(hostile_wasm: Path, wasmctr_home: Path) -> None:
    wasmctr("build", str(hostile_wasm), "-t", "cached:1")
    cache = wasmctr_home / "cache" / "compiled"
    assert run("cached:1", "exit", "0").returncode == 0
    (entry,) = cache.glob("*.cwasm")
    inode, mtime = entry.stat().st_ino, entry.stat().st_mtime_ns
    assert run("cached:1", "exit", "0").returncode == 0
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns) == (inode, mtime), "second run did not compile"
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    proc = run("cached:1", "exit", "6")
    assert proc.returncode == 6 and "Traceback" not in proc.stderr
    (rebuilt,) = cache.glob("*.cwasm")
    assert rebuilt.read_bytes() != bytes(data)


def test_build_precompile_fills_the_cache(hostile_wasm: Path, wasmctr_home: Path) -> None:
    wasmctr("build", str(hostile_wasm), "-t", "pre:1", "--precompile")
    (entry,) = (wasmctr_home / "cache" / "compiled").glob("*.cwasm")
    inode = entry.stat().st_ino
    assert run("pre:1", "exit", "0").returncode == 0
    assert entry.stat().st_ino == inode


def test_compile_cache_limit_comes_from_the_environment(hostile_wasm: Path, hello_c_wasm: Path,
                                                        wasmctr_home: Path) -> None:
    assert run(str(hello_c_wasm)).returncode == 0
    assert run(str(hostile_wasm), "exit", "0", env={"WASMCTR_CACHE_MAX": "0"}).returncode == 0
    assert len(list((wasmctr_home / "cache" / "compiled").glob("*.cwasm"))) == 1, "a bound of 0 keeps only the newest"
