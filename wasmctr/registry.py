"""An OCI distribution client: oras-py's `Registry`, extended where it falls short for images.

Kept from oras-py: the `requests` session with its cookie policy and TLS settings, and its auth
backends (the Bearer token flow with scopes, anonymous tokens, basic auth encoding). Added here:
- one request path that answers both Basic and Bearer challenges, re-authenticating when a new scope
  is asked for, and that turns 401/403 into an actionable error instead of a retry loop;
- bounded retries with backoff for transient failures only (connection reset, 429 with Retry-After,
  5xx), not for refused connections or unknown hosts, which fail at once with one line;
- streaming uploads straight from disk (oras-py's monolithic upload reads the file into memory) and
  streaming downloads into a verifying store writer;
- manifests of every accepted media type, capped at 4 MiB, digests checked;
- transport policy as Docker's: HTTPS with verification, plain HTTP only for loopback or --insecure.
Imports the model, store writer and errors; never the CLI.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import IO, Any

import oras.auth
import oras.auth.utils
import oras.provider
import requests
import requests.adapters

from . import credentials as creds
from . import digest as digests
from . import mediatypes as mt
from .errors import AuthError, DigestMismatch, ImageNotFound, RegistryError
from .model import Descriptor
from .store import MAX_DOCUMENT, BlobWriter

ACCEPT_MANIFESTS = ", ".join([mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST])
ATTEMPTS = 4
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
TIMEOUT = (10, 120)
CHUNK = 1 << 20


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 and [::1], with or without a port."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Registry(oras.provider.Registry):
    """One registry host, as a client session. Thread-safe for parallel blob transfers."""

    def __init__(self, host: str, *, insecure: bool = False, ca_cert: str | None = None,
                 credentials: creds.Credentials | None = None, lookup_credentials: bool = True) -> None:
        verify: bool | str = ca_cert or os.environ.get("SSL_CERT_FILE") or True
        super().__init__(hostname=host, insecure=False, tls_verify=False if insecure else verify,
                         auth_backend="token")
        adapter = _LargeBlockAdapter(pool_maxsize=8)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.host = host
        self.api_host = "registry-1.docker.io" if host == "docker.io" else host
        self.plain_http_allowed = insecure or is_loopback(host)
        self._credentials = credentials
        self._lookup = lookup_credentials and credentials is None
        self._auth_header: dict[str, str] = {}
        self._scheme_checked = False
        self._scheme_lock = threading.Lock()

    # -- low level ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        self._choose_scheme()
        return f"{self.prefix}://{self.api_host}/v2/{path}"

    def credentials(self) -> creds.Credentials | None:
        if self._lookup:
            self._credentials = creds.lookup(self.host)
            self._lookup = False
        return self._credentials

    def ping(self) -> None:
        """Check the registry answers the v2 API (and that our credentials work, if it wants some)."""
        self._choose_scheme()
        response = self.do_request(self.url(""), "GET")
        if response.status_code != 200:
            raise RegistryError(f"{self.host}: /v2/ answered {response.status_code} {response.reason}")

    def do_request(self, url: str, method: str = "GET", data: Any = None, headers: dict | None = None,
                   json: dict | None = None, stream: bool = False) -> requests.Response:
        """One request, authenticated on demand (Basic or Bearer), retried only when the fault is transient."""
        self._choose_scheme()
        headers = {**(headers or {}), **self._auth_header}
        response = self._send(method, url, data, headers, json, stream)
        if response.status_code == 401:
            self._authenticate(response)
            _rewind(data)
            headers.update(self._auth_header)
            response = self._send(method, url, data, headers, json, stream)
            if response.status_code == 401:
                who = self.credentials()
                raise AuthError(f"{self.host}: authentication failed"
                                + (f" for user {who.username!r} (wrong password?)" if who else
                                   f"; log in with `wasmctr login {self.host}`"))
        if response.status_code == 403:
            raise AuthError(f"{self.host}: access denied to {urllib.parse.urlparse(url).path}"
                            f" ({_error_text(response)})")
        return response

    def _send(self, method: str, url: str, data: Any, headers: dict, json: dict | None,
              stream: bool) -> requests.Response:
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                response = self.session.request(method, url, data=data, headers=headers, json=json, stream=stream,
                                                verify=self._tls_verify, timeout=TIMEOUT, allow_redirects=True)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(f"{self.host}: TLS error ({_reason(exc)}); pass --ca-cert FILE for a private "
                                    f"CA, or --insecure") from None
            except requests.exceptions.RequestException as exc:
                reason = _reason(exc)
                if last or reason == "unknown host" or not _rewind(data):
                    raise RegistryError(f"cannot reach {self.host}: {reason}") from None
                time.sleep(0.25 * 2**attempt)
                continue
            if response.status_code in TRANSIENT_STATUS and not last and _rewind(data):
                response.close()
                time.sleep(_retry_after(response, attempt))
                continue
            return response
        raise AssertionError("unreachable")

    def _choose_scheme(self) -> None:
        """HTTPS first; plain HTTP only where Docker allows it (loopback, --insecure)."""
        with self._scheme_lock:
            if not self._scheme_checked:
                if self.plain_http_allowed:
                    self._probe_scheme()
                self._scheme_checked = True

    def _probe_scheme(self) -> None:
        try:
            self.session.get(f"https://{self.api_host}/v2/", verify=self._tls_verify, timeout=TIMEOUT)
        except requests.exceptions.SSLError as exc:
            try:
                probe = self.session.get(f"http://{self.api_host}/v2/", timeout=TIMEOUT)
            except requests.exceptions.RequestException:
                raise RegistryError(f"{self.host}: TLS error ({_reason(exc)})") from None
            if probe.status_code == 400:  # an HTTPS server that we could not verify
                raise RegistryError(f"{self.host}: TLS error ({_reason(exc)}); pass --ca-cert FILE for a private "
                                    f"CA, or --insecure") from None
            self.prefix = "http"
        except requests.exceptions.RequestException:
            pass  # reported with context by the request that follows

    def _authenticate(self, response: requests.Response) -> None:
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        who = self.credentials()
        if scheme == "basic":
            if who is None:
                raise AuthError(f"{self.host} requires authentication; log in with `wasmctr login {self.host}`")
            token = base64.b64encode(f"{who.username}:{who.password}".encode()).decode()
            self._auth_header = {"Authorization": f"Basic {token}"}
        elif scheme == "bearer":
            backend = self.auth
            assert isinstance(backend, oras.auth.TokenAuth)
            header = oras.auth.utils.parse_auth_header(challenge)
            if who is not None:
                backend.set_basic_auth(who.username, who.password)
                token = backend.request_token(header)
            else:
                token = backend.request_anonymous_token(header)
            if not token:
                raise AuthError(f"{self.host}: the token service refused us"
                                + (f" (user {who.username!r})" if who else
                                   f"; log in with `wasmctr login {self.host}`"))
            self._auth_header = {"Authorization": f"Bearer {token}"}
        else:
            raise AuthError(f"{self.host}: unsupported authentication challenge {challenge!r}")

    # -- manifests ---------------------------------------------------------------------------------

    def get_manifest_raw(self, repository: str, locator: str) -> tuple[bytes, str]:
        """Raw manifest bytes and media type; the digest is checked when the locator is one."""
        response = self.do_request(self.url(f"{repository}/manifests/{locator}"), "GET",
                                   headers={"Accept": ACCEPT_MANIFESTS}, stream=True)
        with response:
            if response.status_code == 404:
                raise ImageNotFound(f"{self.host}/{repository}:{locator} not found on the registry "
                                    f"({_error_text(response)})")
            _expect(response, 200, f"GET manifest {repository}:{locator}")
            length = int(response.headers.get("Content-Length") or 0)
            if length > MAX_DOCUMENT:
                raise RegistryError(f"manifest {repository}:{locator} is {length} bytes, over the 4 MiB limit")
            raw = response.raw.read(MAX_DOCUMENT + 1, decode_content=True)
        if len(raw) > MAX_DOCUMENT:
            raise RegistryError(f"manifest {repository}:{locator} is over the 4 MiB limit")
        if locator.startswith("sha256:") and digests.of_bytes(raw) != locator:
            raise DigestMismatch(f"manifest {repository}@{locator}: the registry sent content with digest "
                                 f"{digests.of_bytes(raw)}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return raw, media_type

    def put_manifest(self, repository: str, locator: str, raw: bytes, media_type: str) -> None:
        response = self.do_request(self.url(f"{repository}/manifests/{locator}"), "PUT", data=raw,
                                   headers={"Content-Type": media_type})
        _expect(response, 201, f"PUT manifest {repository}:{locator}")

    # -- blobs -------------------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.do_request(self.url(f"{repository}/blobs/{digest}"), "HEAD")
        if response.status_code == 404:
            return False
        _expect(response, 200, f"HEAD blob {digest}")
        return True

    def download_blob(self, repository: str, desc: Descriptor, writer: BlobWriter,
                      advance: Callable[[int], None]) -> None:
        """Stream a blob into a store writer (which verifies digest and size when it commits)."""
        response = self.do_request(self.url(f"{repository}/blobs/{desc.digest}"), "GET", stream=True)
        with response:
            if response.status_code == 404:
                raise RegistryError(f"{self.host}/{repository}: blob {desc.digest} not found on the registry")
            _expect(response, 200, f"GET blob {desc.digest}")
            try:
                for chunk in response.iter_content(CHUNK):
                    writer.write(chunk)
                    advance(len(chunk))
            except requests.exceptions.RequestException as exc:
                raise RegistryError(f"{self.host}: download of {desc.digest} broke off: {_reason(exc)}") from None

    def mount_blob(self, repository: str, digest: str, source: str) -> str | None:
        """Try a cross-repository mount; returns None if mounted, else the upload URL the registry opened."""
        response = self.do_request(self.url(f"{repository}/blobs/uploads/?mount={digest}&from={source}"), "POST")
        if response.status_code == 201:
            return None
        _expect(response, 202, f"POST mount {digest}")
        return self._location(response)

    def start_upload(self, repository: str) -> str:
        response = self.do_request(self.url(f"{repository}/blobs/uploads/"), "POST",
                                   headers={"Content-Length": "0"})
        _expect(response, 202, "POST blob upload")
        return self._location(response)

    def upload_blob(self, location: str, desc: Descriptor, stream: IO[bytes],
                    advance: Callable[[int], None]) -> None:
        """One monolithic PUT whose body streams from disk (never read whole into memory)."""
        separator = "&" if "?" in location else "?"
        body = _ProgressReader(stream, desc.size, advance)
        response = self.do_request(f"{location}{separator}digest={desc.digest}", "PUT", data=body,
                                   headers={"Content-Type": "application/octet-stream",
                                            "Content-Length": str(desc.size)})
        _expect(response, 201, f"PUT blob {desc.digest}")

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host}: upload answered without a Location header")
        return urllib.parse.urljoin(f"{self.prefix}://{self.api_host}/", location)


class _LargeBlockAdapter(requests.adapters.HTTPAdapter):
    """Sends request bodies in 1 MiB blocks (http.client's default is 8 KiB: many small syscalls)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = CHUNK
        super().init_poolmanager(*args, **kwargs)


class _ProgressReader:
    """A file wrapper that requests streams from (it knows the length) and that reports progress."""

    def __init__(self, stream: IO[bytes], size: int, advance: Callable[[int], None]) -> None:
        self._stream = stream
        self._size = size
        self._advance = advance
        self._start = stream.tell()

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n if n and n > 0 else CHUNK)
        self._advance(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(self._start + offset, whence)

    def tell(self) -> int:
        return self._stream.tell() - self._start


def _rewind(data: Any) -> bool:
    """Make a request body sendable again; False if it cannot be (a consumed one-shot stream)."""
    if data is None or isinstance(data, bytes | str | dict):
        return True
    seek = getattr(data, "seek", None)
    if seek is None:
        return False
    seek(0)
    return True


def _retry_after(response: requests.Response, attempt: int) -> float:
    value = response.headers.get("Retry-After", "")
    if value.isdigit():
        return min(float(value), 30.0)
    return 0.5 * 2**attempt


def _expect(response: requests.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise RegistryError(f"{what}: {response.status_code} {response.reason} ({_error_text(response)})")


def _error_text(response: requests.Response) -> str:
    """The registry's own error message (distribution's JSON errors), else the HTTP reason."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
        return text or response.reason
    except (ValueError, AttributeError, requests.exceptions.RequestException):
        return response.reason or str(response.status_code)


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "Name or service not known" in text or "NameResolution" in text or "nodename nor servname" in text \
            or "Temporary failure in name resolution" in text:
        return "unknown host"
    if "Connection refused" in text:
        return "connection refused"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate not trusted"
    ssl = re.search(r"\[SSL: [A-Z_]+\] [^(')]+", text)
    if ssl:
        return ssl.group(0).strip()
    if "Read timed out" in text or "ConnectTimeout" in text:
        return "timed out"
    if "Connection reset" in text or "RemoteDisconnected" in text or "Connection aborted" in text:
        return "connection reset"
    return text.split("\n")[0][:200]
