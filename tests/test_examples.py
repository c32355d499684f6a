"""The shipped examples build: the C hello compiled with zig, its Dockerfile, and Dockerfile.example."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, wasmctr, zig_cc


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


def test_hello_round_trip_through_a_registry(plain_registry, hello_c_wasm: Path, tmp_path: Path) -> None:
    ref = f"{plain_registry.host}/examples/hello:1"
    wasmctr("build", str(REPO / "examples" / "hello"), "-t", ref, "--push")
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    wasmctr("pull", ref, env=fresh)
    proc = wasmctr("run", "-e", "GREETING=Howdy", ref, "partner", "9", env=fresh, check=False)
    assert proc.returncode == 9 and proc.stdout == "Howdy, partner!\nargc=3\n"


def test_wc_example_reads_only_the_granted_directory(plain_registry, tmp_path: Path) -> None:
    example = REPO / "examples" / "wc"
    zig_cc(example / "wc.c", example / "wc.wasm")
    ref = f"{plain_registry.host}/examples/wc:1"
    wasmctr("build", str(example), "-t", ref, "--push")
    home = tmp_path / "fresh"
    env = {"WASMCTR_HOME": str(home)}
    wasmctr("pull", ref, env=env)
    wasmctr("tag", ref, "wc:1", env=env)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("one two\nthree\n")
    (data / "b.txt").write_text("four\n")
    proc = wasmctr("run", "-v", f"{data}:/data:ro", "wc:1", "/data/a.txt", "/data/b.txt", env=env)
    assert proc.stdout.split("\n")[:3] == ["      2       3      14 /data/a.txt", "      1       1       5 /data/b.txt",
                                           "      3       4      19 total"]
    denied = wasmctr("run", "wc:1", "/etc/passwd", env=env, check=False)
    assert denied.returncode == 1 and "wc: /etc/passwd:" in denied.stderr
    api = subprocess.run([sys.executable, str(example / "wc_api.py"), str(data), "b.txt"], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=60)
    assert api.returncode == 0 and api.stdout == "      1       1       5 /data/b.txt\n"


def test_multiplatform_example_is_one_index_for_two_platforms(plain_registry, hello_c_wasm: Path,
                                                             tmp_path: Path) -> None:
    example = REPO / "examples" / "multiplatform"
    shutil.copy(hello_c_wasm, example / "hello.wasm")
    ref = f"{plain_registry.host}/examples/multi:1"
    wasmctr("build", str(example), "-t", ref, "--platform", "wasi/wasm,linux/amd64", "--push")
    env = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    wasmctr("pull", ref, env=env)
    info = json.loads(wasmctr("inspect", ref, "--json", env=env).stdout)
    assert info["platforms"] == ["wasi/wasm", "linux/amd64"]
    assert wasmctr("run", ref, env=env).stdout.startswith("Hello, every platform!")
    linux = json.loads(wasmctr("inspect", ref, "--platform", "linux/amd64", "--json", env=env).stdout)
    assert linux["manifest"]["layers"] == info["manifest"]["layers"]


def test_component_example_built_from_python_runs_as_wasi_cli_run(plain_registry, tmp_path: Path) -> None:
    example = REPO / "examples" / "component"
    component = tmp_path / "hello.wasm"
    subprocess.run([str(Path(sys.executable).parent / "componentize-py"), "-d", str(example / "wit"), "-w", "hello",
                    "componentize", "app", "-o", str(component)], cwd=example, check=True, capture_output=True,
                   timeout=300)
    ref = f"{plain_registry.host}/examples/component:1"
    wasmctr("build", str(component), "-t", ref, "--format", "artifact", "--push")
    env = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    wasmctr("pull", ref, env=env)
    shown = json.loads(wasmctr("inspect", ref, "--json", env=env).stdout)
    assert shown["config"]["os"] == "wasip2" and "wasi:cli/run@0.2.0" in shown["config"]["component"]["exports"]
    refused = wasmctr("run", ref, env=env, check=False)
    assert refused.returncode == 125 and "sockets need --network host" in refused.stderr
    proc = wasmctr("run", "--allow-wasi", "wasi:sockets/*", ref, "you", env=env)
    assert proc.stdout == "Hello, you, from a Python component!\n"
