"""The host-side syscall allowlist of a container process, and the spec's own `linux.seccomp` on top.

WASI is the first wall; this one holds if a guest ever got past it (a wasmtime bug): once the guest
is prepared and the process has become the spec's user, it installs a seccomp filter that allows only
the calls a loaded guest needs, and every other call fails with EPERM. The list was derived by
measurement (`bench/syscalls.py` runs every kind of WASI call under strace after the point where the
filter goes) and completed from what each WASI preview 1 call maps to in wasmtime's implementation;
it has no way to start a program (execve), trace or mount anything, change ids or capabilities, load
modules, make namespaces (clone's CLONE_NEW* flags are masked, as in Docker's default profile, and
clone3, whose flags a filter cannot read, fails with ENOSYS so that libc falls back to clone) or
signal another process (kill, tkill, rt_sigqueueinfo and pidfd_send_signal fail; a second, small filter
made in the container process once its pid is known lets tgkill name that process alone), and no
sockets unless the guest was granted the network (components only). A spec that carries a
`linux.seccomp` profile gets it too, as a third filter: the kernel applies all, so the strictest answer
wins. The profile is never silently weakened: what libseccomp cannot express fails `build`. All are
built with libseccomp (`libseccomp.py`), not by hand.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from typing import Any

from wasmctr.errors import WasmctrError
from wasmctr.sandbox import libseccomp  # here, not where a filter is loaded: Landlock may forbid reading it by then

ALLOWED = (
    # memory: the engine's linear memories (initialised from a memfd image), guard pages, code, allocators
    "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "membarrier", "memfd_create",
    # threads: the guest's thread beside the supervising one, and their locks
    "futex", "set_robust_list", "rseq", "gettid", "getpid", "exit", "exit_group",
    "sched_yield", "sched_getaffinity",
    # the engine's async runtime (WASI's sleeps and polls run on it)
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2",
    # signals: SIGTERM/SIGINT handling, the engine's trap handlers, an interrupted guest (tgkill: this
    # process's own threads only, see `own_signals`); restart_syscall resumes a sleep after SIGSTOP/SIGCONT
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "tgkill", "restart_syscall",
    # time: clock_time_get, poll_oneoff timeouts, sleep, the supervisor's deadline
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "ppoll", "poll",
    # files through granted directories: fd_*/path_* calls
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "openat", "openat2", "close", "lseek", "fstat", "newfstatat", "statx", "getdents64", "fcntl", "ioctl",
    "fsync", "fdatasync", "ftruncate", "fallocate", "fadvise64", "mkdirat", "unlinkat", "renameat",
    "renameat2", "symlinkat", "linkat", "readlinkat", "utimensat", "faccessat", "faccessat2",
    # random_get
    "getrandom",
    # the spec's own profile loaded after this one, and Landlock: each can only restrict the process further
    "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    # the start pipe, the report pipe, stdio
    "dup", "dup2", "dup3", "pipe2",
    # a served component's worker processes (forked by clone, masked as below): reaped by their parent
    "wait4",
)
NETWORK = ("socket", "connect", "bind", "listen", "accept", "accept4", "getsockname", "getpeername",
           "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown")
PR_SET_PDEATHSIG, PR_SET_NAME, PR_GET_NAME, PR_GET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 15, 16, 21, 38
PRCTL_OPTIONS = (PR_SET_NAME, PR_GET_NAME,  # the engine names its threads
                 PR_SET_PDEATHSIG,  # a served component's workers end with the container process
                 PR_GET_SECCOMP, PR_SET_NO_NEW_PRIVS)  # libseccomp, loading the spec's profile; no other option
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: clone may set none (Docker's mask)
CLONE_NEW_FLAGS = 0x7E020000
RULED = ("prctl", "clone", "clone3")  # answered by argument (prctl, clone) or always (clone3: ENOSYS)

ACTIONS = {"SCMP_ACT_KILL": libseccomp.KILL_THREAD, "SCMP_ACT_KILL_THREAD": libseccomp.KILL_THREAD,
           "SCMP_ACT_KILL_PROCESS": libseccomp.KILL_PROCESS, "SCMP_ACT_TRAP": libseccomp.TRAP,
           "SCMP_ACT_ALLOW": libseccomp.ALLOW, "SCMP_ACT_LOG": libseccomp.LOG}
OPERATORS = {f"SCMP_CMP_{name}": name for name in libseccomp.COMPARISONS}


@functools.cache
def allowlist(network: bool) -> libseccomp.Filter:
    """The container allowlist (with the network calls if `network`) as a libseccomp filter, built once
    per process: a process that forks containers builds it before the fork, and each child only loads
    it (building it there would cost every container its own copies of the pages that work touches)."""
    allow = libseccomp.Filter(libseccomp.errno_action(errno.EPERM))
    for name in ALLOWED + (NETWORK if network else ()):
        try:
            allow.add_rule(libseccomp.ALLOW, name)
        except (OSError, ValueError):  # a call this kernel or architecture lacks
            continue
    for option in PRCTL_OPTIONS:
        allow.add_rule(libseccomp.ALLOW, "prctl", (0, "EQ", option, 0))
    allow.add_rule(libseccomp.ALLOW, "clone", (0, "MASKED_EQ", CLONE_NEW_FLAGS, 0))  # threads, no namespaces
    allow.add_rule(libseccomp.errno_action(errno.ENOSYS), "clone3")  # glibc then makes its threads with clone
    return allow


F_SETOWN, F_SETSIG, F_SETOWN_EX = 8, 10, 15
FIOSETOWN, SIOCSPGRP = 0x8901, 0x8902


def own_signals() -> libseccomp.Filter:
    """tgkill only with this process as its thread group (raise, and the engine signalling its own
    threads). Made in the container process itself: its pid is known only once it is forked (1 in a
    new pid namespace, where no other process is visible anyway; the pod's or the host's otherwise).
    Nor may a descriptor be given an owner (fcntl F_SETOWN, F_SETOWN_EX, F_SETSIG; ioctl FIOSETOWN,
    SIOCSPGRP): with O_ASYNC, the kernel would signal that owner, any process, on the writer's behalf."""
    only = libseccomp.Filter(libseccomp.ALLOW)
    denied = libseccomp.errno_action(errno.EPERM)
    only.add_rule(denied, "tgkill", (0, "NE", os.getpid(), 0))
    for command in (F_SETOWN, F_SETSIG, F_SETOWN_EX):
        only.add_rule(denied, "fcntl", (1, "EQ", command, 0))
    for request in (FIOSETOWN, SIOCSPGRP):
        only.add_rule(denied, "ioctl", (1, "EQ", request, 0))
    return only


