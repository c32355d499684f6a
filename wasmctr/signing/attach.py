"""Sigstore signatures attached to an image, as cosign and skopeo attach them, in a registry and in the store.

A manifest's signatures live in its repository under the tag `sha256-<hex>.sig`: an OCI manifest whose
layers are `application/vnd.dev.cosign.simplesigning.v1+json` payload blobs, each annotated with its
signature (`dev.cosignproject.cosign/signature`), and whose config lists the layers as diff_ids
(containers/image's putSignaturesToSigstoreAttachments). Signing adds a layer to what is there.

What is read is hostile: the manifest must be an OCI manifest of at most 4 MiB, each blob at most 4 MiB
(containers/image's MaxSignatureBodySize) and of the digest its descriptor says, or nothing is returned.

The store keeps an image's attachment as the registry does, an entry named `repo:sha256-<hex>.sig`, and its
signature referrers (wasmctr.signing.referrers) as a registry without the referrers API does, an index under
`repo:sha256-<hex>`, so that `run` checks signatures without the network and `save`/`load` carry them with the
image. The registry
is reached through the few calls `Registry` (wasmctr.registry.client) has (`Remote`), which keeps this part
below the registry's, beside the layers (pyproject.toml's `parts` contract).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import IO, Protocol

from wasmctr.errors import ImageNotFound, SignatureRefused, WasmctrError
from wasmctr.image import mediatypes as mt
from wasmctr.image import reference as references
from wasmctr.image.model import Descriptor, Manifest, canonical_json
from wasmctr.image.reference import Reference
from wasmctr.image.store import Store, Tagged
from wasmctr.record import record
from wasmctr.signing import payload as payloads

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
MAX_SIGNATURE_BLOB = 4 << 20


class Source(Protocol):
    """What reading signatures needs of where they are kept: a registry client, or containerd's content store
    (the shim's `wasmctr_node.imagestore.ContentStore`). `get_manifest_raw` raises `ImageNotFound` for a tag
    that is not there, and checks a digest locator; `fetch_blob` returns a blob of at most `limit` bytes, of the
    descriptor's digest; `get_referrers` is the referrers API's index, None where there is no such API."""

    def get_manifest_raw(self, repository: str, locator: str) -> tuple[bytes, str]: ...

    def get_referrers(self, repository: str, digest: str) -> bytes | None: ...

    def fetch_blob(self, repository: str, desc: Descriptor, limit: int) -> bytes: ...


class Remote(Source, Protocol):
    """What attaching signatures needs of a registry client, besides reading them."""

    def put_manifest(self, repository: str, locator: str, raw: bytes, media_type: str) -> str | None: ...

    def has_blob(self, repository: str, digest: str) -> bool: ...

    def start_upload(self, repository: str) -> str: ...

    def upload_blob(self, location: str, desc: Descriptor, stream: IO[bytes],
                    advance: Callable[[int], None]) -> None: ...


@record(frozen=True)
class Signature:
    """One attached signature: its payload and annotations, as read (untrusted until verified)."""

    media_type: str
    payload: bytes
    annotations: dict[str, str]

    @property
    def value(self) -> str | None:
        return self.annotations.get(SIGNATURE_ANNOTATION)


@record(frozen=True)
class Attachment:
    """A signature manifest (a `.sig` tag's, or a referrer) and its blobs (config and layers), each already
    checked against its digest."""

    manifest: Manifest
    blobs: dict[str, bytes]

    @property
    def signatures(self) -> list[Signature]:
        return [Signature(layer.media_type, self.blobs[layer.digest], layer.annotations)
                for layer in self.manifest.layers]


def fetch(remote: Source, repository: str, digest: str) -> Attachment | None:
    """The attachment of manifest `digest` in `repository`; None when the source has none."""
    try:
        return read(remote, repository, references.signatures_tag(digest))
    except ImageNotFound:
        return None


def read(source: Source, repository: str, locator: str) -> Attachment:
    """The signature manifest `locator` names in `repository`, with its blobs; `ImageNotFound` if none."""
    raw, media_type = source.get_manifest_raw(repository, locator)
    manifest = parse(raw, media_type)
    blobs = {d.digest: source.fetch_blob(repository, d, MAX_SIGNATURE_BLOB)
             for d in (manifest.config, *manifest.layers)}
    return Attachment(manifest, blobs)


def sign(remote: Remote, repository: str, digest: str, signature: Signature) -> Attachment:
    """Add a signature to the attachment of `digest` (made if there is none); returns what was pushed."""
    existing = fetch(remote, repository, digest)
    signatures = existing.signatures if existing else []
    if signature not in signatures:
        signatures.append(signature)
    attachment = build(signatures)
    upload(remote, repository, attachment)
    remote.put_manifest(repository, references.signatures_tag(digest), attachment.manifest.raw, mt.OCI_MANIFEST)
    return attachment


def upload(remote: Remote, repository: str, attachment: Attachment) -> None:
    """Push the blobs of an attachment the registry does not have yet (its manifest is the caller's)."""
    for desc in (attachment.manifest.config, *attachment.manifest.layers):
        if not remote.has_blob(repository, desc.digest):
            remote.upload_blob(remote.start_upload(repository), desc, io.BytesIO(attachment.blobs[desc.digest]),
                               lambda n: None)


def build(signatures: list[Signature]) -> Attachment:
    """The `.sig` manifest holding `signatures`, with the config containers/image writes for it."""
    layers = [Descriptor.of(s.media_type, s.payload, annotations=dict(s.annotations)) for s in signatures]
    config = canonical_json({"architecture": "", "config": {}, "os": "",
                             "rootfs": {"diff_ids": [d.digest for d in layers], "type": "layers"}})
    config_desc = Descriptor.of(mt.OCI_CONFIG, config)
    blobs = {config_desc.digest: config, **{d.digest: s.payload for d, s in zip(layers, signatures, strict=True)}}
    return Attachment(Manifest.build(config_desc, layers, {}), blobs)


def keep(store: Store, ref: Reference, digest: str, attachment: Attachment) -> None:
    """Store an attachment as the entry `ref`'s repository has it under (`repo:sha256-<hex>.sig`)."""
    with store.writing():
        name(store, Reference(ref.registry, ref.repository, references.signatures_tag(digest)), put(store, attachment))


def name(store: Store, ref: Reference, desc: Descriptor) -> None:
    """Name an attachment entry, dropping the one the name held: unlike an image's, a replaced attachment is
    not kept as a dangling entry (it would be listed as an image)."""
    store.remove(lambda t: t.name == ref.familiar())
    store.set_tag(ref, desc)


def put(store: Store, attachment: Attachment) -> Descriptor:
    """Write an attachment's blobs and manifest into the store (naming it is the caller's); its descriptor."""
    for blob in attachment.blobs.values():
        store.put_bytes(blob, "application/octet-stream")
    return store.put_bytes(attachment.manifest.raw, mt.OCI_MANIFEST)


def entries(store: Store, digests: set[str]) -> list[Tagged]:
    """The store's attachment entries for these manifest digests, of any repository."""
    return [t for t in store.tags() if _signed(t) in digests]


def stored(store: Store, digest: str) -> list[Signature]:
    """Every signature the store holds for manifest `digest`: its `.sig` entry's, and those of the referrers
    its referrers-tag entry lists whose subject is `digest` (an archive is hostile: another's are ignored)."""
    signatures: list[Signature] = []
    for tagged in entries(store, {digest}):
        try:
            for manifest in _kept(store, tagged.descriptor, digest):
                for layer in manifest.layers:
                    if layer.size > MAX_SIGNATURE_BLOB:
                        raise SignatureRefused(f"signature blob {layer.digest} is over the 4 MiB limit")
                    signatures.append(Signature(layer.media_type, store.read_document(layer), layer.annotations))
        except WasmctrError as exc:
            raise SignatureRefused(f"the stored signatures {tagged.name} are damaged: {exc}") from None
    return signatures


def _kept(store: Store, desc: Descriptor, digest: str) -> list[Manifest]:
    """The signature manifests a store entry holds for `digest`: a `.sig` manifest, or the referrers of an
    index (the referrers tag's) that name `digest` as their subject."""
    if desc.media_type not in mt.INDEXES:
        return [parse(store.read_document(desc), desc.media_type)]
    listed = (parse(store.read_document(d), d.media_type) for d in store.read_index_blob(desc).manifests)
    return [m for m in listed if m.subject is not None and m.subject.digest == digest]


def drop_orphans(store: Store) -> list[Tagged]:
    """Remove the attachment entries of manifests no other entry of the store reaches (after an `rmi`)."""
    live: set[str] = set()
    for tagged in store.tags():
        if _signed(tagged) is None:
            live |= store.referenced(tagged.descriptor)
    return store.remove(lambda t: (signed := _signed(t)) is not None and signed not in live)


def new(payload: bytes, value: str) -> Signature:
    """A signature to attach: a simple-signing payload and its base64 signature."""
    return Signature(payloads.MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: value})


def _signed(tagged: Tagged) -> str | None:
    """The manifest digest an entry holds the signatures of, if it is an attachment entry."""
    if tagged.dangling:
        return None
    try:
        return references.signed_digest(references.parse(tagged.name))
    except WasmctrError:
        return None


def parse(raw: bytes, media_type: str) -> Manifest:
    """A signature manifest as read: an OCI manifest, else `SignatureRefused`."""
    try:
        declared = json.loads(raw).get("mediaType") or media_type
    except (ValueError, AttributeError):
        declared = ""
    if declared != mt.OCI_MANIFEST:
        raise SignatureRefused(f"the signature manifest is of type {declared!r}, not an OCI manifest")
    return Manifest.parse(raw, mt.OCI_MANIFEST)
