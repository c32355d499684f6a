"""Running in-process, from Python: `wasmctr.run` taking what `subprocess.run` takes (and ending a
guest at its timeout without ending the caller), the executor's own deadline, the compile cache's
bound, and the run spec read from an OCI runtime bundle."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from services import ppid

import wasmctr as api


def test_the_executor_reports_a_deadline_it_enforced(hostile_wasm: Path) -> None:
    from wasmctr.running.executor import Executor, RunSpec

    executor = Executor()

    outcome = executor.run(RunSpec(hostile_wasm, ["hostile", "spin"], timeout=0.5))
    assert (outcome.reason, outcome.exit_code, outcome.message) == ("timeout", 137,
                                                                   "guest stopped: timeout after 0.5s")


def test_compile_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    from wasmctr.running.compile_cache import CompileCache

    def cached(key: str) -> bytes | None:
        with cache.entry(key) as path:
            return None if path is None else Path(path).read_bytes()

    cache = CompileCache(tmp_path, max_bytes=2500)  # room for two 1000-byte entries
    for key in ("a", "b"):
        cache.save(key, bytes(1000))
        time.sleep(0.01)
    assert cached("a") == bytes(1000)  # a hit: a is now the most recently used
    time.sleep(0.01)
    cache.save("c", bytes(1000))
    assert cached("b") is None and not (tmp_path / "b.sha256").exists()
    assert cached("a") == cached("c") == bytes(1000)
    (tmp_path / "c.sha256").write_text("0" * 64)  # an entry whose digest does not match is never loaded
    assert cached("c") is None and not (tmp_path / "c.cwasm").exists()


def test_python_api_takes_what_subprocess_run_takes(hostile_wasm: Path, tmp_path: Path) -> None:
    guest = str(hostile_wasm)
    done = api.run(guest, ["environ"], env=["A=1"], capture_output=True, text=True)
    assert isinstance(done, subprocess.CompletedProcess) and done.args == [guest, "environ"]
    assert (done.returncode, done.stdout, done.stderr, done.reason) == (0, "A=1\n", "", "exit")
    assert api.run(guest, ["environ"], env=["A=1"], stdout=subprocess.PIPE).stdout == b"A=1\n"
    merged = api.run(guest, ["cat"], input=b"xyz", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert sorted(merged.stdout.splitlines()) == [b"3 bytes", b"xyz"] and merged.stderr is None
    text, raw = io.StringIO(), io.BytesIO()
    api.run(guest, ["cat"], input="h\u00e9\r\n", stdout=text, stderr=raw)
    assert text.getvalue() == "h\u00e9\r\n" and raw.getvalue() == b"5 bytes\n"  # é is two bytes in UTF-8
    assert api.run(guest, ["cat"], input="a\r\nb", capture_output=True, text=True).stdout == "a\nb"
    assert api.run(guest, ["environ"], stdout=subprocess.DEVNULL).stdout is None
    with open(tmp_path / "log", "w") as log:  # a file object: written after what the caller wrote
        log.write("caller\n")
        api.run(guest, ["environ"], env=["B=2"], stdout=log)
        log.write("after\n")
    assert (tmp_path / "log").read_text() == "caller\nB=2\nafter\n"
    api.run(guest, ["environ"], env=["C=3"], stdout=tmp_path / "by-path")
    assert (tmp_path / "by-path").read_text() == "C=3\n"
    big = os.urandom(3 << 20)
    assert api.run(guest, ["cat"], input=big, capture_output=True).stdout == big
    (tmp_path / "in").write_bytes(b"from a file")
    with open(tmp_path / "in", "rb") as source:
        assert api.run(guest, ["cat"], stdin=source, capture_output=True).stdout == b"from a file"
    assert api.run(guest, ["cat"], capture_output=True).stdout == b"", "stdin is closed unless given"
    with pytest.raises(subprocess.CalledProcessError) as failed:
        api.run(guest, ["exit", "3"], check=True, capture_output=True)
    assert failed.value.returncode == 3 and failed.value.result.reason == "exit"
    with pytest.raises(subprocess.CalledProcessError) as trapped:
        api.run(guest, ["abort"], check=True, stderr=subprocess.DEVNULL)
    assert trapped.value.returncode == 134 and "trapped" in str(trapped.value)
    for wrong in ({"stdin": True, "input": b"x"}, {"capture_output": True, "stdout": subprocess.PIPE},
                  {"stdin": subprocess.PIPE}, {"stdout": subprocess.STDOUT}, {"stdout": True}):
        with pytest.raises(api.WasmctrError):
            api.run(guest, ["environ"], **wrong)


def test_captured_output_leaves_nothing_to_panic_at_interpreter_exit(hostile_wasm: Path) -> None:
    """wasmtime's custom output callbacks were called from its worker threads while Python exited (a Rust
    panic on stderr in half the runs): output now goes through pipes drained by threads of ours."""
    code = (f"import io, wasmctr; out = io.StringIO(); wasmctr.run({str(hostile_wasm)!r}, ['environ'], env=['A=1'], "
            "stdout=out, stderr=-3); done = wasmctr.run({0!r}, ['environ'], env=['B=2'], capture_output=True); "
            "print(out.getvalue() + done.stdout.decode(), end='')".replace("{0!r}", repr(str(hostile_wasm))))
    for _ in range(12):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "A=1\nB=2\n", "")


@pytest.mark.parametrize("mode", ["sleep", "cat", "spin"])
def test_python_api_timeout_ends_a_guest_blocked_in_a_host_call_and_not_the_caller(hostile_wasm: Path,
                                                                                    mode: str) -> None:
    """A thread blocked in a host call cannot be killed: with a timeout the guest runs in a child
    interpreter, which ends; this (pytest's) process goes on, with no child or thread left."""
    quiet, writer = os.pipe()  # a stdin nobody writes to: `cat` blocks in fd_read
    threads = threading.active_count()
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        api.run(str(hostile_wasm), [mode, "3600"], stdin=quiet if mode == "cat" else None, timeout=0.5,
                capture_output=True)
    os.close(quiet)
    os.close(writer)
    assert stopped.value.timeout == 0.5 and stopped.value.result.returncode == 137
    assert stopped.value.result.message == "guest stopped: timeout after 0.5s"
    assert threading.active_count() == threads
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and ppid(int(pid)) == os.getpid()
                and b"wasmctr.running.isolated" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    finished = api.run(str(hostile_wasm), ["cat"], input=b"in time", capture_output=True, timeout="30s")
    assert (finished.returncode, finished.stdout) == (0, b"in time")


def test_spec_from_an_oci_runtime_bundle(hostile_wasm: Path, granted: Path, tmp_path: Path) -> None:
    from wasmctr.running.executor import Executor
    from wasmctr.running.ocispec import is_wasm, spec_from_bundle

    bundle = tmp_path / "bundle"
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(hostile_wasm, bundle / "rootfs" / "bin" / "app.wasm")
    config = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": True},
        "process": {"args": ["/bin/app.wasm", "environ"], "env": ["A=1"], "cwd": "/"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/data", "type": "bind", "source": str(granted), "options": ["rbind", "ro"]}],
        "linux": {"resources": {"memory": {"limit": 64 << 20}}},
        "annotations": {"wasmctr.io/timeout": "5s", "wasmctr.io/deny-wasi": "sock_*"},
    }
    assert is_wasm(bundle, config)
    spec = spec_from_bundle(bundle, config)
    assert spec.memory_limit == 64 << 20 and spec.timeout == 5 and spec.rootfs == (bundle / "rootfs").resolve()
    assert [(m.guest, m.readonly) for m in spec.mounts] == [("/data", True)]
    out = tmp_path / "out"
    spec.stdout = str(out)
    assert Executor().run(spec).exit_code == 0 and out.read_text() == "A=1\n"
    spec.args, spec.stdout = ["/bin/app.wasm", "write", "/data/x"], None
    assert Executor().run(spec).exit_code == 1 and not (granted / "x").exists()
    (bundle / "rootfs" / "bin" / "sh").write_text("#!/bin/sh\n")
    config["process"]["args"] = ["/bin/sh"]
    assert not is_wasm(bundle, config)


def test_a_bare_program_name_is_found_in_the_specs_path_as_runc_finds_it(hostile_wasm: Path, tmp_path: Path) -> None:
    from wasmctr.running.ocispec import program_of

    bundle = tmp_path / "bundle"
    for directory in ("opt/tools", "usr/bin"):
        (bundle / "rootfs" / directory).mkdir(parents=True)
    shutil.copy(hostile_wasm, bundle / "rootfs" / "opt" / "tools" / "app.wasm")
    shutil.copy(hostile_wasm, bundle / "rootfs" / "usr" / "bin" / "default.wasm")
    config: dict = {"root": {"path": "rootfs"}, "process": {"args": ["app.wasm"], "env": ["PATH=/nope:/opt/tools"],
                                                             "cwd": "/"}}
    assert program_of(bundle, config) == (bundle / "rootfs" / "opt" / "tools" / "app.wasm").resolve()
    config["process"] = {"args": ["default.wasm"], "cwd": "/"}  # no PATH in env: runc's default one
    assert program_of(bundle, config) == (bundle / "rootfs" / "usr" / "bin" / "default.wasm").resolve()
    config["process"] = {"args": ["missing.wasm"], "env": ["PATH=/opt/tools"], "cwd": "/"}
    assert program_of(bundle, config) is None
