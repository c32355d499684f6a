"""The shipped examples build: the C hello compiled with zig, its Dockerfile, and Dockerfile.example."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, wasmctr


def test_hello_example_builds_from_its_dockerfile(hello_c_wasm: Path) -> None:
    wasmctr("build", str(REPO / "examples" / "hello"), "-t", "hello:1")
    info = json.loads(wasmctr("inspect", "hello:1", "--json").stdout)
    assert info["config"]["config"]["Entrypoint"] == ["/hello.wasm"]
    assert info["config"]["config"]["Env"] == ["GREETING=Hello"]
    imports = info["wasm"]["imports"]
    assert "wasi_snapshot_preview1.fd_write" in imports
    assert all(name.startswith("wasi_snapshot_preview1.") for name in imports)
    human = wasmctr("inspect", "hello:1").stdout
    assert "Program:     /hello.wasm (module)" in human and "wasi_snapshot_preview1.fd_write" in human


def test_dockerfile_example_builds_with_build_args(hello_c_wasm: Path) -> None:
    wasmctr("build", "-f", str(REPO / "Dockerfile.example"), str(REPO), "-t", "example:1", "--build-arg",
            "GREETING=Hi")
    config = json.loads(wasmctr("inspect", "example:1", "--json").stdout)["config"]["config"]
    assert config["Env"] == ["GREETING=Hi"]
    assert config["Entrypoint"] == ["/bin/hello.wasm"] and config["Cmd"] == ["world"]
    assert config["Labels"]["org.opencontainers.image.title"] == "hello"


def test_zig_builds_are_reproducible(hello_c_wasm: Path, tmp_path: Path) -> None:
    first = wasmctr("build", str(hello_c_wasm), "-t", "h:1", env={"WASMCTR_HOME": str(tmp_path / "a")})
    second = wasmctr("build", str(hello_c_wasm), "-t", "h:1", env={"WASMCTR_HOME": str(tmp_path / "b")})
    assert first.stdout == second.stdout
