"""`wasmctr run --user`: the guest runs in a container process that becomes that user, confined.

Becoming another user cannot be undone in the process that does it, and the run's own clean-up (the
scratch directories of --tmpfs, an unpacked rootfs) needs the invoking user's rights afterwards. So
the guest is prepared here (its code loaded once, shared), and a container process (`container.py`,
the path the shim's and wasmctr-runtime's containers take) opens the guest's preopens, becomes UID:GID
with no capabilities and no_new_privs, installs the container seccomp filter, confines itself with
Landlock to the rootfs and the mounts, and runs the guest at once. Its outcome comes back in its
report, read here (the container process prints nothing of its own: `wasmctr run` says how the guest
ended); SIGTERM, SIGINT and SIGHUP sent to this process are passed to the child, which stops its guest
as `wasmctr run` does, ending itself if the guest is blocked in a host call.
"""

from __future__ import annotations

import contextlib
import os
import signal

from wasmctr.errors import UsageError, parameter
from wasmctr.running.executor import Executor, Outcome, Prepared
from wasmctr.sandbox.container import Confinement, Container

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
    network = prepared.spec.policy.network or prepared.world.listens  # a served component's host listens
    container = Container(executor, prepared, Confinement.of_user(uid, gid, network))
    pid = container.fork()
    child = os.pidfd_open(pid)
    previous = {signum: signal.signal(signum, lambda s, _f: _forward(child, s)) for signum in FORWARDED}
    try:
        return container.wait(pid)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(child)


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(child, signum)
