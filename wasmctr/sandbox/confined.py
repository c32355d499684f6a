"""`wasmctr run --user`: the guest runs in a child process that becomes that user, confined.

Becoming another user cannot be undone in the process that does it, and the run's own clean-up (the
scratch directories of --tmpfs, an unpacked rootfs) needs the invoking user's rights afterwards. So
the guest is prepared here (its code loaded once, shared), and a forked child opens the guest's
preopens, then becomes UID:GID with no capabilities and no_new_privs, installs the container
seccomp filter and confines itself with Landlock to the rootfs and the mounts, as a container process
under the shim does, and runs the guest. Its outcome comes back on a pipe (`isolated.report`); SIGTERM,
SIGINT and SIGHUP sent to this process are passed to the child, which stops its guest as `wasmctr run`
does, ending itself if the guest is blocked in a host call.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, NoReturn

from wasmctr.errors import UsageError, parameter
from wasmctr.running.executor import Executor, Outcome, Prepared
from wasmctr.running.isolated import outcome_of, report
from wasmctr.sandbox import landlock, privileges, seccomp

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse_user(text: str) -> tuple[int, int]:
    """`UID[:GID]` as `docker run --user` takes it, numbers only (a wasm image has no /etc/passwd); the
    gid defaults to the uid's number, as Docker's does for a uid with no passwd entry."""
    uid_text, _, gid_text = text.partition(":")
    if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
        raise UsageError(f"{parameter('user')} {text!r}: expected UID[:GID] as numbers")
    uid = int(uid_text)
    return uid, int(gid_text) if gid_text else uid


def run(executor: Executor, prepared: Prepared, uid: int, gid: int) -> Outcome:
    if os.geteuid() != 0 and (uid, gid) != (os.geteuid(), os.getegid()):
        raise UsageError(f"{parameter('user')}: only root can run a guest as another user")
    allow = seccomp.allowlist(prepared.spec.policy.network)  # built before the fork; the child loads it
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 125

        def stop_hard(outcome: Outcome) -> NoReturn:
            report(report_w, outcome)
            os._exit(outcome.exit_code)

        try:
            os.close(report_r)
            outcome = executor.start(prepared, stop_hard, confine=lambda: _confine(prepared, uid, gid, allow))
            report(report_w, outcome)
            code = outcome.exit_code
        except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
            report(report_w, exc)
        finally:
            os._exit(code)
    os.close(report_w)
    child = os.pidfd_open(pid)
    previous = {signum: signal.signal(signum, lambda s, _f: _forward(child, s)) for signum in FORWARDED}
    try:
        with os.fdopen(report_r, "rb") as reports:
            data = reports.read()
        _, status = os.waitpid(pid, 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(child)
    return outcome_of(data, status)


def _confine(prepared: Prepared, uid: int, gid: int, allow: Any) -> None:
    ruleset = landlock.ruleset_for(prepared.spec)  # while this process can still reach the paths
    privileges.drop({"user": {"uid": uid, "gid": gid}})
    seccomp.install(allow, None)
    landlock.enforce(ruleset)


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(child, signum)
