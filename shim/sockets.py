"""The shims' unix sockets: bound private, and every connection's peer checked.

Whoever talks to the template or to a pod's shim acts as root: the template's `delete` kills and
unmounts, and the Task API also runs native containers through runc. So, as containerd's own shims
(ttrpc's UnixSocketRequireSameUser), only root and the uid containerd runs as (the shim's own) may:
the sockets live in a 0700 directory (`layout.private_socket_dir`), each is bound under umask 0177 so
it is 0600 from its first moment whatever umask containerd runs with (a chmod after bind leaves a
moment in which anyone may connect), and every connection accepted is checked by the credentials the
kernel took at its connect (SO_PEERCRED), then closed unanswered if they are another user's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def listen(path: str, backlog: int) -> socket.socket:
    """A socket listening at `path` (whatever was there is replaced), mode 0600 from the start. The umask
    is the process's: callers (the template, the binary) are single-threaded."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(umask)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process that connected (as the kernel recorded it at connect)."""
    return UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))[1]


def trusted(uid: int) -> bool:
    """Whether a peer of this uid may call: root, or this process's own user."""
    return uid in (0, os.geteuid())
