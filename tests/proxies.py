"""`wasmctr run -p` for the HTTP tests: started on a free loopback port, its stderr read as it comes."""

from __future__ import annotations

import http.client
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Server:
    """A running `wasmctr run -p`: its port, and its stderr's lines as they come (read by a thread, so that a
    test waiting for a line that never comes fails at a deadline instead of hanging)."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port = proc, port
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put("")  # the end

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=60)

    def get(self, path: str = "/") -> tuple[int, bytes]:
        conn = self.connect()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stderr_line(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The next line of the server's stderr that matches `pattern` (lines before it are skipped)."""
        while line := self.lines.get(timeout=timeout):
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"the server ended without a line matching {pattern!r}")


@contextmanager
def serving(wasm: Path, home: Path, *flags: str) -> Iterator[Server]:
    """`wasmctr run -p 127.0.0.1:0 FLAGS WASM`, once it says where it listens; stopped by SIGTERM after."""
    exe = shutil.which("wasmctr", path=str(Path(sys.executable).parent)) or "wasmctr"
    proc = subprocess.Popen([exe, "run", "-p", "127.0.0.1:0", *flags, str(wasm)], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "WASMCTR_HOME": str(home)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first line: where it serves (or why it cannot)
        found = re.match(r"wasmctr: serving http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + proc.stderr.read()
        yield Server(proc, int(found.group(1)))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
