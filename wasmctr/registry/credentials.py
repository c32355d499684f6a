"""Registry credentials, shared with Docker through its `config.json`.

Reading goes through the `docker` package's auth helpers, so `auths`, `credsStore` and `credHelpers`
in `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`) behave exactly as for `docker`.
`login` writes the same file (or the configured credential helper), so `docker login` and
`wasmctr login` share credentials. Passwords only ever travel on stdin to helpers.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from wasmctr.errors import AuthError
from wasmctr.image import atomic
from wasmctr.record import record

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


@record(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def server_key(registry: str) -> str:
    """The key Docker files a registry under: the Hub has its legacy URL, others their host[:port]."""
    return DOCKER_HUB_KEY if registry in ("docker.io", "index.docker.io", "registry-1.docker.io") else registry


def lookup(registry: str) -> Credentials | None:
    """Credentials for a registry from Docker's config (inline `auths`, `credsStore`, `credHelpers`)."""
    import docker.auth
    import docker.errors

    path = config_path()
    try:
        config = docker.auth.load_config(str(path) if path.exists() else None)
        entry = config.resolve_authconfig(server_key(registry))
    except docker.errors.DockerException as exc:
        raise AuthError(f"credentials for {registry}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read {path}: {exc}") from None
    if not entry:
        return None
    if entry.get("IdentityToken"):
        return Credentials("<token>", entry["IdentityToken"])
    username, password = entry.get("Username") or entry.get("username"), entry.get("Password") or entry.get("password")
    if username and password is not None:
        return Credentials(username, password)
    return None


def save(registry: str, credentials: Credentials) -> str:
    """Store credentials where Docker would: the registry's credential helper, else `auths`. Returns where."""
    path = config_path()
    config = _read(path)
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    key = server_key(registry)
    if helper:
        _helper(helper).store(key, credentials.username, credentials.password)
        config.setdefault("auths", {})[key] = {}
        where = f"credential helper docker-credential-{helper}"
    else:
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        config.setdefault("auths", {})[key] = {"auth": token}
        where = str(path)
    _write(path, config)
    return where


def remove(registry: str) -> bool:
    """Forget a registry's credentials; False if there were none."""
    path = config_path()
    config = _read(path)
    key = server_key(registry)
    found = key in (config.get("auths") or {})
    if found:
        del config["auths"][key]
        _write(path, config)
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    if helper:
        import docker.credentials

        try:
            _helper(helper).erase(key)
            found = True
        except docker.credentials.StoreError:
            pass
    return found


def _helper(name: str) -> Any:
    import docker.credentials

    return docker.credentials.Store(name)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise AuthError(f"{path} is not a JSON object")
    return data


def _write(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # a private file whatever was at its name: a link (to a world-readable dotfile, or planted) or a FIFO is
    # replaced by a 0600 file, never written through
    atomic.write_bytes(path, json.dumps(config, indent="\t").encode() + b"\n", 0o600, devices=False)
