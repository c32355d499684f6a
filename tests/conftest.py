"""Shared fixtures: an isolated store per test, the real `wasmctr` and `wasmctr-runtime` CLIs (and a granted
directory and an OCI bundle to give them), and wasm binaries built for real (WAT through wasmtime, C through zig)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import wasmtime
from tinyguest import GUESTS as HTTP_GUESTS

REPO = Path(__file__).resolve().parent.parent
INSTALLED = {"wasmctr": REPO / "wasmctr", "wasmctr_node": REPO / "shim"}  # package -> its source in the repository


def pytest_sessionstart(session: pytest.Session) -> None:
    """The commands under test run the installed packages (not editable: shim/ installs as wasmctr_node), so a
    change not installed yet would be tested as the old code: stop at once, saying what to run."""
    site = Path(sysconfig.get_paths()["purelib"])
    for package, source in INSTALLED.items():
        for path in source.rglob("*.py"):
            installed = site / package / path.relative_to(source)
            if not installed.is_file() or installed.read_bytes() != path.read_bytes():
                pytest.exit(f"{installed} is not the repository's {path.relative_to(REPO)}: install the tree first "
                            f"({sys.executable} -m pip install --no-deps .; ./run-tests does)", returncode=4)

HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wat\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 15))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 0))))
"""

FUNC_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "from _start\\n")
  (data (i32.const 32) "from hello\\n")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (call $print (i32.const 16) (i32.const 12)))
  (func (export "hello") (call $print (i32.const 32) (i32.const 11)))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))
"""
"""A module with runwasi-style entrypoints: `/app.wasm` prints from _start, `/app.wasm#hello` from hello."""


DEVICE_CASES = [  # (hostile.c's arguments, its output): what each default device does, as on Linux
    (["read", "/dev/zero"], "read: \n"), (["write", "/dev/null"], "wrote /dev/null\n"),
    (["write", "/dev/full"], "denied: No space left on device\n"),
    (["write", "/dev/new"], "denied: Permission denied\n")]  # Landlock: nothing is made in /dev


COMPONENT_WAT = """
(component
  (import "wasi:cli/environment@0.2.0" (instance (export "get-arguments" (func (result (list string))))))
  (core module $m (func (export "run") (result i32) i32.const 0))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $runi (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $runi)))
"""


@pytest.fixture(autouse=True)
def wasmctr_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "store"
    monkeypatch.setenv("WASMCTR_HOME", str(home))
    (tmp_path / "docker-config").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return home


def wasmctr(*args: str, check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `wasmctr` console script, as a user would."""
    beside = Path(sys.executable).parent / "wasmctr"
    exe = str(beside) if beside.exists() else shutil.which("wasmctr") or "wasmctr"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"wasmctr {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


EXE = str(Path(sys.executable).parent / "wasmctr")
"""The installed `wasmctr` console script, for the tests that start it themselves (a Popen, a pipe of their own)."""


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """`wasmctr run ARGS`, unchecked: the test reads the exit code and the output itself."""
    return wasmctr("run", *args, check=False, **kwargs)


