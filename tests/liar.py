"""A lying registry on 127.0.0.1: it serves one image by the distribution API's read paths, and lies
in the ways a broken or hostile server does, as each test asks (`behaviour`)."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from services import free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class LyingRegistry:
    """`behaviour` may be changed between requests. Kinds:
    - `honest`: serves the image;
    - `silent`: accepts connections and never answers;
    - `drip`: answers a manifest with its headers, then one byte every second;
    - `endless`: a manifest body that never ends;
    - `silent-token`: a Bearer challenge whose token realm never answers;
    - `wrong-bytes`: blobs with other content than their digest;
    - `stall-blob`: the first half of each blob over 1 MiB, then nothing (the connection stays open);
    - `busy`: 503 with Retry-After (seconds, then an HTTP date) for the first two requests of each path;
    - `manifest`: serves `self.manifest_override` bytes as the manifest.
    Every request's method, path and Range header is recorded in `requests`."""

    def __init__(self, blobs: dict[str, bytes], manifest: bytes) -> None:
        self.blobs = blobs
        self.manifest = manifest
        self.manifest_override = b""
        self.behaviour = "honest"
        self.requests: list[tuple[str, str, str]] = []
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._busy_seen: dict[str, int] = {}
        liar = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                liar.handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                liar.handle(self, head=False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _hang(self) -> None:
        self._stop.wait(120)

    def handle(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        self.requests.append((h.command, h.path, h.headers.get("Range", "")))
        kind = self.behaviour
        if h.path.startswith("/token"):
            return self._hang()
        if kind == "silent":
            return self._hang()
        if kind == "silent-token":
            h.send_response(401)
            h.send_header("WWW-Authenticate", f'Bearer realm="http://{self.host}/token",service="liar"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if kind == "busy":
            seen = self._busy_seen.get(h.path, 0)
            self._busy_seen[h.path] = seen + 1
            if seen < 2:
                h.send_response(503)
                when = "1" if seen == 0 else email.utils.formatdate(time.time() + 1, usegmt=True)
                h.send_header("Retry-After", when)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return None
        if h.path == "/v2/":
            return self._send(h, 200, b"{}", "application/json", head)
        m = re.fullmatch(r"/v2/[^ ]+/(manifests|blobs)/([^/]+)", h.path)
        if not m:
            return self._send(h, 404, b"{}", "application/json", head)
        if m.group(1) == "manifests":
            if kind == "drip":
                return self._drip(h, self.manifest)
            if kind == "endless":
                return self._endless(h)
            body = self.manifest_override if kind == "manifest" else self.manifest
            return self._send(h, 200, body, OCI_MANIFEST, head)
        blob = self.blobs.get(m.group(2))
        if blob is None:
            return self._send(h, 404, b"{}", "application/json", head)
        if kind == "wrong-bytes":
            blob = bytes(reversed(blob))
        if kind == "stall-blob" and len(blob) > 1 << 20:
            return self._stall(h, blob)
        return self._send_range(h, blob, head)

    def _send(self, h: Any, status: int, body: bytes, content_type: str, head: bool) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _send_range(self, h: Any, blob: bytes, head: bool) -> None:
        m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if not m or int(m.group(1)) >= len(blob):
            return self._send(h, 200, blob, "application/octet-stream", head)
        start = int(m.group(1))
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
        h.send_header("Content-Length", str(len(blob) - start))
        h.end_headers()
        if not head:
            h.wfile.write(blob[start:])

    def _drip(self, h: Any, body: bytes) -> None:
        h.send_response(200)
        h.send_header("Content-Type", OCI_MANIFEST)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for byte in body:
            if self._stop.wait(1):
                return
            try:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            except OSError:
                return

    def _endless(self, h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", OCI_MANIFEST)
        h.end_headers()
        h.close_connection = True
        chunk = b" " * 65536
        try:
            while not self._stop.is_set():
                h.wfile.write(chunk)
        except OSError:
            return

    def _stall(self, h: Any, blob: bytes) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(blob)))
        h.end_headers()
        try:
            h.wfile.write(blob[: len(blob) // 2])
            h.wfile.flush()
        except OSError:
            return
        self._hang()


def image(directory: Path, layer: bytes) -> tuple[dict[str, bytes], bytes]:
    """Blobs and manifest of a one-layer wasi/wasm image whose layer bytes are given."""
    config = json.dumps({"architecture": "wasm", "os": "wasi", "config": {"Entrypoint": ["/hello.wasm"]},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()

    def desc(media_type: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": desc("application/vnd.oci.image.config.v1+json", config),
                           "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)]}).encode()
    blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in (config, layer)}
    return blobs, manifest
