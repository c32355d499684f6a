"""What a guest of `wasmctr run` can reach: its granted directories only (read-only where asked, no
path out of them), the image's rootfs read-only, a tmpfs, the environment it is given, stdin only with
`-i`, the user `--user` names (confined as a container process), sockets only as the network allows,
and only the WASI imports the policy lets it link."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime
from conftest import EXE, assert_one_line_error, run, wasmctr
from services import proc_status, wait_for


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


def test_workdir_is_the_guests_current_directory(hostile_wasm: Path, granted: Path) -> None:
    proc = run("-v", f"{granted}:/data", "-w", "/data", str(hostile_wasm), "read", "ok.txt")
    assert proc.returncode == 0 and "granted content" in proc.stdout


def test_component_policy_by_interface(component_wasm: Path) -> None:
    refused = run("--deny-wasi", "wasi:cli/*", str(component_wasm))
    assert_one_line_error(refused, 125, "wasi:cli/environment@0.2.0 (denied by --deny-wasi)")


def test_inspect_lists_the_same_imports_the_policy_checks(hostile_wasm: Path) -> None:
    wasmctr("build", str(hostile_wasm), "-t", "imports:1")
    listed = json.loads(wasmctr("inspect", "imports:1", "--json").stdout)["wasm"]["imports"]
    code = wasmtime.Module(wasmtime.Engine(), hostile_wasm.read_bytes())
    assert listed == [f"{i.module}.{i.name}" for i in code.imports]
