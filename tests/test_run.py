"""`wasmctr run` and the executor: hostile guests are contained, limits hold, Docker's rules apply."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import wasmtime
from conftest import assert_one_line_error, wasmctr
from services import ppid, proc_status, wait_for

import wasmctr as api

EXE = str(Path(sys.executable).parent / "wasmctr")


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


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return wasmctr("run", *args, check=False, **kwargs)


def test_granted_directory_is_readable(hostile_wasm: Path, granted: Path) -> None:
    proc = run("-v", f"{granted}:/data", str(hostile_wasm), "read", "/data/ok.txt")
    assert proc.returncode == 0 and "read: granted content" in proc.stdout


@pytest.mark.parametrize("path", ["/data/../secret.txt", "/data/sub/../../secret.txt", "/data/escape",
                                  "/data/escape-dir/secret.txt", "{secret}", "/etc/passwd", "../secret.txt"])
def test_paths_out_of_a_granted_directory_are_denied(hostile_wasm: Path, granted: Path, path: str) -> None:
    path = path.replace("{secret}", str(granted.parent / "secret.txt"))
    proc = run("-v", f"{granted}:/data", "-w", "/data", str(hostile_wasm), "read", path)
    assert proc.returncode == 1 and proc.stdout.startswith("denied"), proc.stdout
    assert "host secret" not in proc.stdout


def test_read_only_volume_cannot_be_written(hostile_wasm: Path, granted: Path) -> None:
    proc = run("-v", f"{granted}:/data:ro", str(hostile_wasm), "write", "/data/new.txt")
    assert proc.returncode == 1 and proc.stdout.startswith("denied")
    assert not (granted / "new.txt").exists()
    proc = run("-v", f"{granted}:/data:rw", str(hostile_wasm), "write", "/data/new.txt")
    assert proc.returncode == 0 and (granted / "new.txt").read_text() == "pwned\n"


def test_nothing_of_the_host_filesystem_is_visible(hostile_wasm: Path) -> None:
    for path in ("/", "/etc", "/tmp", "."):
        proc = run(str(hostile_wasm), "ls", path)
        assert proc.returncode == 1 and proc.stdout.startswith("denied"), (path, proc.stdout)
    proc = run(str(hostile_wasm), "write", "/tmp/wasmctr-escape")
    assert proc.returncode == 1 and not Path("/tmp/wasmctr-escape").exists()


def test_image_rootfs_is_read_only_at_root(hostile_wasm: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True)
    shutil.copy(hostile_wasm, ctx / "hostile.wasm")
    (ctx / "etc" / "motd").write_text("from the image")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nENTRYPOINT ["/hostile.wasm"]\n')
    wasmctr("build", str(ctx), "-t", "hostile:1")
    listing = run("hostile:1", "ls", "/")
    assert listing.returncode == 0 and {"etc", "hostile.wasm", "Dockerfile"} <= set(listing.stdout.split())
    assert "from the image" in run("hostile:1", "read", "/etc/motd").stdout
    write = run("hostile:1", "write", "/etc/motd")
    assert write.returncode == 1 and write.stdout.startswith("denied")
    assert "from the image" in run("hostile:1", "read", "/etc/motd").stdout


def test_user_reads_an_images_rootfs_as_under_runc(hostile_wasm: Path, tmp_path: Path, wasmctr_home: Path) -> None:
    """The unpacked rootfs's `/` is 0755, as a snapshotter makes it, so `--user` reads the image's files as
    that user would under runc (mkdtemp's 0700 had every call below `/` denied); the store above it
    (here under pytest's 0700 directory) need not be reachable by that user."""
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True)
    shutil.copy(hostile_wasm, ctx / "hostile.wasm")
    (ctx / "etc" / "motd").write_text("from the image")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nENTRYPOINT ["/hostile.wasm"]\n')
    wasmctr("build", str(ctx), "-t", "users:1")
    listing = run("--user", "65534", "users:1", "ls", "/")
    assert listing.returncode == 0 and {"etc", "hostile.wasm"} <= set(listing.stdout.split()), listing.stdout
    assert run("--user", "65534:65534", "users:1", "read", "/etc/motd").stdout == "read: from the image\n"
    unpacked = wasmctr_home / "rootfs"
    assert unpacked.stat().st_mode & 0o777 == 0o700  # the image's files are no other user's to read


def test_unpacked_images_are_kept_from_other_users(hostile_wasm: Path, tmp_path: Path, wasmctr_home: Path) -> None:
    """Each rootfs's `/` is 0755 for --user guests; the directory holding them is 0700, as the blobs are."""
    wasmctr("build", str(hostile_wasm), "-t", "private:1")
    wasmctr("run", "private:1", "exit", "0")
    assert (wasmctr_home / "rootfs").stat().st_mode & 0o777 == 0o700


def test_only_granted_environment_reaches_the_guest(hostile_wasm: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\n")
    proc = run("-e", "GRANTED=1", "-e", "COPIED", "--env-file", str(env_file), str(hostile_wasm), "environ",
               env={"COPIED": "from-host", "HOST_SECRET": "leak"})
    assert sorted(proc.stdout.split()) == ["COPIED=from-host", "FROM_FILE=yes", "GRANTED=1"]


def test_memory_bomb_is_capped(hostile_wasm: Path) -> None:
    proc = run("--memory", "64m", str(hostile_wasm), "bomb")
    assert proc.returncode == 2, proc.stderr
    allocated = int(proc.stdout.split()[1])
    assert 0 < allocated < 64


def test_initial_memory_over_the_cap_is_a_memory_limit_trap(tmp_path: Path) -> None:
    module = tmp_path / "big-memory.wasm"
    module.write_bytes(wasmtime.wat2wasm('(module (memory (export "memory") 2048) (func (export "_start")))'))
    proc = run("--memory", "64m", str(module))
    assert proc.returncode == 134 and "memory limit exceeded (64 MiB)" in proc.stderr


def test_spinning_guest_is_stopped_at_the_deadline(hostile_wasm: Path) -> None:
    """The guest never ends by itself: the run ending at all is the deadline at work (how close to it is
    a timing, not asserted here: wall-clock bounds flake on a busy machine)."""
    proc = run("--timeout", "1s", str(hostile_wasm), "spin")
    assert proc.returncode == 137 and "timeout after 1s" in proc.stderr


def test_the_executor_reports_a_deadline_it_enforced(hostile_wasm: Path) -> None:
    from wasmctr.running.executor import Executor, RunSpec

    executor = Executor()

    outcome = executor.run(RunSpec(hostile_wasm, ["hostile", "spin"], timeout=0.5))
    assert (outcome.reason, outcome.exit_code, outcome.message) == ("timeout", 137,
                                                                   "guest stopped: timeout after 0.5s")


def wait_for_the_supervisor(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Until `wasmctr run`'s main thread sleeps in poll(2): the guest has started, and a signal is now the
    guest's stop (before, it ends `wasmctr run` itself: "wasmctr: error: terminated")."""
    wait_for(lambda: "poll" in Path(f"/proc/{proc.pid}/wchan").read_text(), 60, "the guest's supervisor")


def test_sigterm_stops_a_spinning_guest(hostile_wasm: Path) -> None:
    proc = subprocess.Popen([EXE, "run", str(hostile_wasm), "spin"], stderr=subprocess.PIPE, text=True)
    wait_for_the_supervisor(proc)
    proc.terminate()
    _, err = proc.communicate(timeout=5)
    assert proc.returncode == 143 and "signal 15" in err


def test_a_sleeping_guests_supervisor_sleeps_too_and_still_answers_sigterm(hostile_wasm: Path) -> None:
    """The main thread waits for the guest's end, a signal or a deadline, and wakes for nothing else: an
    idle container process costs no CPU (it polled 50 times a second before). Counted as the main
    thread's voluntary context switches, which a busy machine does not add to."""
    proc = subprocess.Popen([EXE, "run", str(hostile_wasm), "sleep", "60"], stderr=subprocess.PIPE, text=True)
    status = Path(f"/proc/{proc.pid}/status")
    wait_for_the_supervisor(proc)
    tasks = Path(f"/proc/{proc.pid}/task")
    wait_for(lambda: {(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()} == {"S"}, 30,
             "the guest and its supervisor to sleep")  # what is counted below is the idle that follows

    def switches() -> int:
        return int(next(line for line in status.read_text().splitlines()
                        if line.startswith("voluntary_ctxt_switches")).split()[1])

    before = switches()
    time.sleep(1.0)
    assert switches() - before <= 2
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143 and "signal 15" in err


def test_exit_codes_hold_when_nobody_reads_stderr(hostile_wasm: Path, tmp_path: Path) -> None:
    """The diagnostic line cannot be written (stderr is a pipe whose reader is gone): the code stays 134
    for a trap, 143 for SIGTERM, 125 for a guest that cannot start; no traceback, no Python 120."""
    def closed_pipe() -> int:
        read_end, write_end = os.pipe()
        os.close(read_end)
        return write_end

    for argv, code in (([str(hostile_wasm), "abort"], 134), ([str(tmp_path / "missing.wasm")], 125)):
        stderr = closed_pipe()
        try:
            proc = subprocess.run([EXE, "run", *argv], stderr=stderr, stdout=subprocess.DEVNULL, timeout=60)
        finally:
            os.close(stderr)
        assert proc.returncode == code, argv
    stderr = closed_pipe()
    try:
        spinner = subprocess.Popen([EXE, "run", str(hostile_wasm), "spin"], stderr=stderr, stdout=subprocess.DEVNULL)
    finally:
        os.close(stderr)
    wait_for_the_supervisor(spinner)
    spinner.terminate()
    assert spinner.wait(timeout=10) == 143


def test_user_runs_the_guest_as_that_user_confined(hostile_wasm: Path, tmp_path: Path) -> None:
    """--user UID[:GID] as `docker run` takes it: the guest's process is that user, with no capabilities,
    no_new_privs and the seccomp filter; it writes only where that user may; SIGTERM still gives 143."""
    closed, shared = tmp_path / "closed", tmp_path / "shared"
    closed.mkdir(mode=0o755)
    shared.mkdir()
    shared.chmod(0o777)
    denied = run("--user", "1000:1000", "-v", f"{closed}:/data", str(hostile_wasm), "write", "/data/x")
    assert denied.returncode == 1 and denied.stdout.startswith("denied: Permission denied")
    wrote = run("--user", "1000", "-v", f"{shared}:/data", str(hostile_wasm), "write", "/data/x")
    assert wrote.returncode == 0 and (shared / "x").stat().st_uid == 1000 and (shared / "x").stat().st_gid == 1000
    assert run("--user", "1000", "--tmpfs", "/scratch", str(hostile_wasm), "fs", "/scratch").stdout == "fs ok\n"
    bad = run("--user", "nobody", str(hostile_wasm), "exit", "0")
    assert bad.returncode == 125
    assert bad.stderr.strip() == "wasmctr: error: --user 'nobody': expected UID[:GID] as numbers"
    # from Python, output captured across the fork (in a new interpreter: pytest's own is never forked)
    code = f"import wasmctr; print(wasmctr.run({str(hostile_wasm)!r}, ['env', 'A'], env=['A=1'], user='1000', " \
           "capture_output=True, text=True).stdout, end='')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout == "A=1\n"

    spinner = subprocess.Popen([EXE, "run", "--user", "1000:1001", str(hostile_wasm), "spin"], stderr=subprocess.PIPE,
                               text=True)
    try:
        children: list[str] = []

        def confined() -> bool:  # the child past the fork, its seccomp filter (installed last but Landlock) on
            children[:] = subprocess.run(["pgrep", "-P", str(spinner.pid)], capture_output=True,
                                         text=True).stdout.split()
            return len(children) == 1 and proc_status(children[0])["Seccomp"] == ["2"]

        wait_for(confined, 30, "the guest's process to be confined")
        fields = proc_status(children[0])
        assert fields["Uid"] == ["1000"] * 4 and fields["Gid"] == ["1001"] * 4 and fields["Groups"] == []
        assert int(fields["CapEff"][0], 16) == 0 and fields["NoNewPrivs"] == ["1"] and fields["Seccomp"] == ["2"]
    finally:
        spinner.terminate()
    _, err = spinner.communicate(timeout=10)
    assert spinner.returncode == 143 and "signal 15" in err


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


def test_a_mount_on_the_root_is_refused_over_an_image_and_granted_to_a_bare_module(hostile_wasm: Path,
                                                                                   tmp_path: Path) -> None:
    """As Docker refuses `-v DIR:/` (the image's root is `/`); a bare module has no root, and `/` may be
    granted to it, as wasmtime's `--dir DIR::/` (how the WASI test suite runs its tests)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(hostile_wasm, ctx / "hostile.wasm")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY hostile.wasm /hostile.wasm\nENTRYPOINT ["/hostile.wasm"]\n')
    wasmctr("build", str(ctx), "-t", "rooted:1")
    for flags in (["-v", f"{tmp_path}:/"], ["-v", f"{tmp_path}:/.:ro"], ["--tmpfs", "/"]):
        assert_one_line_error(run(*flags, "rooted:1", "ls", "/"), 125, "cannot be mounted at / over an image's root")
    granted = run("-v", f"{ctx}:/", str(hostile_wasm), "read", "Dockerfile")
    assert granted.returncode == 0 and granted.stdout.startswith("read: FROM scratch")


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


def test_a_module_that_could_not_be_linked_fails_before_it_starts(tmp_path: Path) -> None:
    """A WASI function that does not exist, or one imported with another signature: refused with the
    import named, before the guest starts (`instantiate_pre`), as runwasi fails Create."""
    for name, wat, why in (
            ("nope", '(import "wasi_snapshot_preview1" "nope" (func))',
             "unknown import: `wasi_snapshot_preview1::nope` has not been defined"),
            ("badsig", '(import "wasi_snapshot_preview1" "fd_write" (func (param i32)))',
             "incompatible import type for `wasi_snapshot_preview1::fd_write`")):
        module = tmp_path / f"{name}.wasm"
        module.write_bytes(wasmtime.wat2wasm(f'(module {wat} (memory (export "memory") 1) (func (export "_start")))'))
        assert_one_line_error(run(str(module)), 125, f"cannot instantiate the guest: {why}")


@pytest.mark.parametrize("flags, why", [
    (["--deny-wasi", "nosuchcall"], "--deny-wasi 'nosuchcall': names no WASI call or interface"),
    (["--deny-wasi", "path_open,fd_wirte"], "--deny-wasi 'fd_wirte': names no WASI call"),
    (["--allow-wasi", "wasi:sockets"], "--allow-wasi 'wasi:sockets': names no WASI call"),
    (["--deny-wasi", "env.path_open"], "--deny-wasi 'env.path_open': names no WASI call"),
    (["-m", "64"], "-m 64: the memory limit must be at least 6 MiB"),
    (["-m", "17179869184g"], "-m 17179869184g: the memory limit must be at least 6 MiB (as Docker's) and below 8 EiB"),
])
def test_flags_that_name_nothing_are_refused_before_the_guest_starts(hostile_wasm: Path, flags: list[str],
                                                                     why: str) -> None:
    """A typo must not silently disable a policy, and a limit the guest cannot start under is refused."""
    assert_one_line_error(run(*flags, str(hostile_wasm), "exit", "0"), 125, why)


def test_valid_policy_names_and_globs_are_taken(hostile_wasm: Path) -> None:
    for flags in (["--deny-wasi", "sock_*"], ["--deny-wasi", "wasi_snapshot_preview1.sock_accept"],
                  ["--deny-wasi", "wasi:sockets/*"], ["--allow-wasi", "wasi:sockets/tcp@0.2.0"]):
        proc = run(*flags, str(hostile_wasm), "exit", "0")
        assert (proc.returncode, proc.stderr) == (0, ""), flags


def test_the_smallest_memory_limit_is_taken_and_enforced(hostile_wasm: Path) -> None:
    """6m is not refused as a flag, and the guest starts under it: its memory is more, so it traps."""
    proc = run("-m", "6m", str(hostile_wasm), "exit", "0")
    assert proc.returncode == 134
    assert proc.stderr == "wasmctr: guest trapped: memory limit exceeded (6 MiB)\n"


def test_unbounded_recursion_traps(hostile_wasm: Path) -> None:
    proc = run(str(hostile_wasm), "recurse")
    assert proc.returncode == 134
    assert proc.stderr.strip() == "wasmctr: guest trapped: wasm trap: call stack exhausted"


def test_abort_is_a_trap_with_exit_134(hostile_wasm: Path) -> None:
    proc = run(str(hostile_wasm), "abort")
    assert proc.returncode == 134 and "unreachable" in proc.stderr


def test_fuel_budget_stops_a_spinning_guest(hostile_wasm: Path) -> None:
    proc = run("--fuel", "1000000", str(hostile_wasm), "spin")
    assert proc.returncode == 134 and "fuel" in proc.stderr
    assert run("--fuel", "10000000", str(hostile_wasm), "exit", "0").returncode == 0


def test_a_gibibyte_of_output_streams_without_buffering(hostile_wasm: Path) -> None:
    """Peak RSS from the process's own VmHWM: its rusage ru_maxrss also counts the memory of the parent it
    was forked from until exec (the pytest process, large late in the suite)."""
    proc = subprocess.Popen([EXE, "run", str(hostile_wasm), "flood", "1024"], stdout=subprocess.PIPE)
    total = peak_kib = 0
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
        with contextlib.suppress(OSError):
            status_lines = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            peak_kib = max([peak_kib] + [int(line.split()[1]) for line in status_lines if line.startswith("VmHWM:")])
    assert proc.wait() == 0
    assert total == 1 << 30
    assert 0 < peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB"


def test_stdin_is_closed_unless_interactive(hostile_wasm: Path) -> None:
    closed = subprocess.run([EXE, "run", str(hostile_wasm), "cat"], input="secret input", capture_output=True,
                            text=True)
    assert closed.stdout == "" and "0 bytes" in closed.stderr
    passed = subprocess.run([EXE, "run", "-i", str(hostile_wasm), "cat"], input="hello guest",
                            capture_output=True, text=True)
    assert passed.stdout == "hello guest" and "11 bytes" in passed.stderr


def test_tmpfs_is_writable_and_removed_afterwards(hostile_wasm: Path, tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("wasmctr-tmpfs-*"))
    proc = run("--tmpfs", "/scratch", str(hostile_wasm), "write", "/scratch/file")
    assert proc.returncode == 0
    assert set(Path("/tmp").glob("wasmctr-tmpfs-*")) == before


def test_a_modules_socket_calls_run_and_fail_without_sockets(tmp_path: Path) -> None:
    """A wasip1 module can only use sockets it is handed, and it is handed none: importing sock_* is not
    refused, the calls return WASI errors (sock_accept on fd 3: EBADF, 8), as under wasmtime's CLI;
    --deny-wasi still refuses them; --network host still explains that modules cannot use it."""
    module = tmp_path / "net.wasm"
    module.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))'
        ' (import "wasi_snapshot_preview1" "sock_send" (func (param i32 i32 i32 i32 i32) (result i32)))'
        ' (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1)'
        ' (func (export "_start") (call $exit (call $accept (i32.const 3) (i32.const 0) (i32.const 16)))))'))
    assert run(str(module)).returncode == 8
    assert_one_line_error(run("--deny-wasi", "sock_*", str(module)), 125, "sock_accept (denied by --deny-wasi)")
    assert_one_line_error(run("--network", "host", str(module)), 125, "preview 1 modules have no call")


def test_a_components_sockets_need_the_network_and_unprovided_imports_are_refused(tmp_path: Path) -> None:
    """A component can create sockets: wasi:sockets needs --network host. One importing what the engine
    does not provide (wasi:http) is refused before it starts, the import named."""
    def component(interface: str) -> Path:
        path = tmp_path / f"{interface.replace(':', '-').replace('/', '-')}.wasm"
        path.write_bytes(wasmtime.wat2wasm(f"""
            (component
              (import "{interface}@0.2.0" (instance))
              (core module $m (func (export "run") (result i32) i32.const 0))
              (core instance $i (instantiate $m))
              (func $run (result (result)) (canon lift (core func $i "run")))
              (instance $runi (export "run" (func $run)))
              (export "wasi:cli/run@0.2.0" (instance $runi)))"""))
        return path

    sockets = component("wasi:sockets/tcp")
    assert_one_line_error(run(str(sockets)), 125, "wasi:sockets/tcp@0.2.0 (sockets need --network host)")
    assert run("--network", "host", str(sockets)).returncode == 0
    assert_one_line_error(run(str(component("wasi:http/outgoing-handler"))), 125,
                          "the guest imports wasi:http/outgoing-handler@0.2.0, which this engine does not provide")


def test_denied_import_is_refused_or_trapped(hostile_wasm: Path) -> None:
    refused = run("--deny-wasi", "path_open", str(hostile_wasm), "exit", "0")
    assert_one_line_error(refused, 125, "path_open (denied by --deny-wasi)")
    still = run("--deny-wasi", "path_open", "--syscall-policy", "trap", str(hostile_wasm), "exit", "5")
    assert still.returncode == 5
    trapped = run("--deny-wasi", "fd_write", "--syscall-policy", "trap", str(hostile_wasm), "cwd")
    assert trapped.returncode == 134 and "fd_write is denied by the syscall policy" in trapped.stderr
    allowed = run("--deny-wasi", "path_*", "--allow-wasi", "path_*", str(hostile_wasm), "exit", "0")
    assert allowed.returncode == 0, allowed.stderr
    pattern = run("--deny-wasi", "fd_*", str(hostile_wasm), "exit", "0")
    assert_one_line_error(pattern, 125, "fd_write (denied by --deny-wasi)", "fd_read (denied by --deny-wasi)")


def test_non_wasi_imports_are_refused(tmp_path: Path) -> None:
    module = tmp_path / "env.wasm"
    module.write_bytes(wasmtime.wat2wasm('(module (import "env" "system" (func)) (func (export "_start")))'))
    assert_one_line_error(run(str(module)), 125, "env.system (not a WASI import)")


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


def test_workdir_is_the_guests_current_directory(hostile_wasm: Path, granted: Path) -> None:
    proc = run("-v", f"{granted}:/data", "-w", "/data", str(hostile_wasm), "read", "ok.txt")
    assert proc.returncode == 0 and "granted content" in proc.stdout


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


def test_component_policy_by_interface(component_wasm: Path) -> None:
    refused = run("--deny-wasi", "wasi:cli/*", str(component_wasm))
    assert_one_line_error(refused, 125, "wasi:cli/environment@0.2.0 (denied by --deny-wasi)")


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


def test_compile_cache_limit_comes_from_the_environment(hostile_wasm: Path, hello_c_wasm: Path,
                                                        wasmctr_home: Path) -> None:
    assert run(str(hello_c_wasm)).returncode == 0
    assert run(str(hostile_wasm), "exit", "0", env={"WASMCTR_COMPILE_CACHE_MAX_MIB": "0"}).returncode == 0
    assert len(list((wasmctr_home / "cache" / "compiled").glob("*.cwasm"))) == 1, "0 MiB keeps only the newest"


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


def test_inspect_lists_the_same_imports_the_policy_checks(hostile_wasm: Path) -> None:
    wasmctr("build", str(hostile_wasm), "-t", "imports:1")
    listed = json.loads(wasmctr("inspect", "imports:1", "--json").stdout)["wasm"]["imports"]
    code = wasmtime.Module(wasmtime.Engine(), hostile_wasm.read_bytes())
    assert listed == [f"{i.module}.{i.name}" for i in code.imports]



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
