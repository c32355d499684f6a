"""Start-up: a command imports only what it uses. Each command runs under `python -X importtime`, and the
modules it must not pay for (the engine, the registry stack, progress bars, the shim's protobuf, layer
compression, building) are checked absent. Timings are bench/'s business (bench/startup.py); this is
the behaviour that keeps them: a new top-level import of a heavy module fails here."""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wasmctr


def modules_of(package: str) -> set[str]:
    """A part of wasmctr, every module of it as found on disk: a module added to it, or moved into it, is
    counted without an edit here."""
    found = importlib.util.find_spec(package)
    assert found is not None and found.submodule_search_locations, package
    return {package} | {f"{package}.{m.name}" for m in pkgutil.iter_modules(found.submodule_search_locations)}


ENGINE = {"wasmtime"}
REGISTRY = {"requests", "oras", "urllib3", "docker"} | modules_of("wasmctr.registry")
PRESENTATION = {"rich"}
SHIM = {"google.protobuf"} | modules_of("wasmctr_node")
LAYERS = {"tarfile", "gzip", "zstandard"} | modules_of("wasmctr.layers")
BUILDING = modules_of("wasmctr.building")
ISOLATION = {"pickle", "wasmctr.running.isolated"} | modules_of("wasmctr.sandbox")


def imported(*args: str) -> set[str]:
    """The modules `wasmctr ARGS` imports, as python -X importtime lists them."""
    code = "import sys; sys.argv[0] = 'wasmctr'; from wasmctr.cli import main; main()"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return importtime_names(proc.stderr)


def importtime_names(stderr: str) -> set[str]:
    """The module names in `python -X importtime`'s report."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")
            and "|" in line}


def heavy(found: set[str], *groups: set[str]) -> set[str]:
    """Which of the groups' modules (or their submodules) were imported."""
    return {name for name in found for group in groups for module in group
            if name == module or name.startswith(module + ".")}


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"], ["images"], ["images", "-q"],
                                  ["image", "prune"]])
def test_listing_and_help_import_no_engine_registry_layers_or_building(args: list[str]) -> None:
    assert heavy(imported(*args), ENGINE, REGISTRY, PRESENTATION, SHIM, LAYERS, BUILDING, ISOLATION) == set()


def test_a_warm_run_of_a_module_imports_only_the_engine(hello_c_wasm: Path) -> None:
    wasmctr("build", str(hello_c_wasm), "-t", "warm:1")
    wasmctr("run", "warm:1")  # unpacked and compiled: the next run is warm
    found = imported("run", "warm:1")
    assert "wasmtime" in found
    assert heavy(found, REGISTRY, PRESENTATION, SHIM, LAYERS, BUILDING, ISOLATION) == set()
    assert heavy(found, {"wasmtime.component"}) == set(), "component support is loaded only for components"


def test_inspect_and_tag_read_the_store_only(hello_c_wasm: Path) -> None:
    wasmctr("build", str(hello_c_wasm), "-t", "look:1")
    for args in (["inspect", "look:1"], ["tag", "look:1", "look:2"]):
        assert heavy(imported(*args), ENGINE, REGISTRY, PRESENTATION, SHIM, BUILDING, ISOLATION) == set(), args


def test_the_shim_binary_imports_nothing_but_what_it_needs_to_reach_its_template() -> None:
    """containerd runs it twice per container: `shim/containerd.py` keeps to os, sys, types, zlib, _socket."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import wasmctr_node.containerd"],
                          capture_output=True, text=True, timeout=60)
    light = {"google.protobuf", "socket", "json", "re", "hashlib", "wasmctr", "typing", "dataclasses"}
    assert heavy(importtime_names(proc.stderr), ENGINE, REGISTRY, PRESENTATION, light) == set()


def test_the_seccomp_filters_load_libseccomp_without_ctypes_util() -> None:
    """Every container process imports them (`wasmctr-runtime create` once per container): ctypes.util's
    find_library imports shutil, subprocess and tempfile and runs `ldconfig -p` (pyseccomp's 26 ms)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import wasmctr.sandbox.seccomp"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert heavy(importtime_names(proc.stderr), {"ctypes.util", "subprocess", "shutil", "tempfile"}) == set()
