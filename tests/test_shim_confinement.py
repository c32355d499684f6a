"""The walls around a guest of containerd-shim-wasmctr-v1: its process keeps only the user and
capabilities its spec grants, runs under the container seccomp filter and the spec's own profile,
is confined by Landlock to its rootfs and mounts, sees only the default devices, is in the spec's
namespaces and a cgroup that stays in the hierarchy, and native code under that confinement
(tests/guests/escape.c) reaches nothing outside its container."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ESCAPE_REFUSED, attack
from services import SHIM_RUNTIME as RUNTIME
from services import (
    ctr_run,
    delete_task,
    proc_status,
    process_state,
    remove_cgroup_tree,
    status_fields,
    wait_for,
    wait_for_nothing_left,
    wait_for_status,
)


def test_a_cgroups_path_stays_in_the_cgroup_hierarchy(containerd, images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`ctr run --cgroup` with a path that climbs: the cgroupfs form is cleaned as runc cleans it (the
    guest's cgroup is `{target}` in each hierarchy, not the host directory), and a systemd slice, prefix
    or name naming a path fails Create; the target is never made."""
    from wasmctr_node.cgroups import is_v2

    target = tmp_path / "escape"
    climbing = "../" * 12 + str(target).lstrip("/")
    for refused in (f"system.slice::{climbing}", f"system.slice:{climbing}:x", f"{climbing}.slice:cri:x"):
        proc = ctr_run(containerd, "--rm", "--cgroup", refused, images["hostile"], "cg-refused", "/hostile.wasm",
                       "exit", "0")
        assert proc.returncode != 0 and "not a unit name" in proc.stderr, proc.stderr
        containerd.ctr("container", "delete", "cg-refused")
    try:
        proc = ctr_run(containerd, "-d", "--cgroup", "/" + climbing, images["hostile"], "cg-climb", "/hostile.wasm",
                       "sleep", "30")
        assert proc.returncode == 0, proc.stderr
        pid = int(containerd.ctr("task", "ls").stdout.split("cg-climb", 1)[1].split()[0])
        memberships = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        memory = [line for line in memberships if (line.startswith("0::") if is_v2() else ":memory:" in line)]
        assert memory and all(line.endswith(":" + str(target)) for line in memory)
        containerd.ctr("task", "kill", "--signal", "SIGKILL", "cg-climb", check=True)
        delete_task(containerd, "cg-climb")
        containerd.ctr("container", "delete", "cg-climb", check=True)
        assert not target.exists()
    finally:
        remove_cgroup_tree("/" + climbing)
    wait_for_nothing_left(containerd)


def test_a_guest_process_keeps_only_the_capabilities_its_spec_grants(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """ctr's default spec grants Docker's default set: the guest's process has that set (not root's
    all), less what --cap-drop removes, plus what --cap-add grants, and no_new_privs."""
    cap_kill, cap_sys_admin = 1 << 5, 1 << 21
    found = {}
    for name, flags in (("caps-default", []), ("caps-changed", ["--cap-drop", "CAP_KILL", "--cap-add",
                                                                  "CAP_SYS_ADMIN"])):
        assert ctr_run(containerd, "-d", *flags, images["hostile"], name, "/hostile.wasm", "sleep", "30"
                       ).returncode == 0
        pid = [line.split()[1] for line in containerd.ctr("task", "ls").stdout.splitlines()
               if line.startswith(name)][0]
        found[name] = proc_status(pid)
        containerd.ctr("task", "kill", "--signal", "SIGKILL", name)
    default, changed = (int(found[n]["CapEff"][0], 16) for n in ("caps-default", "caps-changed"))
    assert default & cap_kill and not default & cap_sys_admin and default != (1 << 41) - 1
    assert changed == default & ~cap_kill | cap_sys_admin
    for fields in found.values():
        assert fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] and fields["NoNewPrivs"] == ["1"]
        assert fields["Uid"][0] == "0" and fields["Seccomp"] == ["2"]  # filtered (wasmctr/sandbox/seccomp.py)
    for name in found:
        delete_task(containerd, name)
        containerd.ctr("container", "delete", name)
    wait_for_nothing_left(containerd)


def task_pid(containerd, name: str) -> int:  # type: ignore[no-untyped-def]
    return int([line.split()[1] for line in containerd.ctr("task", "ls").stdout.splitlines()
                if line.startswith(name)][0])