def install(allow: libseccomp.Filter, profile: libseccomp.Filter | None) -> None:
    """Load the allowlist, `own_signals`, then the spec's profile (`build`) if any. Needs no_new_privs
    (set by `privileges.drop`) or CAP_SYS_ADMIN."""
    signals = own_signals()  # made before any filter is loaded: libseccomp probes the kernel as it starts
    allow.load()
    signals.load()
    if profile is not None:
        profile.load()


def build(profile: dict[str, Any]) -> libseccomp.Filter:
    """An OCI `linux.seccomp` profile as a libseccomp filter: defaultAction (defaultErrnoRet),
    architectures, and each syscalls entry's names, action (errnoRet) and argument conditions.
    Names this libseccomp does not know are skipped, as runc skips them; anything else it cannot
    express (an architecture it does not know, an argument index past 5, a rule it refuses) is an
    error, never a rule left out. A rule with several conditions on one argument (a range) is split,
    as runc splits it, into a rule per condition, which matches more calls: only where its action is
    at least as strict as the default, since otherwise the split would allow what the profile denies."""
    default = _action(profile.get("defaultAction", "SCMP_ACT_ALLOW"), profile.get("defaultErrnoRet"))
    try:
        rules = libseccomp.Filter(default)
    except ValueError as exc:
        raise WasmctrError(f"linux.seccomp: {exc}") from None
    for arch in profile.get("architectures") or []:
        if not rules.add_arch(str(arch).removeprefix("SCMP_ARCH_")):
            raise WasmctrError(f"linux.seccomp: unknown architecture {arch!r}")
    for entry in profile.get("syscalls") or []:
        names = entry.get("names") or []
        action = _action(entry.get("action", ""), entry.get("errnoRet"))
        if action == default:
            continue  # libseccomp refuses a rule that repeats the default
        conditions = [_condition(names, arg) for arg in entry.get("args") or []]
        for alternative in _alternatives(names, action, default, conditions):
            for name in names:
                try:
                    rules.add_rule(action, name, *alternative)
                except ValueError:
                    continue  # a name this libseccomp does not know
                except OSError as exc:
                    raise WasmctrError(f"linux.seccomp: libseccomp refuses the rule for {name!r}: "
                                       f"{exc.strerror}") from None
    return rules


def _condition(names: list[str], arg: dict[str, Any]) -> tuple[int, str, int, int]:
    index = int(arg["index"])
    if not 0 <= index <= 5:
        raise WasmctrError(f"linux.seccomp: {_named(names)}: argument index {index} (a system call has 6, 0-5)")
    return index, _operator(arg.get("op", "")), int(arg.get("value", 0)), int(arg.get("valueTwo", 0))


def _alternatives(names: list[str], action: int, default: int,
                  conditions: list[tuple[int, str, int, int]]) -> list[list[tuple[int, str, int, int]]]:
    """The condition lists to add a rule for each: all at once, or one each where an argument is
    compared more than once (libseccomp compares an argument once per rule)."""
    indexes = [index for index, *_ in conditions]
    if len(set(indexes)) == len(indexes):
        return [conditions]
    if _strictness(action) > _strictness(default):
        raise WasmctrError(f"linux.seccomp: {_named(names)}: several conditions on one argument with an action "
                           "less strict than the default cannot be expressed without allowing more calls")
    return [[condition] for condition in conditions]


def _strictness(action: int) -> int:
    """The kernel's order of precedence: the lower, the stricter (it compares the action as signed)."""
    return ctypes.c_int32(action & 0xFFFF0000).value


def _named(names: list[str]) -> str:
    return ", ".join(names) or "an entry without names"


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ERRNO":
        return libseccomp.errno_action(errno.EPERM if errno_ret is None else int(errno_ret))
    if name == "SCMP_ACT_TRACE":
        return libseccomp.trace_action(errno.EPERM if errno_ret is None else int(errno_ret))
    if name not in ACTIONS:
        raise WasmctrError(f"linux.seccomp: unknown action {name!r}")
    return ACTIONS[name]


def _operator(name: str) -> str:
    if name not in OPERATORS:
        raise WasmctrError(f"linux.seccomp: unknown operator {name!r}")
    return OPERATORS[name]
