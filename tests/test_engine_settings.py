"""Per-workload engine settings (wasm features, optimisation level, fuel, memory, timeout) from image
labels, `wasmctr run` flags and pod annotations, and the compile cache they key: one entry per setting,
a stale or damaged entry compiled again rather than fatal, `image prune --cache`, the size bound."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime
from conftest import assert_one_line_error, run, wasmctr
from services import ctr_run, wait_for_nothing_left

# exits 7 through a SIMD lane: compiles only with SIMD on (wasmtime's default)
SIMD_WAT = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32x4.extract_lane 2 (v128.const i32x4 1 2 7 4)))))"""
# exits 3, with a memory of 1-byte pages: compiles only with custom-page-sizes on (off by default)
PAGES_WAT = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1 (pagesize 1))
  (func (export "_start") (call $exit (i32.const 3))))"""


@pytest.fixture(scope="module")
def simd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("simd") / "simd.wasm"
    path.write_bytes(wasmtime.wat2wasm(SIMD_WAT))
    return path


def entries(home: Path) -> dict[str, Path]:
    return {p.stem: p for p in (home / "cache" / "compiled").glob("*.cwasm")}


def test_a_module_needing_a_feature_runs_only_when_it_is_enabled(simd: Path, tmp_path: Path) -> None:
    assert run(str(simd)).returncode == 7
    assert_one_line_error(run("--wasm-features=-simd", str(simd)), 125, "with wasm-features=-simd",
                          "SIMD support is not enabled")
    pages = tmp_path / "pages.wasm"
    pages.write_bytes(wasmtime.wat2wasm(PAGES_WAT))
    assert_one_line_error(run(str(pages)), 125, "custom page sizes proposal must be enabled")
    assert run("--wasm-features", "custom-page-sizes", str(pages)).returncode == 3


def test_labels_set_a_run_and_flags_override_them(simd: Path, hostile_wasm: Path, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "simd.wasm").write_bytes(simd.read_bytes())
    (context / "Dockerfile").write_text('FROM scratch\nCOPY simd.wasm /simd.wasm\n'
                                        'LABEL io.wasmctr.wasm-features="-simd" io.wasmctr.opt-level=none\n'
                                        'ENTRYPOINT ["/simd.wasm"]\n')
    wasmctr("build", str(context), "-t", "nosimd:1")
    assert_one_line_error(run("nosimd:1"), 125, "with wasm-features=-simd opt-level=none", "SIMD support")
    assert run("--wasm-features", "simd", "nosimd:1").returncode == 7  # the flag's feature over the label's
    # build --label over a bare module; --fuel over the label's budget
    wasmctr("build", str(hostile_wasm), "-t", "budget:1", "--label", "io.wasmctr.fuel=100000")
    spent = run("budget:1", "spin")
    assert spent.returncode == 134 and "all fuel consumed (100000 units)" in spent.stderr, spent.stderr
    spent = run("--fuel", "200000", "budget:1", "spin")
    assert spent.returncode == 134 and "all fuel consumed (200000 units)" in spent.stderr, spent.stderr
    wasmctr("build", str(hostile_wasm), "-t", "short:1", "--label", "io.wasmctr.timeout=200ms",
            "--label", "io.wasmctr.memory=64m")
    stopped = run("short:1", "spin")
    assert stopped.returncode == 137 and "timeout after 0.2s" in stopped.stderr, stopped.stderr


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["run", "--wasm-features", "simd,turbo"], 125, "--wasm-features 'simd,turbo': unknown wasm feature 'turbo'"),
    (["run", "--wasm-features", "simd,-simd"], 125, "simd is named twice"),
    (["run", "--wasm-features=-reference-types"], 125, "cannot turn reference types off"),
    (["run", "--wasm-features=-simd,relaxed-simd"], 125, "relaxed SIMD builds on SIMD"),
    (["run", "--opt-level", "fast"], 125, "--opt-level 'fast': expected one of none, speed, speed_and_size"),
    (["build", "--label", "io.wasmctr.wasm-features=turbo"], 2, "label io.wasmctr.wasm-features 'turbo'"),
    (["build", "--label", "io.wasmctr.speed=max"], 2, "label io.wasmctr.speed: wasmctr reads no such label"),
    (["build", "--label", "io.wasmctr.memory=1k"], 2, "label io.wasmctr.memory 1k: the memory limit must be"),
    (["build", "--label", "io.wasmctr.fuel=lots"], 2, "label io.wasmctr.fuel 'lots': expected a whole number"),
    (["build", "--label", "io.wasmctr.timeout=soon"], 2, "label io.wasmctr.timeout soon: invalid duration"),
])
def test_a_bad_setting_is_one_line_before_the_guest_starts(simd: Path, args: list[str], code: int,
                                                           fragment: str) -> None:
    target = [str(simd)] if args[0] == "run" else [str(simd), "-t", "bad:1"]
    assert_one_line_error(wasmctr(*args[:1], *args[1:], *target, check=False), code, fragment)


def test_two_settings_compile_two_cache_entries(simd: Path, wasmctr_home: Path) -> None:
    assert run(str(simd)).returncode == 7
    (default,) = entries(wasmctr_home).values()
    inode = default.stat().st_ino
    assert run("--opt-level", "none", str(simd)).returncode == 7  # code wasmtime would load for either
    assert run("--wasm-features=-threads", str(simd)).returncode == 7
    assert len(entries(wasmctr_home)) == 3
    assert run(str(simd)).returncode == 7
    assert len(entries(wasmctr_home)) == 3 and default.stat().st_ino == inode, "the default's entry was a hit"


def test_precompile_compiles_with_the_settings_of_the_labels(simd: Path, wasmctr_home: Path) -> None:
    wasmctr("build", str(simd), "-t", "pre:1", "--label", "io.wasmctr.opt-level=none", "--precompile")
    (entry,) = entries(wasmctr_home).values()
    inode = entry.stat().st_ino
    assert run("pre:1").returncode == 7
    assert list(entries(wasmctr_home).values()) == [entry] and entry.stat().st_ino == inode, "the run hit it"


def plant(entry: Path, data: bytes) -> None:
    """An entry as the cache would have written it: its bytes and their digest (so it is loaded)."""
    entry.write_bytes(data)
    entry.with_suffix(".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def test_a_stale_or_damaged_entry_is_compiled_again_not_fatal(simd: Path, wasmctr_home: Path) -> None:
    assert run(str(simd)).returncode == 7
    (entry,) = entries(wasmctr_home).values()
    good = entry.read_bytes()
    version = b"\x0250\x18x86_64"  # the engine section's wasmtime version (50), then the target
    assert good.count(version) == 1
    fuelled = wasmtime.Config()
    fuelled.consume_fuel = fuelled.epoch_interruption = True
    other_engine = wasmtime.Module(wasmtime.Engine(fuelled), wasmtime.wat2wasm(SIMD_WAT)).serialize()
    for stale in (good.replace(version, b"\x0249\x18x86_64"), bytes(other_engine)):
        plant(entry, stale)
        assert run(str(simd)).returncode == 7
        assert entry.read_bytes() == good, "the stale entry was replaced"
    entry.write_bytes(good[:-1] + b"\0")  # its bytes no longer hash to its digest
    assert run(str(simd)).returncode == 7
    assert entry.read_bytes() == good


def test_prune_cache_reclaims_the_compiled_code(simd: Path, wasmctr_home: Path) -> None:
    for level in ("speed", "none"):
        assert run("--opt-level", level, str(simd)).returncode == 7
    pruned = wasmctr("image", "prune", "--cache").stdout
    assert "Deleted 2 compiled entries" in pruned, pruned
    assert not list((wasmctr_home / "cache" / "compiled").iterdir())
    assert run(str(simd)).returncode == 7 and len(entries(wasmctr_home)) == 1


def test_the_size_bound_evicts_the_least_recently_used(simd: Path, wasmctr_home: Path) -> None:
    settings = [["--opt-level", "speed"], ["--opt-level", "none"], ["--wasm-features=-threads"]]
    keys = []
    for flags in settings:
        before = set(entries(wasmctr_home))
        assert run(*flags, str(simd)).returncode == 7
        keys.append((set(entries(wasmctr_home)) - before).pop())
    sizes = {key: path.stat().st_size for key, path in entries(wasmctr_home).items()}
    wasmctr("image", "prune", "--cache")
    bound = {"WASMCTR_CACHE_MAX": str(sum(sizes.values()) - 1)}  # room for two of the three
    for flags in (settings[0], settings[1], settings[0]):  # the second is now the least recently used
        assert run(*flags, str(simd), env=bound).returncode == 7
    assert run(*settings[2], str(simd), env=bound).returncode == 7
    assert set(entries(wasmctr_home)) == {keys[0], keys[2]}
    assert_one_line_error(run(str(simd), env={"WASMCTR_CACHE_MAX": "lots"}), 125, "WASMCTR_CACHE_MAX='lots'")


def test_the_doctor_reads_the_cache_through_its_own_check(simd: Path, wasmctr_home: Path, tmp_path: Path) -> None:
    assert run(str(simd)).returncode == 7
    (entry,) = entries(wasmctr_home).values()
    entry.write_bytes(b"\0" + entry.read_bytes()[1:])
    proc = wasmctr("node", "doctor", "--config", str(tmp_path / "none.toml"), "--address",
                   str(tmp_path / "none.sock"), "--format", "json", check=False)
    (cache,) = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "compile cache"]
    assert cache["verdict"] == "warn" and "1 entries" in cache["detail"] and "1 damaged" in cache["detail"], cache


def test_each_feature_setting_accepted_makes_an_engine() -> None:
    """wasmtime aborts the process on a Config it refuses: what `EngineSettings` accepts must never be one
    (this wasmtime's rules are written there; a new wasmtime with new ones fails here, not in a pod)."""
    script = """
import wasmtime
from wasmctr.errors import UsageError
from wasmctr.running.engine import DEFAULT, FEATURES, OPT_LEVELS
what = {"features": "features", "opt_level": "opt_level"}
made = 0
for name in FEATURES:
    for text in (name, "-" + name, f"-simd,{name}", f"-simd,-{name}"):
        for level in OPT_LEVELS:
            try:
                settings = DEFAULT.overlay(text, level, what)
            except UsageError:
                continue
            for fuel in (False, True):
                wasmtime.Engine(settings.configure(wasmtime.Config(), fuel))
                made += 1
print(made)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) > 300


@pytest.fixture(scope="module")
def simd_image(containerd, plain_registry, simd: Path,  # type: ignore[no-untyped-def]
               tmp_path_factory: pytest.TempPathFactory) -> str:
    ref = f"{plain_registry.host}/engine-simd:1"
    wasmctr("build", str(simd), "-t", ref, "--push", env={"WASMCTR_HOME": str(tmp_path_factory.mktemp("store"))})
    containerd.ctr("image", "pull", "--plain-http", "--platform", "wasi/wasm", ref, check=True)
    return ref


def test_pod_annotations_set_the_engine_under_the_shim(containerd, simd_image: str) -> None:  # type: ignore[no-untyped-def]
    assert ctr_run(containerd, "--rm", simd_image, "engine-1").returncode == 7
    tuned = ctr_run(containerd, "--rm", "--annotation", "wasmctr.io/opt-level=speed_and_size", "--annotation",
                    "wasmctr.io/wasm-features=simd,-threads", simd_image, "engine-2")
    assert tuned.returncode == 7, tuned.stderr
    for name, value, fragment in (("engine-3", "wasmctr.io/wasm-features=-simd", "SIMD support is not enabled"),
                                  ("engine-4", "wasmctr.io/wasm-features=turbo",
                                   "bad wasmctr annotation: wasmctr.io/wasm-features 'turbo': unknown wasm feature"),
                                  ("engine-5", "wasmctr.io/opt-level=fast", "wasmctr.io/opt-level 'fast'")):
        refused = ctr_run(containerd, "--rm", "--annotation", value, simd_image, name)
        assert refused.returncode != 0 and fragment in refused.stderr, refused.stderr
        containerd.ctr("container", "delete", name)
    wait_for_nothing_left(containerd)

