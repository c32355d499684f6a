"""The container process: the one path by which a guest runs confined in a process of its own, for every
caller (`wasmctr run --user`, each task of the containerd shim, each container of wasmctr-runtime).

prepare → fork → confine → ready → wait to start → run → report:

- prepare, in the caller's process: the guest's code loaded and checked (`Executor.prepare`, by the
  caller), then here, before the fork, what the spec asks checked (`Confinement`) and the Landlock
  ruleset made, while the paths are reachable and once rather than in each process's pages;
- fork, into the spec's pid namespace (`namespaces.fork`);
- confine, in the container process: default signal handlers (the parent's must never run in it),
  its cgroup first (all it does from then on is charged to the container, and limited), the caller's
  setup (the shim's stdio and the pod's network), its ipc, uts and mount namespaces, its rootfs and
  mounts opened while it is privileged (as runc enters the rootfs as root), then the spec's user with
  only the spec's capabilities and no_new_privs, then the seccomp filters;
- ready: everything that can fail has been done, and the parent hears so (or why it never will be);
  runc's `create` likewise returns once its init waits for `start`;
- wait to start, as the caller's `started` says (a pipe, a FIFO, or at once), then enforce Landlock:
  from then on the process opens files only below its rootfs and mounts;
- run the guest, and report how it ended on the same pipe (`wasmctr.running.report`).

What differs per caller is what it passes: the `Confinement` (from a spec, or a `--user`), the cgroup,
the setup step, how `start` arrives, and who prints the guest's fate (a container process speaks for
itself on its stderr; `wasmctr run --user` prints it in the parent).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from wasmctr import diagnostics
from wasmctr.record import record
from wasmctr.running import report
from wasmctr.running.executor import Executor, Outcome, Prepared
from wasmctr.sandbox import landlock, namespaces, privileges, seccomp

EXIT_NEVER_STARTED = 137  # a container deleted before it was started ends as one killed
EXIT_FAILED = 125  # the container process could not run its guest
# what a container process may take from its fork to ready (namespaces, preopens, ids, filters: well under
# a second); past it, it is stuck (an open that waits) and is killed, so that Create fails and the shim,
# which forks one container at a time, goes on
READY_SECONDS = 30


class Cgroup(Protocol):
    """The container's cgroup (`wasmctr_node.cgroups.Cgroup`), made by the caller before the fork."""

    def join(self) -> None:
        """Move the calling process, single-threaded, into the cgroup."""


@record(frozen=True)
class Confinement:
    """What a container process becomes before its guest runs: the spec's `process` (user, groups,
    capabilities), its seccomp filters (the container allowlist, and the spec's own profile on top) and
    its pid, ipc, uts and mount namespaces."""

    process: dict[str, Any]
    filters: tuple[Any, Any]
    spaces: namespaces.Namespaces

    @classmethod
    def of_spec(cls, config: dict[str, Any], network: bool) -> Confinement:
        """What an OCI spec asks, checked and built in the caller's process: a namespace that cannot be
        joined, a capability with no name or a bad seccomp profile fails there (Create, `create`), and
        the container process only loads the filters."""
        spaces = namespaces.of_spec(config)
        process = config.get("process") or {}
        privileges.capability_sets(process)
        profile = (config.get("linux") or {}).get("seccomp")
        return cls(process, (seccomp.allowlist(network), seccomp.build(profile) if profile else None), spaces)

    @classmethod
    def of_user(cls, uid: int, gid: int, network: bool) -> Confinement:
        """`wasmctr run --user UID:GID`: that user with no capabilities, the container allowlist, and the
        namespaces of the process that runs it."""
        return cls({"user": {"uid": uid, "gid": gid}}, (seccomp.allowlist(network), None), [])


