"""The signature policy: containers-policy.json(5), the file podman, skopeo and CRI-O read.

    {"default": [{"type": "insecureAcceptAnything"}],
     "transports": {"docker": {"127.0.0.1:5000/app": [{"type": "sigstoreSigned", "keyPath": "/k/cosign.pub",
                                                        "signedIdentity": {"type": "matchRepository"}}],
                               "*.example.com": [{"type": "reject"}]}}}

The requirements for an image are those of the most specific `docker` scope that names it (containers/image's
requirementsForImageRef): the reference with its tag or digest, then its repository and each parent
namespace up to the registry host, then `*.domain` wildcards of the host, then the transport's `""`, then
`default`. Every requirement in the list must accept the image. wasmctr's images come from registries, so the
`docker` transport's scopes apply to `pull` and to `run` alike; other transports are read, checked, unused.

Requirements: `insecureAcceptAnything`, `reject`, and `sigstoreSigned` with `keyPath`/`keyPaths`/`keyData`/
`keyDatas` and a `signedIdentity` (default `matchRepoDigestOrExact`): `matchExact`, `matchRepoDigestOrExact`,
`matchRepository`, `exactReference`, `exactRepository`, `remapIdentity`, with the semantics of containers/image's
policy_reference_match.go. What wasmctr cannot check (`signedBy` GPG keys, `signedBaseLayer`, Fulcio, PKI
or Rekor in `sigstoreSigned`) parses, and refuses every image it applies to: fail closed, never skipped.

Parsing is strict, as containers/image's: an unknown field or type, a missing `default`, an empty list,
two key sources in one requirement, a key repeated in an object make the whole file a `SigningError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmctr.errors import SigningError, WasmctrError
from wasmctr.image import reference as references
from wasmctr.image.reference import Reference
from wasmctr.record import record

ENV = "WASMCTR_SIGNATURE_POLICY"
SYSTEM = Path("/etc/containers/policy.json")
_KEY_SOURCES = ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki")
_UNCHECKABLE = ("fulcio", "pki", "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
                "rekorPublicKeyDatas")


@record(frozen=True)
class Identity:
    """A `signedIdentity`: which docker-reference in a payload is accepted for an image's reference."""

    type: str
    value: str = ""  # exactReference's dockerReference, exactRepository's dockerRepository
    signed_prefix: str = ""  # remapIdentity: `value` is its prefix

    def matches(self, image: Reference, signed: str) -> bool:
        try:
            claim, name_only = _signed_reference(signed)
        except WasmctrError:
            return False
        if self.type == "matchRepository":
            return claim.name == image.name
        if self.type == "exactRepository":
            return claim.name == references.parse(self.value).name
        if self.type == "exactReference":
            return not name_only and str(claim) == str(references.parse(self.value))
        if self.type == "matchExact":
            return not name_only and str(claim) == str(image)
        if self.type == "remapIdentity":
            image = _remap(image, self.value, self.signed_prefix)
        # matchRepoDigestOrExact: a tagged image needs its exact reference signed, one by digest its repository
        if name_only:
            return False
        return str(claim) == str(image) if image.tag else claim.name == image.name

    def __str__(self) -> str:
        shown = {"exactReference": f" {self.value}", "exactRepository": f" {self.value}",
                 "remapIdentity": f" {self.value} -> {self.signed_prefix}"}.get(self.type, "")
        return self.type + shown


@record(frozen=True)
class Requirement:
    """One requirement of a scope. `keys` are PEM public keys with where each came from; `unsupported` says
    why wasmctr cannot check it (then it refuses)."""

    type: str
    keys: tuple[tuple[str, bytes], ...] = ()
    identity: Identity = Identity("matchRepoDigestOrExact")
    unsupported: str = ""

    @property
    def needs_signatures(self) -> bool:
        return self.type == "sigstoreSigned" and not self.unsupported

    def __str__(self) -> str:
        if self.type != "sigstoreSigned":
            return self.type
        keys = ", ".join(where for where, _ in self.keys) or "no key"
        return f"sigstoreSigned (key {keys}; signedIdentity {self.identity})"


