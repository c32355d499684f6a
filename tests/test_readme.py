"""The README's commands and those of the pages under docs/, run as a user would paste them, and the demo.

Every `wasmctr`, `python -m ziglang` and `skopeo` line of their shell blocks runs here, in order,
then each of their Python blocks, against a registry of the test's own (127.0.0.1:5000 in the README is
replaced by its address). The lines that need a daemon or a host this test does not start run in their
own tests: `ctr` and containerd (test_shim_*, test_runtime_engines), `wasmctr node`, which edits the
node's containerd config (test_node, on configs of its own), `dockerd`/`docker run` and `podman`
(test_runtime_engines), `login` (test_registry), `./run-tests` (CI itself), and the registry's two lines
and `./demo` (below).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from services import free_port, wait_for

ELSEWHERE = ("ctr ", "dockerd ", "docker ", "podman ", "./run-tests", "./demo", "python3 -m venv", "echo \"$TOKEN\"",
             "printf ", "docker-registry ", "wasmctr node ")


# the README, then the pages it links to, in the order a reader follows them (running.md uses what the
# Quickstart built)
PAGES = ["README.md", "docs/images.md", "docs/registries.md", "docs/running.md", "docs/http.md", "docs/security.md",
         "docs/kubernetes.md", "docs/performance.md"]


def documentation() -> str:
    return "\n".join((REPO / page).read_text() for page in PAGES)


def test_every_page_the_readme_links_is_run_here() -> None:
    linked = set(re.findall(r"\]\((docs/[a-z]+\.md)\)", (REPO / "README.md").read_text()))
    assert linked == set(PAGES[1:]) == {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}


def readme_commands() -> list[str]:
    text = documentation()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith(ELSEWHERE)]


def test_every_readme_command_runs(plain_registry, tmp_path: Path, wasmctr_home: Path) -> None:
    commands = readme_commands()
    assert any(c.startswith("wasmctr run") for c in commands) and any("--push" in c for c in commands)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "ZIG_GLOBAL_CACHE_DIR": os.environ.get("ZIG_GLOBAL_CACHE_DIR", str(Path.home() / ".cache" / "zig"))}
    env.pop("WASMCTR_HOME")  # the README's commands use the default store under $HOME
    for command in commands:
        command = command.replace("127.0.0.1:5000", plain_registry.host).replace("python ", f"{sys.executable} ")
        proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stderr}"
    assert (tmp_path / ".local" / "share" / "wasmctr" / "index.json").is_file()
    for block in re.findall(r"```python\n(.*?)```", documentation(), re.S):
        proc = subprocess.run([sys.executable, "-c", block], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, f"README Python failed:\n{block}\n{proc.stderr}"
    assert "wc failed with 1" in proc.stdout


def test_the_readme_s_two_lines_start_a_registry_without_auth(tmp_path: Path, hello_wasm: Path) -> None:
    text = documentation()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", text, re.S) for line in block.splitlines()
             if line.startswith(("printf ", "docker-registry "))]
    assert len(lines) == 2
    host = f"127.0.0.1:{free_port()}"
    script = "\n".join(lines).replace("127.0.0.1:5000", host).replace("/tmp/", f"{tmp_path}/")
    registry = subprocess.Popen(["bash", "-c", script.removesuffix("&") + "\nwait"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _answers(host), what="the README's registry")
        subprocess.run([str(Path(sys.executable).parent / "wasmctr"), "build", str(hello_wasm), "-t",
                        f"{host}/readme:1", "--push", "-q"], check=True, capture_output=True)
        assert (tmp_path / "registry" / "docker" / "registry" / "v2" / "repositories" / "readme").is_dir()
    finally:
        os.killpg(registry.pid, 15)
        registry.wait(timeout=30)


def _answers(host: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_the_demo_builds_runs_and_shows_the_sandbox(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(REPO / "demo")], env={**os.environ, "WASMCTR_HOME": str(tmp_path / "demo")},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for expected in ("Hi, demo!", "exit code: 3", "/data/hello.c", "wc: /etc/passwd: No such file or directory",
                     "refused: the guest imports wasi_snapshot_preview1.path_open", "wrote "):
        assert expected in proc.stdout + proc.stderr, expected