def default_signals() -> None:
    """The first thing a forked container process does: its parent's handlers (the shim's SIGTERM
    cleanup unlinks the shim's socket) must never run in it, even while it blocks opening a FIFO."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)


Setup = Callable[[set[int]], None]
"""The caller's step in the container process, after its cgroup and before its namespaces: it is given
the descriptors the container process itself holds (its report pipe, its Landlock ruleset), which a
setup that closes what it inherited must keep."""


class Container:
    """One container process, from its fork to its report. `speaks_as`: the name its own stderr lines
    start with (the guest's fate as `wasmctr: ...`, an error after it was ready as `NAME: ...`); None
    if its parent prints them (it reads the report)."""

    def __init__(self, executor: Executor, guest: Prepared, confinement: Confinement, cgroup: Cgroup | None = None,
                 speaks_as: str | None = None) -> None:
        self.executor = executor
        self.guest = guest
        self.confinement = confinement
        self.cgroup = cgroup
        self.speaks_as = speaks_as
        self.report: report.Reader | None = None  # the parent's end, once forked

    def fork(self, setup: Setup | None = None, started: Callable[[], bool] = lambda: True) -> int:
        """Fork the container process (this call never returns in it) and return its pid. `started`
        blocks in the container process until the container is started, or returns False if it never
        will be (deleted first)."""
        ruleset = landlock.ruleset_for(self.guest.spec)  # enforced once started
        read_fd, write_fd = os.pipe()
        try:
            pid = namespaces.fork(self.confinement.spaces)
        except OSError:
            for fd in (read_fd, write_fd, *([ruleset] if ruleset is not None else [])):
                os.close(fd)
            raise
        if pid == 0:
            os.close(read_fd)
            self._become(write_fd, ruleset, setup, started)
        os.close(write_fd)
        if ruleset is not None:
            os.close(ruleset)
        self.report = report.Reader(read_fd)
        return pid

    def ready(self, pid: int) -> str | None:
        """In the parent: None once the container process is ready; else why it is not, once it has been
        reaped (nothing of it is left)."""
        assert self.report is not None
        try:
            failure = self.report.ready(READY_SECONDS)
        except TimeoutError as stuck:
            os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still this child's
            failure = str(stuck)
        if failure is not None:
            os.waitpid(pid, 0)
            self.report.close()
        return failure

    def wait(self, pid: int) -> Outcome:
        """In the parent: wait for the process to end; how its guest ended, as it reported or as its wait
        status says (killed), or ExecutorError with the reason it gave for not running its guest."""
        assert self.report is not None
        _, status = os.waitpid(pid, 0)
        return self.report.outcome(status)

    def _become(self, fd: int, ruleset: int | None, setup: Setup | None, started: Callable[[], bool]) -> NoReturn:
        """The container process, to its end: nothing may escape it, and it never returns."""
        code, ready = EXIT_FAILED, False
        try:
            default_signals()
            if self.cgroup is not None:
                self.cgroup.join()  # before any thread of its own: it moves the calling thread
            if setup is not None:
                setup({fd, *([ruleset] if ruleset is not None else [])})
            namespaces.enter(self.confinement.spaces)
            guest = self.executor.open(self.guest)
            privileges.drop(self.confinement.process)
            seccomp.install(*self.confinement.filters)  # from here, only the calls a loaded guest needs
            report.send(fd, None)
            ready = True
            if not started():
                code = EXIT_NEVER_STARTED
            else:
                landlock.enforce(ruleset)
                outcome = self.executor.start(guest, hard_stop=lambda ended: self._end(fd, ended))
                self._say(fd, outcome)
                code = outcome.exit_code
        except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
            report.send(fd, exc)
            if ready and self.speaks_as is not None:  # before ready, the parent reports it
                diagnostics.emit(f"{self.speaks_as}: {exc}")
        finally:
            os._exit(code)

    def _say(self, fd: int, outcome: Outcome) -> None:
        report.send(fd, outcome)
        if self.speaks_as is not None and outcome.message:
            diagnostics.emit(f"wasmctr: {outcome.message}")
        with contextlib.suppress(OSError):  # the guest's output went to fd 1 itself; nothing may change its code
            sys.stdout.flush()

    def _end(self, fd: int, outcome: Outcome) -> NoReturn:
        """The hard stop: the guest is blocked in a host call past its grace; only the process can end."""
        self._say(fd, outcome)
        os._exit(outcome.exit_code)
