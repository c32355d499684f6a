"""Image references in Docker's grammar: `[registry[:port]/]path[:tag][@digest]`.

Follows distribution/reference: a first path component is a registry only if it contains `.` or `:`,
is `localhost`, or has an upper-case letter; otherwise the registry is Docker Hub (`docker.io`) and a
one-component path gets `library/`. The default tag is `latest`. As the rest of the image model, it imports
no part above it (pyproject.toml's `parts` import contract).
"""

from __future__ import annotations

import re

from wasmctr.errors import InvalidReference
from wasmctr.record import record

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_IMAGE_ID = re.compile(r"^(?:sha256:)?([0-9a-f]{1,64})$")
_SIGNATURES_TAG = re.compile(r"sha256-([0-9a-f]{64})(?:\.sig)?")


@record(frozen=True)
class Reference:
    """A parsed, normalised image reference."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified repository: `docker.io/library/hello`, `127.0.0.1:5000/app`."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The repository as `docker images` shows it: `hello`, `user/app`, `127.0.0.1:5000/app`."""
        if self.registry != DEFAULT_REGISTRY:
            return self.name
        return self.repository.removeprefix("library/") if self.repository.count("/") == 1 else self.repository

    @property
    def locator(self) -> str:
        """What a registry addresses a manifest by: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def familiar(self) -> str:
        """The short form users type and the store tags with: `hello:1`, `app@sha256:...`."""
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        return self.name + self._suffix()

    def _suffix(self) -> str:
        if self.digest:
            return (f":{self.tag}" if self.tag else "") + f"@{self.digest}"
        return f":{self.tag or DEFAULT_TAG}"


def image_id(text: str) -> str | None:
    """The hex digits of an image ID as users type one (`sha256:<hex>`, or the hex or a prefix of it, as
    `wasmctr images` shows it), or None when the text cannot be one."""
    found = _IMAGE_ID.match(text)
    return found.group(1) if found else None


def signatures_tag(digest: str) -> str:
    """The tag cosign and skopeo keep a manifest's sigstore signatures under, in its repository:
    `sha256-<hex>.sig` (containers/image's sigstoreAttachmentTag)."""
    return referrers_tag(digest) + ".sig"


def referrers_tag(digest: str) -> str:
    """The tag under which a registry without the referrers API keeps the index of a manifest's referrers:
    `sha256-<hex>` (distribution-spec 1.1's referrers tag schema; a sha256 digest needs no truncation)."""
    return digest.replace(":", "-", 1)


def signed_digest(ref: Reference) -> str | None:
    """The manifest digest whose signatures `ref` names (a `sha256-<hex>.sig` tag, or the referrers tag
    `sha256-<hex>`), else None."""
    found = _SIGNATURES_TAG.fullmatch(ref.tag or "")
    return f"sha256:{found.group(1)}" if found and not ref.digest else None


def matches(pattern: str, ref: Reference) -> bool:
    """Whether a `docker images REPOSITORY[:TAG]` pattern names the reference: its familiar name or
    name:tag, with `*` and `?` matching within one path component, as Go's path.Match does."""
    glob = re.compile("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern))
    return any(glob.fullmatch(form) for form in (ref.familiar_name, ref.familiar()))


def parse(text: str) -> Reference:
    """Parse a reference; raise InvalidReference with the reason when it is not one."""
    original = text
    if not text or text != text.strip():
        raise InvalidReference(f"invalid reference {original!r}: empty or surrounded by spaces")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(f"invalid reference {original!r}: bad digest {digest!r}")
        if digest.startswith("sha256:") and not _SHA256.match(digest):
            raise InvalidReference(f"invalid reference {original!r}: a sha256 digest has 64 lower-case hex digits")
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference {original!r}: bad tag {tag!r}")
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, path = first, rest
        if not _DOMAIN.match(registry):
            raise InvalidReference(f"invalid reference {original!r}: bad registry {registry!r}")
    else:
        registry, path = DEFAULT_REGISTRY, text
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if not _PATH.match(path):
        raise InvalidReference(
            f"invalid reference {original!r}: repository names are lower-case letters, digits and . _ - /"
        )
    if re.fullmatch(r"[0-9a-f]{64}", path):
        raise InvalidReference(f"invalid reference {original!r}: 64 hex digits are an image ID, not a name")
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if len(registry) + 1 + len(path) > 255:
        raise InvalidReference(f"invalid reference {original!r}: name longer than 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)

