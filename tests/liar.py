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
    - `manifest`: serves `self.manifest_override` bytes as the manifest;
    - `endless-blob`: `self.manifest_override` as the manifest, and a blob it names that we do not have as
      a body that never ends (the descriptor's size is whatever the override declares);
    - `signatures-down`: honest, but the sigstore attachment tag (`sha256-<hex>.sig`) always answers 502.
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
            if kind == "signatures-down" and m.group(2).endswith(".sig"):
                return self._send(h, 502, b"{}", "application/json", head)
            if kind == "drip":
                return self._drip(h, self.manifest)
            if kind == "endless":
                return self._endless(h)
            body = self.manifest_override if kind in ("manifest", "endless-blob") else self.manifest
            return self._send(h, 200, body, OCI_MANIFEST, head)
        blob = self.blobs.get(m.group(2))
        if blob is None and kind == "endless-blob" and not head:
            return self._endless(h, "application/octet-stream")
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

    def _endless(self, h: Any, content_type: str = OCI_MANIFEST) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
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


class Tattler:
    """A registry on 127.0.0.1 that sends its clients to other loopback addresses (all of 127/8 is
    loopback on Linux) and records which address saw which `Authorization` header, in `seen` as
    (address, method, path, authorization). Its token realm (plain HTTP) is on `realm_address`; upload
    `Location`s and blob downloads (a 307, as to a CDN) are on `transfer_address`, which, when
    `transfer_challenges`, asks for Basic credentials of its own. The realm gives a token to anyone; the
    registry takes only that token. `disguised` writes those URLs as `http://OTHER:PORT\\@127.0.0.1:PORT/...`,
    which urllib.parse reads as the registry's own host and urllib3 (which requests connects with) as OTHER."""

    TOKEN = "issued-by-the-realm"

    def __init__(self, realm_address: str = "127.0.0.2", transfer_address: str = "127.0.0.3",
                 transfer_challenges: bool = False, disguised: bool = False) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.realm_address, self.transfer_address = realm_address, transfer_address
        self.transfer_challenges = transfer_challenges
        self.disguise = f"\\@127.0.0.1:{self.port}" if disguised else ""
        self.seen: list[tuple[str, str, str, str]] = []
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        tattler = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                tattler.handle(self)

            do_GET = do_POST = do_PUT = do_HEAD  # noqa: N815

        self.servers = []
        for address in sorted({"127.0.0.1", realm_address, transfer_address}):
            httpd = http.server.ThreadingHTTPServer((address, self.port), Handler)
            httpd.daemon_threads = True
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            self.servers.append(httpd)

    def stop(self) -> None:
        for httpd in self.servers:
            httpd.shutdown()
            httpd.server_close()

    def authorizations(self, address: str) -> list[str]:
        return [auth for where, _, _, auth in self.seen if where == address]

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        address = h.connection.getsockname()[0]
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.seen.append((address, h.command, h.path, h.headers.get("Authorization", "")))
        path = h.path.split("?", 1)[0]
        if address == self.realm_address and path == "/token":
            return self._send(h, 200, json.dumps({"token": self.TOKEN}).encode())
        if address == self.transfer_address and path.startswith("/transfer/"):
            return self._transfer(h, path, body)
        if h.headers.get("Authorization") != f"Bearer {self.TOKEN}":
            realm = f"http://{self.realm_address}:{self.port}{self.disguise}/token"
            return self._send(h, 401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm}",service="tattler"'})
        elsewhere = f"http://{self.transfer_address}:{self.port}{self.disguise}/transfer"
        if path == "/v2/":
            return self._send(h, 200, b"{}")
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/(uploads/|[^/]+)", path)
        if m and m.group(2) == "blobs" and h.command == "POST":
            return self._send(h, 202, b"", {"Location": f"{elsewhere}/upload/{len(self.seen)}"})
        if m and m.group(2) == "blobs" and m.group(3) in self.blobs:
            if h.command == "HEAD":
                return self._send(h, 200, b"", {"Content-Length": str(len(self.blobs[m.group(3)]))})
            return self._send(h, 307, b"", {"Location": f"{elsewhere}/blob/{m.group(3)}"})
        if m and m.group(2) == "manifests" and h.command == "PUT":
            self.manifests[m.group(3)] = (body, h.headers.get("Content-Type", ""))
            return self._send(h, 201, b"")
        if m and m.group(2) == "manifests" and m.group(3) in self.manifests:
            raw, media_type = self.manifests[m.group(3)]
            return self._send(h, 200, raw, {"Content-Type": media_type})
        return self._send(h, 404, b"{}")

    def _transfer(self, h: http.server.BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        if self.transfer_challenges and not h.headers.get("Authorization"):
            return self._send(h, 401, b"{}", {"WWW-Authenticate": 'Basic realm="transfer"'})
        if path.startswith("/transfer/upload/") and h.command == "PUT":
            digest = re.search(r"digest=(sha256:[0-9a-f]{64})", h.path)
            if digest is None or digest.group(1) != "sha256:" + hashlib.sha256(body).hexdigest():
                return self._send(h, 400, b"{}")
            self.blobs[digest.group(1)] = body
            return self._send(h, 201, b"")
        blob = self.blobs.get(path.removeprefix("/transfer/blob/"))
        return self._send(h, 404, b"{}") if blob is None else self._send(h, 200, blob)

    def _send(self, h: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        headers = headers or {}
        for name, value in headers.items():
            h.send_header(name, value)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


class ReferrersRegistry:
    """A registry with distribution-spec 1.1's referrers API, which Debian's docker-registry 2.8 lacks: a
    proxy on 127.0.0.1 that passes every request to a real registry (`backend`, host:port) and adds the API as
    the spec has it. A manifest pushed with a `subject` is indexed (its descriptor with the manifest's
    `artifactType`, else its config's media type, and its annotations) and answered with `OCI-Subject`;
    `GET /v2/<name>/referrers/<digest>` lists what was indexed for it (an empty index if nothing). No paging,
    no filters (both optional). The client's Host goes to the backend, so that its Locations name the proxy."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.indexed: dict[tuple[str, str], list[dict[str, object]]] = {}
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                proxy.handle(self)

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET  # noqa: N815

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        import requests

        listing = re.fullmatch(r"/v2/(.+)/referrers/(sha256:[0-9a-f]{64})", h.path)
        if listing and h.command == "GET":
            index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                     "manifests": self.indexed.get((listing.group(1), listing.group(2)), [])}
            body = json.dumps(index).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/vnd.oci.image.index.v1+json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        data = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("content-length", "connection")}
        answer = requests.request(h.command, f"http://{self.backend}{h.path}", data=data, headers=headers,
                                  allow_redirects=False, timeout=30)
        extra = {}
        pushed = re.fullmatch(r"/v2/(.+)/manifests/[^/]+", h.path)
        if pushed and h.command == "PUT" and answer.status_code == 201:
            manifest = json.loads(data)
            if isinstance(manifest.get("subject"), dict):
                subject = manifest["subject"]["digest"]
                self.indexed.setdefault((pushed.group(1), subject), []).append({
                    "mediaType": manifest["mediaType"], "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                    "size": len(data), "artifactType": manifest.get("artifactType") or manifest["config"]["mediaType"],
                    **({"annotations": manifest["annotations"]} if manifest.get("annotations") else {})})
                extra["OCI-Subject"] = subject
        body = b"" if h.command == "HEAD" else answer.content
        h.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "content-encoding"):
                h.send_header(name, value)
        for name, value in extra.items():
            h.send_header(name, value)
        h.send_header("Content-Length", answer.headers.get("Content-Length", "0") if h.command == "HEAD"
                      else str(len(body)))
        h.end_headers()
        h.wfile.write(body)
