"""HTTP for registries: a `requests` session whose every exchange is bounded in time, retried by urllib3.

Socket timeouts bound each `recv`, not a request: a server that drips one byte a second, or answers
headers and then nothing, would hold a plain `requests` call forever. Here each exchange runs under a
`Deadline`; the connections it uses are registered with it, and when it expires a watchdog shuts
their sockets down, so the blocked read fails at once. A deadline can be `extend`ed by progress: a
blob transfer may take as long as it needs while it keeps moving (see `registry`).

Retries are urllib3's `Retry` on the adapter: connection resets and 429/5xx answers are retried with
backoff, honouring `Retry-After` (seconds or an HTTP date, capped at 30 s); refused connections and
unknown hosts are not retried. Each attempt gets a full deadline. Request bodies go out in 1 MiB blocks
(http.client's default is 8 KiB).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

CHUNK = 1 << 20
CONNECT_TIMEOUT = 10.0
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
WATCH_INTERVAL = 0.1


class Deadline:
    """A time limit on one exchange; `extend` restarts it (progress was made)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def extend(self) -> None:
        self.expires = time.monotonic() + self.seconds

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


class _Watchdog:
    """One daemon thread that expires the deadlines whose time has come."""

    def __init__(self) -> None:
        self._active: set[Deadline] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._lock:
            self._active.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wasmctr-deadlines", daemon=True)
                self._thread.start()

    def remove(self, deadline: Deadline) -> None:
        with self._lock:
            self._active.discard(deadline)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            with self._lock:
                due = [d for d in self._active if d.expires <= now and not d.expired]
            for deadline in due:
                deadline.expire()


_watchdog = _Watchdog()
_current = threading.local()


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[Deadline]:
    """Every connection this thread uses inside the block is shut down once `seconds` pass without an
    `extend`. Blocks nest: the innermost deadline is the one connections attach to."""
    deadline = Deadline(seconds)
    outer = getattr(_current, "deadline", None)
    _current.deadline = deadline
    _watchdog.add(deadline)
    try:
        yield deadline
    finally:
        _watchdog.remove(deadline)
        _current.deadline = outer


def _attach(sock: socket.socket | None) -> None:
    deadline = getattr(_current, "deadline", None)
    if sock is not None and deadline is not None:
        deadline.attach(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self.sock)  # a kept-alive connection, reused: connect() is not called again
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self.sock)
        super().request(*args, **kwargs)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _Retry(Retry):
    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER)

    def sleep(self, response: Any = None) -> None:
        """Wait as the server asked (or back off); the wait is not the server's silence, so the
        deadline stands still meanwhile and the next attempt gets a full one."""
        deadline = getattr(_current, "deadline", None)
        if deadline is None or deadline.expired:
            super().sleep(response)
            return
        deadline.expires = float("inf")
        try:
            super().sleep(response)
        finally:
            deadline.extend()


RETRY = _Retry(total=3, connect=0, read=2, status=3, other=0, backoff_factor=0.25,
               status_forcelist=TRANSIENT_STATUS, allowed_methods=None, respect_retry_after_header=True,
               raise_on_status=False, raise_on_redirect=False)


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = CHUNK
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def session(pool_size: int = 8) -> requests.Session:
    """A session whose connections honour `bounded` deadlines and whose requests retry as above.
    Cookies are not kept: a registry has no business setting them for us."""
    from http.cookiejar import DefaultCookiePolicy

    s = requests.Session()
    s.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = _Adapter(pool_maxsize=pool_size, max_retries=RETRY)
    s.mount("https://", adapter)
    s.mount("http://", adapter)
    return s
