"""containers-registries.d(5): where sigstore attachments are to be read, per registry namespace.

    docker:
      127.0.0.1:5000/app:
        use-sigstore-attachments: true
    default-docker:
      use-sigstore-attachments: false

Every `*.yaml` file of the directory (`--registries.d`, else ~/.config/containers/registries.d if it exists,
else /etc/containers/registries.d) is merged; a namespace, or `default-docker`, defined in two files is an
error, as in containers/image (docker/registries_d.go). The most specific namespace that sets
`use-sigstore-attachments` decides, looked up as policy scopes are. Unset everywhere, wasmctr reads
attachments when the policy needs signatures (containers/image would not read them, and so refuse); set to
false, a `sigstoreSigned` requirement finds no signature. Lookaside (`lookaside`, `sigstore`) stores hold
GPG signatures, which wasmctr does not check: they are read as strings and not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wasmctr.errors import SigningError
from wasmctr.image.reference import Reference
from wasmctr.record import record
from wasmctr.signing.policy import scopes

SYSTEM = Path("/etc/containers/registries.d")
_FIELDS = {"lookaside": str, "lookaside-staging": str, "sigstore": str, "sigstore-staging": str,
           "use-sigstore-attachments": bool}


@record(frozen=True)
class Registries:
    """The merged configuration: `use-sigstore-attachments` per namespace (`""`: default-docker)."""

    source: str
    attachments: dict[str, bool]

    def use_attachments(self, ref: Reference) -> bool | None:
        """Whether to read `ref`'s sigstore attachments, None when no file says."""
        for scope in [*scopes(ref), ""]:
            if scope in self.attachments:
                return self.attachments[scope]
        return None


def default_dir() -> Path:
    user = Path.home() / ".config/containers/registries.d"
    return user if user.exists() else SYSTEM


def load(directory: str | os.PathLike[str] | None = None) -> Registries:
    """The configuration of `directory` (default: `default_dir()`); none when it does not exist."""
    chosen = Path(directory) if directory is not None else default_dir()
    attachments: dict[str, bool] = {}
    defined: dict[str, Path] = {}
    try:
        files = sorted(p for p in chosen.iterdir() if p.name.endswith(".yaml"))
    except FileNotFoundError:
        if directory is not None:
            raise SigningError(f"registries.d {chosen}: no such directory") from None
        files = []
    except OSError as exc:
        raise SigningError(f"registries.d {chosen}: {exc.strerror}") from None
    for path in files:
        for name, namespace in _namespaces(path).items():
            if name in defined:
                what = "default-docker" if name == "" else f'"docker" namespace {name!r}'
                raise SigningError(f"registries.d: {what} is defined both in {defined[name]} and {path}")
            defined[name] = path
            if "use-sigstore-attachments" in namespace:
                attachments[name] = namespace["use-sigstore-attachments"]
    return Registries(str(chosen), attachments)


def _namespaces(path: Path) -> dict[str, dict[str, Any]]:
    """The namespaces one file configures, `""` for default-docker, each checked for shape."""
    import yaml

    try:
        document = yaml.safe_load(path.read_bytes()) or {}
    except OSError as exc:
        raise SigningError(f"registries.d {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SigningError(f"registries.d {path} does not parse: {str(exc).splitlines()[0]}") from None
    docker = document.get("docker") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not isinstance(docker or {}, dict):
        raise SigningError(f"registries.d {path}: expected a mapping with default-docker and docker")
    found = dict(docker or {})
    if document.get("default-docker") is not None:
        found[""] = document["default-docker"]
    for name, namespace in found.items():
        if not isinstance(namespace or {}, dict):
            raise SigningError(f"registries.d {path}: namespace {name or 'default-docker'} is not a mapping")
        for key, kind in _FIELDS.items():
            if key in (namespace or {}) and not isinstance(namespace[key], kind):
                raise SigningError(f"registries.d {path}: {name or 'default-docker'}: {key} must be a "
                                   f"{'boolean' if kind is bool else 'string'}")
        found[name] = namespace or {}
    return found