@pytest.fixture
def granted(tmp_path: Path) -> Path:
    """A directory to grant, with a symlink inside it pointing at a secret outside."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "ok.txt").write_text("granted content")
    (data / "escape").symlink_to(secret)
    (data / "escape-dir").symlink_to(tmp_path)
    return data


WASMCTR_RUNTIME = str(Path(sys.executable).parent / "wasmctr-runtime")
"""The installed runc-compatible CLI."""


def runtime(root: Path, *args: str, log: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`wasmctr-runtime --root ROOT ARGS`, unchecked; `env` is added to the test's environment."""
    extra = ["--log", str(log), "--log-format", "json"] if log else []
    return subprocess.run([WASMCTR_RUNTIME, "--root", str(root), *extra, *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


@pytest.fixture
def bundle(tmp_path: Path, hostile_wasm: Path) -> Path:
    """An OCI bundle whose process is hostile.wasm spinning, for wasmctr-runtime and the shim's Task API."""
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    shutil.copy(hostile_wasm, bundle / "rootfs" / "app.wasm")
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
              "process": {"args": ["/app.wasm", "spin"], "env": [], "cwd": "/"},
              "annotations": {"run.oci.handler": "wasm"}}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


PASSWORD = "correct horse"
WITH_PASSWORD = {"COSIGN_PASSWORD": PASSWORD}


def pair(directory: Path) -> tuple[Path, Path]:
    """A cosign key pair made by `wasmctr key generate`: (cosign.key, cosign.pub)."""
    wasmctr("key", "generate", "--output-key-prefix", str(directory / "cosign"), env=WITH_PASSWORD)
    return directory / "cosign.key", directory / "cosign.pub"


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return pair(tmp_path_factory.mktemp("key"))


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return pair(tmp_path_factory.mktemp("other-key"))


def write_policy(path: Path, scope: str, requirement: dict) -> Path:  # type: ignore[type-arg]
    """A signature policy that rejects everything but `scope`, which has `requirement`."""
    path.write_text(json.dumps({"default": [{"type": "reject"}],
                                "transports": {"docker": {scope: [requirement]}}}))
    return path


def signed_by(public: Path, identity: dict | None = None) -> dict:  # type: ignore[type-arg]
    """A sigstoreSigned requirement for `public`'s signatures."""
    return {"type": "sigstoreSigned", "keyPath": str(public), **({"signedIdentity": identity} if identity else {})}


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """A failure is one line on stderr, with the expected exit code, and never a traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("wasmctr: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C proxy guest (tests/guests/http/tiny.c), a component per wasi:http version: 0.2.0, 0.2.3, 0.2.8 and
    one newer than the host's (tinyguest.NEWER)."""
    from tinyguest import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def compiled_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for every HTTP server of the session: each guest is compiled once, then mapped from the cache."""
    return tmp_path_factory.mktemp("http-home")


@pytest.fixture(scope="session")
def hello_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wat") / "hello.wasm"
    path.write_bytes(wasmtime.wat2wasm(HELLO_WAT))
    return path


@pytest.fixture(scope="session")
def component_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("component") / "component.wasm"
    path.write_bytes(wasmtime.wat2wasm(COMPONENT_WAT))
    return path


def zig_cc(source: Path, output: Path) -> Path:
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s", "-o",
                    str(output), str(source)], check=True, timeout=600)
    return output


@pytest.fixture(scope="session")
def hello_c_wasm() -> Path:
    """examples/hello compiled with zig, in place, as its README says."""
    example = REPO / "examples" / "hello"
    return zig_cc(example / "hello.c", example / "hello.wasm")


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from services import registry

    with registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from services import make_tls

    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def secure_registry(tmp_path_factory: pytest.TempPathFactory, tls):  # type: ignore[no-untyped-def]
    """htpasswd (bcrypt) and TLS signed by a CA of the test's own."""
    from services import registry

    with registry(tmp_path_factory.mktemp("secure-registry"), users={"alice": "s3cret-pw"}, tls=tls) as reg:
        yield reg


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """The test's own Docker config directory (set for every test), so no real credentials are touched."""
    return tmp_path / "docker-config"


@pytest.fixture(scope="session")
def hostile_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/guests/hostile.c: one guest that tries every escape, chosen by argv[1]."""
    return zig_cc(REPO / "tests" / "guests" / "hostile.c", tmp_path_factory.mktemp("hostile") / "hostile.wasm")


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from services import Containerd

    ctd = Containerd(tmp_path_factory.mktemp("ctd")).start()
    try:
        yield ctd
    finally:
        ctd.stop()


@pytest.fixture(scope="session")
def images(containerd, plain_registry, hostile_wasm: Path, hello_c_wasm: Path,  # type: ignore[no-untyped-def]
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """hello, hostile and func (FUNC_WAT at /app.wasm) as compat images, pushed to the registry and
    pulled by containerd."""
    home = tmp_path_factory.mktemp("shim-store")
    env = {"WASMCTR_HOME": str(home)}
    refs = {name: f"{plain_registry.host}/shim-{name}:1" for name in ("hello", "hostile", "func")}
    wasmctr("build", str(hello_c_wasm.parent), "-t", refs["hello"], "--push", env=env)
    wasmctr("build", str(hostile_wasm), "-t", refs["hostile"], "--push", env=env)
    func = tmp_path_factory.mktemp("func")
    (func / "app.wasm").write_bytes(wasmtime.wat2wasm(FUNC_WAT))
    (func / "Dockerfile").write_text('FROM scratch\nCOPY app.wasm /app.wasm\nENTRYPOINT ["/app.wasm"]\n')
    wasmctr("build", str(func), "-t", refs["func"], "--push", env=env)
    for ref in refs.values():
        containerd.ctr("image", "pull", "--plain-http", "--platform", "wasi/wasm", ref, check=True)
    return refs


@pytest.fixture(scope="session")
def escape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/guests/escape.c, static: native code that takes a container process's confinement and tries
    to get out of it (what a guest that got past wasmtime could run)."""
    import platform

    output = tmp_path_factory.mktemp("escape") / "escape"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", f"{platform.machine()}-linux-musl", "-static",
                    "-O2", "-o", str(output), str(REPO / "tests" / "guests" / "escape.c")], check=True, timeout=600)
    return output


