"""Real services for the tests, started on 127.0.0.1 and stopped afterwards: Debian's `docker-registry`
(plain, or with htpasswd and TLS from a CA made here with openssl) and `containerd`, with the `ctr run`
helpers the shim's tests share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 15.0, what: str = "service") -> None:  # type: ignore[no-untyped-def]
    """Until `predicate()` is true (an exception counts as not yet); a deadline that passes fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.05)
    raise TimeoutError(f"waited {timeout} s for {what}, in vain")


@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> Tls:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                          "server.pem"))
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=wasmctr test CA",
        "-keyout", str(ca_key), "-out", str(ca))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
        "-out", str(csr))
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return Tls(ca, cert, key)


class RegistryProcess:
    """One `docker-registry serve` on 127.0.0.1, with its storage under `directory`."""

    def __init__(self, directory: Path, *, users: dict[str, str] | None = None, tls: Tls | None = None,
                 extra_auth: str = "") -> None:
        self.directory = directory
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = directory / "data"
        self.tls = tls
        self.users = users or {}
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        auth = extra_auth
        if self.users:
            htpasswd = directory / "htpasswd"
            lines = [subprocess.run(["htpasswd", "-Bbn", u, p], check=True, capture_output=True,
                                    text=True).stdout.strip() for u, p in self.users.items()]
            htpasswd.write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
        tls_block = f"  tls:\n    certificate: {tls.cert}\n    key: {tls.key}\n" if tls else ""
        self.config = directory / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n{tls_block}{auth}"
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> RegistryProcess:
        log = open(self.directory / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=log, stderr=log,
                                     start_new_session=True)
        verify = str(self.tls.ca) if self.tls else True
        wait_for(lambda: requests.get(f"{self.url}/v2/", verify=verify, timeout=1).status_code in (200, 401),
                 what="docker-registry")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def blob_file(self, digest: str) -> Path:
        hex_digest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


@contextlib.contextmanager
def registry(directory: Path, **kwargs) -> Iterator[RegistryProcess]:  # type: ignore[no-untyped-def]
    reg = RegistryProcess(directory, **kwargs).start()
    try:
        yield reg
    finally:
        reg.stop()


def ppid(pid: int) -> int:
    """A process's parent (0 once it is gone), from /proc/PID/stat: the field after `pid (comm) state`."""
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def process_state(pid: int) -> str:
    """R, S, Z...; "" once the process is gone."""
    fields = _stat(pid)
    return fields[0] if fields else ""


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name; [] once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def remove_cgroup_tree(cgroups_path: str) -> None:
    """Remove a test's cgroup and its parents, in every hierarchy, up to (not including) the mount: a
    cleaned path's parents (`/tmp/pytest-of-root/...`) outlive the container. A parent another test
    still uses is not empty, and stays."""
    from wasmctr_node.cgroups import Cgroup

    group = Cgroup.open(cgroups_path)
    for mount in set(group.mounts.values()):
        directory = Path(mount + group.path)
        while directory != Path(mount):
            with contextlib.suppress(OSError):
                directory.rmdir()
            directory = directory.parent


def status_fields(text: str) -> dict[str, list[str]]:
    """/proc/PID/status as {field: its words}: `Uid` -> [real, effective, saved, fs], `CapEff` -> [hex]."""
    return {key: value.split() for key, _, value in (line.partition(":") for line in text.splitlines())}


def proc_status(pid: int | str) -> dict[str, list[str]]:
    return status_fields(Path(f"/proc/{pid}/status").read_text())