def remove_task(containerd, name: str) -> None:  # type: ignore[no-untyped-def]
    containerd.ctr("task", "kill", "--signal", "SIGKILL", name)
    delete_task(containerd, name)
    containerd.ctr("container", "delete", name)


def test_a_guest_that_got_past_wasmtime_reaches_nothing_outside_its_container(  # type: ignore[no-untyped-def]
        containerd, images, escape: Path, tmp_path: Path) -> None:
    """ctr's spec lists new pid, ipc, uts and mount namespaces: the guest's process is in them, pid 1 of
    its own. Native code under its confinement (its filters, namespaces, ids and capabilities: Docker's
    default set, CAP_KILL among them) makes no namespace, signals or traces no process outside, kills
    nothing, mounts nothing, and reaches neither BPF, io_uring nor keyrings. The guest, stopped for its
    filters to be read and continued, sleeps on."""
    assert ctr_run(containerd, "-d", images["hostile"], "escape", "/hostile.wasm", "sleep", "60").returncode == 0
    pid = task_pid(containerd, "escape")
    for kind in ("pid", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert proc_status(pid)["NSpid"] == [str(pid), "1"]
    assert attack(escape, pid, tmp_path) == {"filters": 2, **ESCAPE_REFUSED}
    assert process_state(pid) in ("S", "R") and "RUNNING" in containerd.ctr("task", "ls").stdout
    remove_task(containerd, "escape")
    wait_for_nothing_left(containerd)


def test_a_guest_stopped_and_continued_sleeps_on_and_exits_as_it_would(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP and SIGCONT (a debugger, the cgroup freezer) interrupt the guest's sleeps, which the kernel
    resumes through restart_syscall: the filter allows it, so the guest finishes with its own code."""
    runner = subprocess.Popen(["ctr", "--address", str(containerd.socket), "run", *RUNTIME, "--platform", "wasi/wasm",
                               images["hostile"], "stopped", "/hostile.wasm", "sleep", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_status(containerd, "RUNNING", 30)
    pid = task_pid(containerd, "stopped")
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: process_state(pid) == "T", 30, "the guest to be stopped")
    os.kill(pid, signal.SIGCONT)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    containerd.ctr("container", "delete", "stopped")
    wait_for_nothing_left(containerd)


@pytest.mark.parametrize("process, expected", [
    ({"user": {"uid": 1000, "gid": 1001, "additionalGids": [5, 6]}},
     {"Uid": "1000", "Gid": "1001", "Groups": ["5", "6"], "CapEff": 0, "CapBnd": 0}),
    ({"user": {"uid": 1000, "gid": 1000}, "capabilities": {n: ["CAP_NET_BIND_SERVICE"] for n in (
        "bounding", "effective", "permitted")}},
     {"Uid": "1000", "Gid": "1000", "Groups": [], "CapEff": 1 << 10, "CapBnd": 1 << 10}),
])
def test_the_container_process_becomes_the_specs_user(process: dict, expected: dict) -> None:  # type: ignore[type-arg]
    from wasmctr.sandbox import privileges

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read_end)
            privileges.drop(process)
            os.write(write_end, Path("/proc/self/status").read_bytes())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        text = f.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    fields = status_fields(text)
    assert fields["Uid"] == [expected["Uid"]] * 4 and fields["Gid"] == [expected["Gid"]] * 4
    assert fields["Groups"] == expected["Groups"] and fields["NoNewPrivs"] == ["1"]
    assert int(fields["CapEff"][0], 16) == int(fields["CapPrm"][0], 16) == expected["CapEff"]
    assert int(fields["CapBnd"][0], 16) == expected["CapBnd"] and int(fields["CapAmb"][0], 16) == 0


def confined(script: str, setup: str = "", network: bool = False, profile: dict | None = None) -> object:  # type: ignore[type-arg]
    """Run `setup`, then become a container process (one capability left, no_new_privs, the container
    seccomp filter and `profile`) and run `script`, in a new interpreter; what it prints last, as
    JSON. A new interpreter, not a fork of this one: pytest's process may have run guests, and the
    engine's runtime threads do not survive a fork. As in the shim's child, what is loaded or prepared
    (modules, the guest's code) is so before the filter."""
    prelude = textwrap.dedent("""
        import ctypes, errno, json, os, socket, sys
        from pathlib import Path
        from wasmctr.sandbox import landlock, privileges, seccomp
        from wasmctr.running.executor import Executor
        from wasmctr.running.spec import Mount, RunSpec

        def errno_of(call):
            try:
                call()
            except OSError as exc:
                return exc.errno
            return 0

        libc = ctypes.CDLL(None, use_errno=True)

        def failed(result):  # a libc call's errno where it returned -1, else 0
            return ctypes.get_errno() if result == -1 else 0
        """)
    confine = textwrap.dedent(f"""
        privileges.drop({{"capabilities": {{n: ["CAP_CHOWN"] for n in ("bounding", "effective", "permitted")}}}})
        seccomp.install(seccomp.allowlist({network!r}), seccomp.build({profile!r}) if {profile!r} else None)
        """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(setup) + confine + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def guest_setup(hostile_wasm: Path, data: Path, out: Path) -> str:
    return f"""
        executor = Executor()
        guest = executor.prepare(RunSpec(Path({str(hostile_wasm)!r}), ["hostile", "fs", "/data"], stdout={str(out)!r},
                                         mounts=[Mount(Path({str(data)!r}), "/data", False)]))
        """


def test_the_container_filter_lets_a_guest_run_and_refuses_what_no_guest_needs(hostile_wasm: Path,
                                                                               tmp_path: Path) -> None:
    """Under the filter a guest still reads, writes, creates, renames, links and removes files in a
    granted directory; execve, ptrace, mount, unshare and (without a granted network) socket fail with
    EPERM in the process, and prctl does for every option but the four allowed (an argument rule)."""
    import errno

    out = tmp_path / "out.txt"
    result = confined(f"""
        print(json.dumps({{
            "guest": executor.start(guest).exit_code,
            "execve": errno_of(lambda: os.execv("/bin/true", ["true"])),
            "socket": errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
            "ptrace": failed(libc.ptrace(16, os.getppid(), 0, 0)),  # PTRACE_ATTACH
            "mount": failed(libc.mount(b"none", {str(tmp_path).encode()!r}, b"tmpfs", 0, None)),
            "unshare": failed(libc.unshare(0x10000000)),  # CLONE_NEWUSER
            "prctl PR_SET_NAME": failed(libc.prctl(15, b"named", 0, 0, 0)),
            "prctl PR_SET_DUMPABLE": failed(libc.prctl(4, 1, 0, 0, 0))}}))
        """, setup=guest_setup(hostile_wasm, tmp_path, out))
    assert out.read_text() == "fs ok\n"
    assert result == {"guest": 0, "execve": errno.EPERM, "socket": errno.EPERM, "ptrace": errno.EPERM,
                      "mount": errno.EPERM, "unshare": errno.EPERM, "prctl PR_SET_NAME": 0,
                      "prctl PR_SET_DUMPABLE": errno.EPERM}
    granted = confined("print(errno_of(lambda: socket.socket(socket.AF_INET).close()))", network=True)
    assert granted == 0


def test_the_specs_seccomp_profile_applies_on_top(hostile_wasm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    code = confined("print(executor.start(guest).exit_code)", setup=guest_setup(hostile_wasm, tmp_path, out),
                    profile=profile)
    assert code == 1 and out.read_text() == "denied: Permission denied\n"


def test_a_spec_profiles_argument_rules_match_only_their_arguments() -> None:
    """`args` as runc reads them: EQ compares `value`; MASKED_EQ masks the argument with `value` and
    compares it with `valueTwo`. Each rule fails its call only for the arguments it names."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["prctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
         "args": [{"index": 0, "value": 15, "op": "SCMP_CMP_EQ"}]},  # PR_SET_NAME
        {"names": ["fcntl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
         "args": [{"index": 1, "value": 0xF, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"}]}]}  # F_GETFL, not F_GETFD
    result = confined("""
        print(json.dumps({"PR_SET_NAME": failed(libc.prctl(15, b"named", 0, 0, 0)),
                          "PR_GET_NAME": failed(libc.prctl(16, ctypes.create_string_buffer(16), 0, 0, 0)),
                          "F_GETFL": failed(libc.fcntl(0, 3)), "F_GETFD": failed(libc.fcntl(0, 1))}))
        """, profile=profile)
    assert result == {"PR_SET_NAME": 13, "PR_GET_NAME": 0, "F_GETFL": 38, "F_GETFD": 0}


def test_a_spec_profiles_repeated_argument_is_split_and_an_unknown_name_skipped() -> None:
    """Two conditions on prctl's option (a deny rule) become a rule each, as runc splits them: both
    options are denied, others not; the unknown name beside prctl is skipped, not the rule."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_call", "prctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
         "args": [{"index": 0, "value": 15, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]}]}
    result = confined("""
        print(json.dumps({"PR_SET_NAME": failed(libc.prctl(15, b"named", 0, 0, 0)),
                          "PR_GET_NAME": failed(libc.prctl(16, ctypes.create_string_buffer(16), 0, 0, 0)),
                          "PR_GET_SECCOMP": failed(libc.prctl(21, 0, 0, 0, 0))}))
        """, profile=profile)
    assert result == {"PR_SET_NAME": 13, "PR_GET_NAME": 13, "PR_GET_SECCOMP": 0}


def test_landlock_confines_the_process_to_its_rootfs_and_mounts(tmp_path: Path) -> None:
    """Below WASI: once the ruleset is enforced, host code in the process opens nothing outside its
    grants, and writes only below the writable ones."""
    import errno

    from wasmctr.sandbox import landlock

    if not landlock.abi():
        pytest.skip("this kernel has no Landlock")
    rootfs, rw, outside = tmp_path / "rootfs", tmp_path / "rw", tmp_path / "outside"
    for directory in (rootfs, rw, outside):
        directory.mkdir()
        (directory / "file").write_text("x")
    result = confined(f"""
        rootfs, rw, outside = Path({str(rootfs)!r}), Path({str(rw)!r}), Path({str(outside)!r})
        assert landlock.restrict([rootfs], [rw])
        print(json.dumps({{
            "read rootfs": errno_of(lambda: os.close(os.open(rootfs / "file", os.O_RDONLY))),
            "write rootfs": errno_of(lambda: os.close(os.open(rootfs / "new", os.O_WRONLY | os.O_CREAT))),
            "write rw": errno_of(lambda: os.close(os.open(rw / "new", os.O_WRONLY | os.O_CREAT))),
            "read outside": errno_of(lambda: os.close(os.open(outside / "file", os.O_RDONLY))),
            "read /etc": errno_of(lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)))}}))
        """)
    assert result == {"read rootfs": 0, "write rootfs": errno.EACCES, "write rw": 0,
                      "read outside": errno.EACCES, "read /etc": errno.EACCES}


def test_the_default_devices_through_containerd(containerd, images) -> None:  # type: ignore[no-untyped-def]
    from conftest import DEVICE_CASES

    for i, (args, expected) in enumerate(DEVICE_CASES):
        proc = ctr_run(containerd, "--rm", images["hostile"], f"dev-{i}", "/hostile.wasm", *args)
        assert proc.stdout == expected, (args, proc)
    ls = ctr_run(containerd, "--rm", images["hostile"], "dev-ls", "/hostile.wasm", "ls", "/dev")
    assert sorted(ls.stdout.split()) == [".", "..", "full", "null", "random", "tty", "urandom", "zero"]
    wait_for_nothing_left(containerd)


def test_a_guest_joins_the_network_namespace_its_spec_names(containerd, images) -> None:  # type: ignore[no-untyped-def]
    """A pod's containers share its network namespace: the spec names it by path, and the guest's process
    is in it (here a namespace of a process the test starts with `unshare --net`)."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        netns = f"/proc/{holder.pid}/ns/net"
        wait_for(lambda: os.stat(netns).st_ino != os.stat("/proc/self/ns/net").st_ino, 5,
                 "unshare to make the namespace")
        assert ctr_run(containerd, "-d", "--with-ns", f"network:{netns}", images["hostile"], "netns-1",
                       "/hostile.wasm", "sleep", "30").returncode == 0
        pid = int(containerd.ctr("task", "ls").stdout.split("netns-1", 1)[1].split()[0])
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        containerd.ctr("task", "kill", "--signal", "SIGKILL", "netns-1", check=True)
        delete_task(containerd, "netns-1")
        containerd.ctr("container", "delete", "netns-1")
    finally:
        holder.kill()
        holder.wait()
    wait_for_nothing_left(containerd)