@record(frozen=True)
class Policy:
    """A parsed policy, and where it came from (for messages)."""

    source: str
    default: tuple[Requirement, ...]
    docker: dict[str, tuple[Requirement, ...]]

    def requirements(self, ref: Reference) -> tuple[Requirement, ...]:
        """The requirements of the most specific scope naming `ref`."""
        for scope in scopes(ref):
            if scope in self.docker:
                return self.docker[scope]
        return self.docker.get("", self.default)

    @property
    def accepts_anything(self) -> bool:
        """Whether every scope, and the default, accept any image: then no image needs to be looked at (the
        shim asks containerd for nothing on a node whose policy asks for no signature)."""
        return all(r.type == "insecureAcceptAnything" for scoped in (self.default, *self.docker.values())
                   for r in scoped)


ACCEPT_ANYTHING = Policy("no policy file (accept anything)", (Requirement("insecureAcceptAnything"),), {})


def scopes(ref: Reference) -> list[str]:
    """The `docker` scopes that can name `ref`, most specific first (containers/image's
    PolicyConfigurationIdentity and PolicyConfigurationNamespaces); registries.d looks its namespaces up so too."""
    found = [f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"]
    name = ref.name
    while True:
        found.append(name)
        if "/" not in name:
            break
        name = name.rsplit("/", 1)[0]
    host = name.split(":", 1)[0]
    while "." in host:
        host = host.split(".", 1)[1]
        found.append(f"*.{host}")
    return found


def default_path() -> Path | None:
    """Where the policy is read from, as podman looks: $WASMCTR_SIGNATURE_POLICY, else
    ~/.config/containers/policy.json, else /etc/containers/policy.json; None when none exists."""
    named = os.environ.get(ENV)
    if named:
        return Path(named)
    for candidate in (Path.home() / ".config/containers/policy.json", SYSTEM):
        if candidate.exists():
            return candidate
    return None


def load(path: str | os.PathLike[str] | None = None) -> Policy:
    """The policy at `path`, or where `default_path` finds one; with none anywhere, accept anything (what
    containers-common's policy.json says; podman instead refuses to pull)."""
    chosen = Path(path) if path is not None else default_path()
    if chosen is None:
        return ACCEPT_ANYTHING
    try:
        raw = chosen.read_bytes()
    except OSError as exc:
        raise SigningError(f"signature policy {chosen}: {exc.strerror}") from None
    return parse(raw, str(chosen))


def parse(raw: bytes, source: str) -> Policy:
    """A policy from its bytes; `source` names it in errors."""
    def fail(why: str) -> SigningError:
        return SigningError(f"signature policy {source} does not parse: {why}")

    try:
        document = json.loads(raw, object_pairs_hook=_no_repeats)
    except (ValueError, UnicodeDecodeError) as exc:
        raise fail(str(exc)) from None
    if not isinstance(document, dict) or "default" not in document or set(document) - {"default", "transports"}:
        raise fail('expected an object with "default" and optionally "transports"')
    default = _requirements(document["default"], "default", fail)
    transports = document.get("transports") or {}
    if not isinstance(transports, dict):
        raise fail('"transports" is not an object')
    docker: dict[str, tuple[Requirement, ...]] = {}
    for transport, scoped in transports.items():
        if not isinstance(scoped, dict):
            raise fail(f'transport "{transport}" is not an object of scopes')
        for scope, listed in scoped.items():
            found = _requirements(listed, f'{transport} scope "{scope}"', fail)
            if transport == "docker":
                docker[scope] = found
    return Policy(source, default, docker)


def _requirements(listed: Any, where: str, fail: Callable[[str], SigningError]) -> tuple[Requirement, ...]:
    if not isinstance(listed, list) or not listed:
        raise fail(f"{where}: expected a non-empty list of requirements")
    return tuple(_requirement(item, where, fail) for item in listed)


def _requirement(item: Any, where: str, fail: Callable[[str], SigningError]) -> Requirement:
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise fail(f"{where}: a requirement is not an object with a type")
    kind = item["type"]
    allowed = {"insecureAcceptAnything": {"type"}, "reject": {"type"},
               "signedBy": {"type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"},
               "signedBaseLayer": {"type", "baseLayerIdentity"},
               "sigstoreSigned": {"type", "signedIdentity", *_KEY_SOURCES, *_UNCHECKABLE}}.get(kind)
    if allowed is None:
        raise fail(f"{where}: unknown requirement type {kind!r}")
    if set(item) - allowed:
        raise fail(f"{where}: {kind} has unknown fields {', '.join(sorted(set(item) - allowed))}")
    if kind == "signedBy":
        return Requirement(kind, unsupported="signedBy (GPG) signatures are not checked by wasmctr")
    if kind == "signedBaseLayer":
        return Requirement(kind, unsupported="signedBaseLayer is not checked by wasmctr")
    if kind != "sigstoreSigned":
        return Requirement(kind)
    sources = [key for key in _KEY_SOURCES if key in item]
    if len(sources) != 1:
        raise fail(f"{where}: sigstoreSigned needs exactly one of {', '.join(_KEY_SOURCES)}")
    identity = _identity(item.get("signedIdentity"), where, fail)
    uncheckable = [key for key in _UNCHECKABLE if key in item]
    if uncheckable:
        return Requirement(kind, identity=identity,
                           unsupported=f"sigstoreSigned with {', '.join(uncheckable)} is not checked by wasmctr")
    return Requirement(kind, _keys(item, sources[0], where, fail), identity)


def _keys(item: dict[str, Any], source: str, where: str,
          fail: Callable[[str], SigningError]) -> tuple[tuple[str, bytes], ...]:
    """The PEM keys a requirement names (files are read when the policy is: a policy that names a key it
    cannot read is as broken as one that does not parse)."""
    value = item[source]
    values = value if source in ("keyPaths", "keyDatas") else [value]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise fail(f"{where}: {source} must be {'a non-empty list of strings' if value is not values else 'a string'}")
    keys = []
    for v in values:
        if source.startswith("keyData"):
            try:
                keys.append((f"{source} in {where}", base64.b64decode(v, validate=True)))
            except binascii.Error:
                raise fail(f"{where}: {source} is not base64") from None
            continue
        path = Path(v)
        try:
            keys.append((str(path), path.read_bytes()))
        except OSError as exc:
            raise fail(f"{where}: key {path}: {exc.strerror}") from None
    return tuple(keys)


def _identity(value: Any, where: str, fail: Callable[[str], SigningError]) -> Identity:
    if value is None:
        return Identity("matchRepoDigestOrExact")
    fields = {"matchExact": (), "matchRepoDigestOrExact": (), "matchRepository": (),
              "exactReference": ("dockerReference",), "exactRepository": ("dockerRepository",),
              "remapIdentity": ("prefix", "signedPrefix")}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in fields:
        raise fail(f"{where}: signedIdentity type {kind!r} is unknown")
    assert isinstance(value, dict) and isinstance(kind, str)
    wanted = fields[kind]
    if set(value) != {"type", *wanted} or not all(isinstance(value[k], str) and value[k] for k in wanted):
        raise fail(f"{where}: signedIdentity {kind} takes exactly {', '.join(wanted) or 'no fields'}")
    try:
        if kind == "exactReference" and _signed_reference(value["dockerReference"])[1]:
            raise fail(f"{where}: exactReference {value['dockerReference']!r} has neither a tag nor a digest")
        if kind == "exactRepository":
            references.parse(value["dockerRepository"])
    except WasmctrError as exc:
        if isinstance(exc, SigningError):
            raise
        raise fail(f"{where}: {exc}") from None
    return Identity(kind, *(value[k] for k in wanted))


def _signed_reference(text: str) -> tuple[Reference, bool]:
    """A docker-reference as signed, and whether it names only a repository (cosign's payloads do): our
    parser adds `latest` to such a name, Docker's ParseNormalizedNamed does not."""
    ref = references.parse(text)
    bare = text.split("@", 1)[0]
    return ref, ref.digest is None and bare.rfind(":") <= bare.rfind("/")


def _remap(image: Reference, prefix: str, signed_prefix: str) -> Reference:
    """`image` with its repository's leading `prefix` (a whole path component) replaced by `signed_prefix`."""
    name = image.name
    if name != prefix and not name.startswith(prefix + "/"):
        return image
    return references.parse(signed_prefix + str(image)[len(prefix):])


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError(f"a key appears twice in one object ({', '.join(k for k, _ in pairs)})")
    return found