ESCAPE_REFUSED = {"clone CLONE_NEWUSER": 1, "clone3": 38, "unshare CLONE_NEWUSER": 1, "unshare CLONE_NEWNS": 1,
                  "tgkill victim": 1, "kill victim": 1, "kill 1": 1, "ptrace victim": 1, "mount": 1, "bpf": 1,
                  "io_uring_setup": 1, "keyctl": 1, "fcntl F_SETOWN victim": 1}
"""What `attack` finds under a container process's confinement: EPERM (1) for each, ENOSYS (38) for clone3."""


def attack(escape: Path, pid: int, scratch: Path) -> dict[str, int]:
    """Run the escape helper under the confinement of container process `pid` against a process of the
    test's own outside the container, and check that one survived; the helper's findings."""
    import json

    (scratch / "mountpoint").mkdir(exist_ok=True)
    victim = subprocess.Popen(["sleep", "600"])
    try:
        proc = subprocess.run([str(escape), str(pid), str(victim.pid), str(scratch / "mountpoint")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert victim.poll() is None, "the process outside the container was killed"
    finally:
        victim.kill()
        victim.wait()
    return dict(json.loads(proc.stdout))


HTTP_GUEST_NAMES = ("hello", "echo", "trap", "spin", "counter")


def componentize(names: tuple[str, ...], out: Path) -> dict[str, Path]:
    """The guests of tests/guests/http so named, built by componentize-py into `out`, in parallel."""
    tool = str(Path(sys.executable).parent / "componentize-py")
    builds = {name: subprocess.Popen([tool, "-q", "-d", str(HTTP_GUESTS / "wit"), "-w", "proxy", "componentize", name,
                                      "-p", str(HTTP_GUESTS), "-o", str(out / f"{name}.wasm")], cwd=out,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for name in names}
    for name, build in builds.items():
        output, _ = build.communicate(timeout=600)
        assert build.returncode == 0, (name, output)
    return {name: out / f"{name}.wasm" for name in names}


@pytest.fixture(scope="session")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wasi:http/proxy guests of tests/guests/http, built by componentize-py (in parallel: about a
    minute on two cores)."""
    return componentize(HTTP_GUEST_NAMES, tmp_path_factory.mktemp("proxies"))
