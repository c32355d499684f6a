"""The image model: descriptors, manifests, indexes and configs, as the OCI image-spec defines them.

Parsed objects keep the exact bytes they came from (`raw`), so a digest is always of the stored bytes,
never of a re-serialisation. New documents are serialised canonically (sorted keys, no spaces) so the
same content always gives the same digest. This module knows nothing of disks or HTTP.

Documents come from registries and archives, so parsing checks the type of every field the rest of
wasmctr reads: a wrong shape (`"config": 5`, `"layers": "x"`, a digest that is not sha256 hex) is a
`StoreError` with one line that says which field, never an AttributeError further on.
"""

from __future__ import annotations

import json
import re
from typing import Any

from wasmctr.errors import StoreError
from wasmctr.image import digest as digests
from wasmctr.image import mediatypes as mt
from wasmctr.image import shape
from wasmctr.record import field, record

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@record(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`wasi/wasm`, `linux/amd64`, `linux/arm64/v8`."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], such as wasi/wasm")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Platform:
        what = "platform"
        return cls(shape.field(data, "os", str, what) or "", shape.field(data, "architecture", str, what) or "",
                   shape.field(data, "variant", str, what))

    def to_dict(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


WASI_WASM = Platform("wasi", "wasm")


@record(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = None

    @classmethod
    def of(cls, media_type: str, data: bytes, **extra: Any) -> Descriptor:
        return cls(media_type, digests.of_bytes(data), len(data), **extra)

    @classmethod
    def from_dict(cls, data: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(data, dict):
            raise StoreError(f"{what} must be a JSON object, not {shape.shown(data)}")
        digest = shape.field(data, "digest", str, what, required=True)
        if not DIGEST.fullmatch(digest):
            raise StoreError(f"{what}: digest {digest[:80]!r} is not sha256:<64 hex digits>")
        size = shape.field(data, "size", int, what, required=True)
        if size < 0:
            raise StoreError(f"{what}: size {size} is negative")
        platform = shape.field(data, "platform", dict, what)
        return cls(
            media_type=shape.field(data, "mediaType", str, what, required=True),
            digest=digest,
            size=size,
            annotations=shape.string_map(data, "annotations", what),
            platform=Platform.from_dict(platform) if platform is not None else None,
            artifact_type=shape.field(data, "artifactType", str, what),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, annotations: dict[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, annotations, self.platform, self.artifact_type)


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise StoreError(f"{what} is not a JSON object")
    return value


@record(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2). `subject` and `artifact_type` are an OCI 1.1 artifact's: the
    manifest it refers to (a signature's image), and what kind of artifact it is."""

    raw: bytes
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str]
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> Manifest:
        data = _load_json(raw, "manifest")
        if "config" not in data:
            raise StoreError("manifest has no config descriptor")
        config = Descriptor.from_dict(data["config"], "manifest config")
        layers = shape.field(data, "layers", list, "manifest") or []
        subject = data.get("subject")
        return cls(raw, shape.field(data, "mediaType", str, "manifest") or media_type or mt.OCI_MANIFEST, config,
                   [Descriptor.from_dict(layer, "manifest layer") for layer in layers],
                   shape.string_map(data, "annotations", "manifest"),
                   Descriptor.from_dict(subject, "manifest subject") if subject is not None else None,
                   shape.field(data, "artifactType", str, "manifest"))

    @classmethod
    def build(cls, config: Descriptor, layers: list[Descriptor], annotations: dict[str, str],
              subject: Descriptor | None = None, artifact_type: str | None = None) -> Manifest:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": config.to_dict(),
            "layers": [layer.to_dict() for layer in layers],
        }
        if annotations:
            doc["annotations"] = annotations
        if subject is not None:
            doc["subject"] = subject.to_dict()
        if artifact_type:
            doc["artifactType"] = artifact_type
        return cls(canonical_json(doc), mt.OCI_MANIFEST, config, layers, annotations, subject, artifact_type)

    @property
    def digest(self) -> str:
        return digests.of_bytes(self.raw)

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor.of(self.media_type, self.raw, **extra)


@record(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list."""

    raw: bytes
    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str]

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> Index:
        data = _load_json(raw, "index")
        entries = shape.field(data, "manifests", list, "index") or []
        return cls(raw, shape.field(data, "mediaType", str, "index") or media_type or mt.OCI_INDEX,
                   [Descriptor.from_dict(m, "index entry") for m in entries],
                   shape.string_map(data, "annotations", "index"))

    @classmethod
    def build(cls, manifests: list[Descriptor], annotations: dict[str, str]) -> Index:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [m.to_dict() for m in manifests],
        }
        if annotations:
            doc["annotations"] = annotations
        return cls(canonical_json(doc), mt.OCI_INDEX, manifests, annotations)

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor.of(self.media_type, self.raw, **extra)

    def select(self, platform: Platform) -> Descriptor | None:
        """The manifest for a platform; a missing variant in the request matches any variant."""
        for m in self.manifests:
            p = m.platform
            if p and p.os == platform.os and p.architecture == platform.architecture and (
                platform.variant is None or p.variant == platform.variant
            ):
                return m
        return None


def parse_config(raw: bytes) -> dict[str, Any]:
    """An image config (or a wasm artifact's), with the fields wasmctr reads checked for type."""
    what = "image config"
    config = _load_json(raw, what)
    for key in ("os", "architecture", "variant", "created"):
        shape.field(config, key, str, what)
    rc = shape.field(config, "config", dict, what)
    if rc is not None:
        what = "image config's config"
        for key in ("Entrypoint", "Cmd", "Env"):
            shape.strings(rc, key, what)
        shape.field(rc, "WorkingDir", str, what)
        shape.string_map(rc, "Labels", what)
    return config
