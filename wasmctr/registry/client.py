"""An OCI distribution client: the registry API over `transport`'s bounded, retrying HTTP session.

What it adds to plain HTTP:
- one request path that answers both Basic and Bearer challenges (the token service asked as the
  distribution token spec says, with the challenge parsed by oras-py), re-authenticating when a new
  scope is asked for, and that turns 401/403 into an actionable error instead of a retry loop;
- credentials that stay with their registry: `Authorization` goes only to its own origin (an upload
  `Location` on another host, port or scheme gets none, and cannot ask for any), and a password goes to a
  token service only over TLS or on the plain-HTTP registry's own host;
- time bounds: every request, the token service's included, must finish within `timeout` seconds
  (`WASMCTR_REGISTRY_TIMEOUT`, default 60); a blob transfer may take longer but must move at least
  1 MiB in every such window. A silent or drip-feeding server ends in one line naming the host;
- streaming uploads straight from disk and streaming downloads into a verifying store writer, resumed
  with an HTTP range request from what an interrupted pull left;
- manifests of every accepted media type, capped at 4 MiB, digests checked;
- transport policy as Docker's: HTTPS with verification, plain HTTP only for loopback or --insecure.
Below the CLI and the API, beside building and running: it imports none of them (pyproject.toml's `parts`
import contract).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, Any

import oras.auth.utils
import requests

from wasmctr.errors import AuthError, DigestMismatch, ImageNotFound, RegistryError, UsageError, parameter
from wasmctr.image import digest as digests
from wasmctr.image import mediatypes as mt
from wasmctr.image.model import Descriptor
from wasmctr.image.store import MAX_DOCUMENT, BlobWriter
from wasmctr.registry import credentials as creds
from wasmctr.registry import transport

ACCEPT_MANIFESTS = ", ".join([mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST])
CHUNK = transport.CHUNK
DEFAULT_TIMEOUT = 60.0
MAX_TOKEN_RESPONSE = 1 << 20


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 and [::1], with or without a port."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_timeout() -> float:
    """WASMCTR_REGISTRY_TIMEOUT in seconds, else 60; a value that is not a positive number is an error
    (a typo must not silently keep, or drop, a bound)."""
    text = os.environ.get("WASMCTR_REGISTRY_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise UsageError(f"WASMCTR_REGISTRY_TIMEOUT={text!r}: expected a positive number of seconds")
    return seconds


class Registry:
    """One registry host, as a client session. Thread-safe for parallel blob transfers."""

    def __init__(self, host: str, *, insecure: bool = False, ca_cert: str | None = None,
                 credentials: creds.Credentials | None = None, lookup_credentials: bool = True,
                 timeout: float | None = None) -> None:
        self.host = host
        self.api_host = "registry-1.docker.io" if host == "docker.io" else host
        self.scheme = "https"
        self.verify: bool | str = False if insecure else (ca_cert or os.environ.get("SSL_CERT_FILE") or True)
        self.plain_http_allowed = insecure or is_loopback(host)
        self.timeout = timeout or default_timeout()
        self.session = transport.session()
        self._credentials = credentials
        self._lookup = lookup_credentials and credentials is None
        self._auth_header: dict[str, str] = {}
        self._scheme_checked = False
        self._scheme_lock = threading.Lock()

    # -- low level ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        self._choose_scheme()
        return f"{self.scheme}://{self.api_host}/v2/{path}"

    def credentials(self) -> creds.Credentials | None:
        if self._lookup:
            self._credentials = creds.lookup(self.host)
            self._lookup = False
        return self._credentials

    def ping(self) -> None:
        """Check the registry answers the v2 API (and that our credentials work, if it wants some)."""
        with self.bounded():
            response = self.do_request(self.url(""), "GET")
        if response.status_code != 200:
            raise RegistryError(f"{self.host}: /v2/ answered {response.status_code} {response.reason}")

    @contextlib.contextmanager
    def bounded(self) -> Iterator[transport.Deadline]:
        """Run an exchange (request, authentication, body) under this client's deadline; an expired
        deadline becomes one line that names the host and the bound."""
        with transport.bounded(self.timeout) as deadline:
            try:
                yield deadline
            except (RegistryError, requests.exceptions.RequestException, OSError):
                if deadline.expired:
                    raise RegistryError(f"{self.host}: gave up after {self.timeout:g} s without an answer or "
                                        "progress (WASMCTR_REGISTRY_TIMEOUT)") from None
                raise

    def do_request(self, url: str, method: str = "GET", data: Any = None, headers: dict | None = None,
                   stream: bool = False) -> requests.Response:
        """One request, authenticated on demand (Basic or Bearer); transient faults are retried by the
        session. Call it inside `bounded()`."""
        self._choose_scheme()
        ours = self._is_ours(url)
        headers = {**(headers or {}), **(self._auth_header if ours else {})}
        response = self._send(method, url, data, headers, stream)
        if response.status_code == 401:
            response.close()
            answered = urllib.parse.urlsplit(response.url or url)
            if not (ours and self._is_ours(answered.geturl())):
                raise AuthError(f"{self.host}: {answered.scheme}://{answered.netloc} asked for credentials; "
                                f"they go to {self.host} alone")
            self._authenticate(response)
            _rewind(data)
            headers.update(self._auth_header)
            response = self._send(method, url, data, headers, stream)
            if response.status_code == 401:
                who = self.credentials()
                raise AuthError(f"{self.host}: authentication failed"
                                + (f" for user {who.username!r} (wrong password?)" if who else
                                   f"; log in with `wasmctr login {self.host}`"))
        if response.status_code == 403:
            raise AuthError(f"{self.host}: access denied to {urllib.parse.urlparse(url).path}"
                            f" ({_error_text(response)})")
        return response

    def _send(self, method: str, url: str, data: Any, headers: dict, stream: bool) -> requests.Response:
        try:
            return self.session.request(method, url, data=data, headers=headers, stream=stream, verify=self.verify,
                                        timeout=self._socket_timeouts(), allow_redirects=True)
        except requests.exceptions.SSLError as exc:
            raise RegistryError(f"{self.host}: TLS error ({_reason(exc)}); pass {parameter('ca_cert')} FILE for a "
                                f"private CA, or {parameter('insecure=True')}") from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"cannot reach {self.host}: {_reason(exc)}") from None

    def _is_ours(self, url: str) -> bool:
        """Whether `url` is this registry's own origin (scheme, host and port), the only one our
        Authorization goes to: an upload `Location` elsewhere gets none, as a redirect would (requests
        drops it when a redirect changes host, port or scheme)."""
        return _origin(url) == _origin(f"{self.scheme}://{self.api_host}/")

    def _socket_timeouts(self) -> tuple[float, float]:
        """Connect, and each read: a backstop only, longer than the deadline, which ends a stalled
        exchange first and with the clearer message."""
        return transport.CONNECT_TIMEOUT, 2 * self.timeout

    def _choose_scheme(self) -> None:
        """HTTPS first; plain HTTP only where Docker allows it (loopback, --insecure)."""
        with self._scheme_lock:
            if not self._scheme_checked:
                if self.plain_http_allowed:
                    self._probe_scheme()
                self._scheme_checked = True

    def _probe_scheme(self) -> None:
        timeout = self._socket_timeouts()
        try:
            self.session.get(f"https://{self.api_host}/v2/", verify=self.verify, timeout=timeout).close()
        except requests.exceptions.SSLError as exc:
            try:
                probe = self.session.get(f"http://{self.api_host}/v2/", timeout=timeout)
            except requests.exceptions.RequestException:
                raise RegistryError(f"{self.host}: TLS error ({_reason(exc)})") from None
            probe.close()
            if probe.status_code == 400:  # an HTTPS server that we could not verify
                raise RegistryError(f"{self.host}: TLS error ({_reason(exc)}); pass {parameter('ca_cert')} FILE for a "
                                    f"private CA, or {parameter('insecure=True')}") from None
            self.scheme = "http"
        except requests.exceptions.RequestException:
            pass  # reported with context by the request that follows

    def _authenticate(self, response: requests.Response) -> None:
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        who = self.credentials()
        if scheme == "basic":
            if who is None:
                raise AuthError(f"{self.host} requires authentication; log in with `wasmctr login {self.host}`")
            self._auth_header = {"Authorization": f"Basic {_basic(who)}"}
        elif scheme == "bearer":
            token = self._token(oras.auth.utils.parse_auth_header(challenge), who)
            self._auth_header = {"Authorization": f"Bearer {token}"}
        else:
            raise AuthError(f"{self.host}: unsupported authentication challenge {challenge[:100]!r}")

    def _token(self, challenge: oras.auth.utils.authHeader, who: creds.Credentials | None) -> str:
        """A token from the challenge's realm (distribution's token spec), with our credentials if any."""
        if not challenge.realm or not challenge.realm.startswith(("https://", "http://")):
            raise AuthError(f"{self.host}: the Bearer challenge names no token service")
        params = {k: v for k, v in (("service", challenge.service), ("scope", challenge.scope)) if v}
        withheld = who is not None and not self._may_send_basic(challenge.realm)
        headers = {"Authorization": f"Basic {_basic(who)}"} if who and not withheld else {}
        realm = urllib.parse.urlparse(challenge.realm).netloc
        try:
            with self.session.get(challenge.realm, params=params, headers=headers, verify=self.verify, stream=True,
                                  timeout=self._socket_timeouts()) as answer:
                body = answer.raw.read(MAX_TOKEN_RESPONSE, decode_content=True)
                status = answer.status_code
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"cannot reach the token service {realm} of {self.host}: {_reason(exc)}") from None
        token = None
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                doc = json.loads(body)
                token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            if withheld:
                raise AuthError(f"{self.host}: the token service {realm} refused us ({status}); your credentials "
                                f"were not sent to it: it is another host, over plain HTTP")
            raise AuthError(f"{self.host}: the token service {realm} refused us ({status})"
                            + (f" (user {who.username!r})" if who else f"; log in with `wasmctr login {self.host}`"))
        return token

    def _may_send_basic(self, realm: str) -> bool:
        """Our password goes to a token service over TLS, or in the clear only to the host that already
        gets it so (a plain-HTTP registry's own host, on any port): never to another host over plain HTTP,
        where anyone on the path, or whoever the registry names, would read it."""
        scheme, host, _ = _origin(realm)
        return scheme == "https" or (self.scheme == "http" and host == _origin(f"http://{self.api_host}/")[1])

    # -- manifests ---------------------------------------------------------------------------------

    def get_manifest_raw(self, repository: str, locator: str) -> tuple[bytes, str]:
        """Raw manifest bytes and media type; the digest is checked when the locator is one."""
        with self.bounded():
            response = self.do_request(self.url(f"{repository}/manifests/{locator}"), "GET",
                                       headers={"Accept": ACCEPT_MANIFESTS}, stream=True)
            raw = self._read_manifest(response, repository, locator)
        if locator.startswith("sha256:") and digests.of_bytes(raw) != locator:
            raise DigestMismatch(f"manifest {repository}@{locator}: the registry sent content with digest "
                                 f"{digests.of_bytes(raw)}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return raw, media_type

    def _read_manifest(self, response: requests.Response, repository: str, locator: str) -> bytes:
        with response:
            if response.status_code == 404:
                raise ImageNotFound(f"{self.host}/{repository}:{locator} not found on the registry "
                                    f"({_error_text(response)})")
            _expect(response, 200, f"GET manifest {repository}:{locator}")
            length = int(response.headers.get("Content-Length") or 0)
            if length > MAX_DOCUMENT:
                raise RegistryError(f"manifest {repository}:{locator} is {length} bytes, over the 4 MiB limit")
            try:
                raw = response.raw.read(MAX_DOCUMENT + 1, decode_content=True)
            except Exception as exc:  # urllib3's own errors (ProtocolError, ReadTimeoutError...), not requests'
                raise RegistryError(f"{self.host}: manifest {repository}:{locator} broke off: {_reason(exc)}") \
                    from None
        if len(raw) > MAX_DOCUMENT:
            raise RegistryError(f"manifest {repository}:{locator} is over the 4 MiB limit")
        return raw

    def put_manifest(self, repository: str, locator: str, raw: bytes, media_type: str) -> str | None:
        """Push a manifest; returns the registry's `OCI-Subject` header, the digest of the manifest's `subject`
        when the registry indexed it for its referrers API (distribution-spec 1.1), else None."""
        with self.bounded():
            response = self.do_request(self.url(f"{repository}/manifests/{locator}"), "PUT", data=raw,
                                       headers={"Content-Type": media_type})
            _expect(response, 201, f"PUT manifest {repository}:{locator}")
        return response.headers.get("OCI-Subject")

    def get_referrers(self, repository: str, digest: str) -> bytes | None:
        """The referrers API's index of the manifests whose `subject` is `digest`, or None from a registry
        without that API (a 404, which the spec reserves for it: the caller reads the referrers tag)."""
        with self.bounded():
            response = self.do_request(self.url(f"{repository}/referrers/{digest}"), "GET",
                                       headers={"Accept": mt.OCI_INDEX}, stream=True)
            try:
                return self._read_manifest(response, repository, f"referrers/{digest}")
            except ImageNotFound:
                return None

    # -- blobs -------------------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        with self.bounded():
            response = self.do_request(self.url(f"{repository}/blobs/{digest}"), "HEAD")
        if response.status_code == 404:
            return False
        _expect(response, 200, f"HEAD blob {digest}")
        return True

    def download_blob(self, repository: str, desc: Descriptor, writer: BlobWriter,
                      advance: Callable[[int], None]) -> None:
        """Stream a blob into a store writer (which verifies digest and size when it commits), asking
        only for the rest when the writer already holds the start of it."""
        if writer.size == desc.size:
            return
        headers = {"Range": f"bytes={writer.size}-"} if writer.size else {}
        with self.bounded() as deadline:
            response = self.do_request(self.url(f"{repository}/blobs/{desc.digest}"), "GET", headers=headers,
                                       stream=True)
            with response:
                if response.status_code == 404:
                    raise RegistryError(f"{self.host}/{repository}: blob {desc.digest} not found on the registry")
                if response.status_code == 206 and _range_start(response) == writer.size:
                    advance(writer.size)
                else:
                    _expect(response, 200, f"GET blob {desc.digest}")
                    writer.restart()  # the server sent the whole blob
                try:
                    for chunk in response.iter_content(CHUNK):
                        writer.write(chunk)
                        advance(len(chunk))
                        deadline.extend()
                except requests.exceptions.RequestException as exc:
                    raise RegistryError(f"{self.host}: download of {desc.digest} broke off: {_reason(exc)}") \
                        from None

    def fetch_blob(self, repository: str, desc: Descriptor, limit: int) -> bytes:
        """A small blob read whole (a signature payload), refused over `limit` bytes or when its bytes are not
        of the descriptor's digest and size."""
        if desc.size > limit:
            raise RegistryError(f"{self.host}/{repository}: blob {desc.digest} is {desc.size} bytes, over the "
                                f"{limit} bytes allowed")
        with self.bounded():
            response = self.do_request(self.url(f"{repository}/blobs/{desc.digest}"), "GET", stream=True)
            with response:
                if response.status_code == 404:
                    raise RegistryError(f"{self.host}/{repository}: blob {desc.digest} not found on the registry")
                _expect(response, 200, f"GET blob {desc.digest}")
                try:
                    data = response.raw.read(desc.size + 1, decode_content=True)
                except Exception as exc:  # urllib3's own errors, as in _read_manifest
                    raise RegistryError(f"{self.host}: blob {desc.digest} broke off: {_reason(exc)}") from None
        if len(data) != desc.size or digests.of_bytes(data) != desc.digest:
            raise DigestMismatch(f"{self.host}/{repository}: blob {desc.digest} has another digest or size "
                                 f"({digests.of_bytes(data)}, {len(data)} bytes)")
        return data

    def mount_blob(self, repository: str, digest: str, source: str) -> str | None:
        """Try a cross-repository mount; returns None if mounted, else the upload URL the registry opened."""
        with self.bounded():
            response = self.do_request(self.url(f"{repository}/blobs/uploads/?mount={digest}&from={source}"),
                                       "POST")
        if response.status_code == 201:
            return None
        _expect(response, 202, f"POST mount {digest}")
        return self._location(response)

    def start_upload(self, repository: str) -> str:
        with self.bounded():
            response = self.do_request(self.url(f"{repository}/blobs/uploads/"), "POST",
                                       headers={"Content-Length": "0"})
        _expect(response, 202, "POST blob upload")
        return self._location(response)

    def upload_blob(self, location: str, desc: Descriptor, stream: IO[bytes],
                    advance: Callable[[int], None]) -> None:
        """One monolithic PUT whose body streams from disk (never read whole into memory); it may take as
        long as it needs while it keeps moving."""
        separator = "&" if "?" in location else "?"
        with self.bounded() as deadline:
            def moved(n: int) -> None:
                advance(n)
                deadline.extend()

            body = _ProgressReader(stream, desc.size, moved)
            response = self.do_request(f"{location}{separator}digest={desc.digest}", "PUT", data=body,
                                       headers={"Content-Type": "application/octet-stream",
                                                "Content-Length": str(desc.size)})
            _expect(response, 201, f"PUT blob {desc.digest}")

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host}: upload answered without a Location header")
        return urllib.parse.urljoin(f"{self.scheme}://{self.api_host}/", location)


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


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL as requests will connect to it, the port made explicit where the
    scheme implies it. Parsed by urllib3, as requests parses it before it connects: urllib.parse reads
    `https://evil.example\\@reg.example/` as reg.example, where the connection goes to evil.example. A URL
    with credentials in it, or one urllib3 cannot parse, is an origin of its own, equal to none of ours."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    try:
        parts = parse_url(url)
    except LocationParseError:
        return "", "", -1
    if parts.auth is not None:
        return "", "", -1
    scheme = (parts.scheme or "").lower()
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.host or "").lower().strip("[]"), parts.port if parts.port is not None else default


def _basic(who: creds.Credentials) -> str:
    return base64.b64encode(f"{who.username}:{who.password}".encode()).decode()


def _range_start(response: requests.Response) -> int | None:
    """The first byte of a 206 answer (`Content-Range: bytes START-END/SIZE`)."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", response.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


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