class Containerd:
    """A private containerd (own root, state and socket) for `ctr` interop tests; `umask` is the one it
    runs with (and passes on to the shims it starts), -1 for the test's own. Its config is made here
    (`extra_config` added), or `config`, a whole file used as it is (its root, state and address are
    the flags' all the same). `env` is added to its environment, which its shims inherit."""

    def __init__(self, directory: Path, extra_config: str = "", umask: int = -1, config: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.extra_config = extra_config
        self.config = config
        self.umask = umask
        self.env = env or {}
        self.socket = directory / "containerd.sock"
        self.shims = Path(tempfile.mkdtemp(prefix="wasmctr-shims-"))  # short: unix socket paths are <= 108
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Containerd:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.config or self.directory / "config.toml"
        if self.config is None:
            config.write_text(f'version = 2\n[grpc]\n  address = "{self.socket}"\n{self.extra_config}\n')
        log = open(self.directory / "containerd.log", "ab")
        import sys

        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               "WASMCTR_SHIM_SOCKET_DIR": str(self.shims), **self.env}
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config), "--root", str(self.directory / "root"),
             "--state", str(self.directory / "state"), "--address", str(self.socket)],
            stdout=log, stderr=log, start_new_session=True, env=env, umask=self.umask)
        wait_for(lambda: self.ctr("version").returncode == 0, what="containerd")
        return self

    def ctr(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(self.socket), *args], capture_output=True, text=True,
                              check=check, timeout=120)

    @contextlib.contextmanager
    def events(self) -> Iterator[list[str]]:
        """The lines `ctr events` prints, from the moment it has subscribed, growing as events come. Only
        what is published after the subscription reaches it, so probes (namespaces made here) are
        published until one comes through."""
        watcher = subprocess.Popen(["ctr", "--address", str(self.socket), "events"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        lines: list[str] = []

        def read() -> None:
            assert watcher.stdout is not None
            for line in watcher.stdout:
                lines.append(line)

        probes: list[str] = []

        def probe_seen() -> bool:
            probes.append(f"events-probe-{len(probes)}")
            self.ctr("namespaces", "create", probes[-1], check=True)
            return any(probe in line for line in lines for probe in probes)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_for(probe_seen, what="`ctr events` to subscribe")
            yield lines
        finally:
            watcher.terminate()
            watcher.wait(10)
            reader.join(10)
            for probe in probes:
                self.ctr("namespaces", "remove", probe)

    def shim_servers(self) -> list[int]:
        """This containerd's shim servers: spawned as `... serve`, or forked by its template process (they
        keep the template's command line). Neither the template nor the guests a server forks (same
        command line as their server) count."""
        listed = subprocess.run(["pgrep", "-af", f"wasmctr_node.containerd .*-address {self.socket}"],
                                capture_output=True, text=True).stdout.splitlines()
        found = {int(pid): command for pid, _, command in (line.partition(" ") for line in listed)}
        parents = {pid: ppid(pid) for pid in found}
        templates = {pid for pid, command in found.items()
                     if command.endswith(" template") and parents[pid] not in found}
        return sorted(pid for pid, command in found.items()
                      if parents[pid] in templates or (command.endswith(" serve") and parents[pid] not in found))

    def shim_pid(self, container_id: str, namespace: str = "default") -> int:
        """The shim a container's `start` spawned (its bundle's shim.pid, as the runc shim writes it)."""
        bundle = self.directory / "state" / "io.containerd.runtime.v2.task" / namespace / container_id
        return int((bundle / "shim.pid").read_text())

    def restart(self) -> None:
        """Stop containerd alone (its shims live on in their own sessions) and start it again."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        self.start()

    def stop(self) -> None:
        subprocess.run(["pkill", "-KILL", "-f", f"wasmctr_node.containerd .*-address {self.socket}"],
                       capture_output=True)
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if line.split()[4].startswith(str(self.directory))]
        for mount_point in sorted(mounted, reverse=True):  # deepest first: a pod's shm, rootfs left mounted
            subprocess.run(["umount", "-l", mount_point], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.shims, ignore_errors=True)


class TokenServer:
    """A Docker-style token service (the `Bearer realm=...` flow) that the registry trusts.

    Issues RS256 JWTs whose `x5c` header carries a self-signed certificate that the registry has as its
    `rootcertbundle`. Users given at start get the actions they ask for; anonymous callers get `pull`
    only where `anonymous_pull` is set.
    """

    def __init__(self, directory: Path, users: dict[str, str], anonymous_pull: bool = False) -> None:
        import base64
        import http.server
        import json
        import threading
        import urllib.parse
        import uuid

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        directory.mkdir(parents=True, exist_ok=True)
        self.key_path, self.cert_path = directory / "token.key", directory / "token.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=token-issuer", "-keyout", str(self.key_path), "-out", str(self.cert_path)],
                       check=True, capture_output=True)
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert_path), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.issuer, self.service = "wasmctr-test-issuer", "wasmctr-test-registry"
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.requests: list[str] = []
        server = self

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if users.get(name) != password:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                access = []
                for scope in query.get("scope", []):
                    for item in scope.split(" "):
                        kind, name, actions = item.split(":")
                        granted = actions.split(",") if user else (["pull"] if anonymous_pull else [])
                        access.append({"type": kind, "name": name, "actions": granted})
                server.requests.append(f"{user or 'anonymous'} {' '.join(query.get('scope', []))}")
                now = int(time.time())
                claims = {"iss": server.issuer, "sub": user or "", "aud": server.service, "exp": now + 300,
                          "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
                header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
                signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
                signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore
                body = json.dumps({"token": f"{signing_input}.{b64(signature)}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def registry_auth(self) -> str:
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.service}\n"
                f"    issuer: {self.issuer}\n    rootcertbundle: {self.cert_path}\n")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Dockerd:
    """Debian's dockerd on a private socket, with wasmctr-runtime added as runtime `wasmctr`."""

    def __init__(self, directory: Path, runtime: str) -> None:
        self.directory = directory
        self.runtime = runtime
        self.socket = directory / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> Dockerd:
        import docker

        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.directory / "data"), "--exec-root", str(self.directory / "exec"),
             "-H", self.host, "--pidfile", str(self.directory / "dockerd.pid"), "--iptables=false",
             "--ip-forward=false", "--bridge=none", "--storage-driver=vfs",
             "--add-runtime", f"wasmctr={self.runtime}"],
            stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: docker.DockerClient(base_url=self.host).ping(), timeout=60, what="dockerd")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run(["umount", "-R", str(self.directory / "exec")], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


# containerd-shim-wasmctr-v1 through `ctr`, as the tests/test_shim_*.py files drive it

SHIM_RUNTIME = ["--runtime", "io.containerd.wasmctr.v1"]


def ctr_run(containerd, *args: str, input: str | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    return subprocess.run(["ctr", "--address", str(containerd.socket), "run", *SHIM_RUNTIME, "--platform",
                           "wasi/wasm", *args], capture_output=True, text=True, input=input, timeout=timeout)


def leftovers(containerd) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    shims = containerd.shim_servers()
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(containerd.directory)
              in line]
    sockets = [p.name for p in containerd.shims.glob("*.sock") if not p.name.startswith("template-")]
    tasks = containerd.ctr("task", "ls", "-q").stdout.split()
    return {k: v for k, v in {"shims": shims, "mounts": mounts, "sockets": sockets, "tasks": tasks}.items() if v}


def wait_for_nothing_left(containerd, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while leftovers(containerd) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leftovers(containerd)


def delete_task(containerd, name: str) -> None:  # type: ignore[no-untyped-def]
    """Delete a killed task: once it has stopped (a kill returns before the task has), or fail."""
    wait_for(lambda: containerd.ctr("task", "delete", name).returncode == 0, 10, f"task {name} to be deletable")


def wait_for_status(containerd, status: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    wait_for(lambda: status in containerd.ctr("task", "ls").stdout, timeout, f"a task {status}")
