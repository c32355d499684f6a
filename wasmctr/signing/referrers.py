"""Signatures as OCI 1.1 referrers, beside the `.sig` tag: pushed as cosign's `--registry-referrers-mode=oci-1-1`
pushes them, read from the referrers API or the referrers tag, kept in the store.

A referrer is an OCI manifest whose `subject` is the signed manifest's descriptor, of `artifactType` (and config
media type) `application/vnd.dev.cosign.artifact.sig.v1+json`, whose layers are the simple-signing payloads
with their signature annotation (cosign's WriteSignaturesExperimentalOCI); it is pushed by digest. A registry
with the referrers API says it indexed the subject with the `OCI-Subject` header; without it, the client keeps
an image index under the tag `sha256-<hex>` listing the referrers, each descriptor with the manifest's
`artifactType` and annotations (distribution-spec 1.1, "Pushing Manifests with Subject"), read, extended and
written back, keeping what other clients listed there.

Reading asks `GET /v2/<name>/referrers/<digest>`, else (a 404) the referrers tag; what is listed is hostile:
only manifests listed with the signature artifact type are read, by digest, and one whose own `subject` is
not the image's digest is ignored. A listing that is not an index is no referrers, as the spec says.
"""

from __future__ import annotations

from wasmctr.errors import ImageNotFound, SignatureRefused, SigningError, StoreError
from wasmctr.image import mediatypes as mt
from wasmctr.image import reference as references
from wasmctr.image.model import Descriptor, Index, Manifest
from wasmctr.image.reference import Reference
from wasmctr.image.store import Store
from wasmctr.record import record
from wasmctr.signing import attach
from wasmctr.signing.attach import Attachment, Remote, Signature, Source

ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
MAX_REFERRERS = 64


@record(frozen=True)
class Found:
    """A manifest's signature attachments where they were read: its `.sig` tag's, and its referrers."""

    tagged: Attachment | None
    referrers: list[Attachment]

    @property
    def signatures(self) -> list[Signature]:
        """Each signature once, however many attachments carry it."""
        unique: list[Signature] = []
        for attachment in ([self.tagged] if self.tagged else []) + self.referrers:
            unique.extend(s for s in attachment.signatures if s not in unique)
        return unique


def push(remote: Remote, repository: str, subject: Descriptor, signature: Signature) -> Attachment:
    """Push `signature` as a referrer of `subject` and make sure it is listed: by the registry (its OCI-Subject
    answer), else in the referrers tag's index. Returns the referrer."""
    referrer = build(subject, [signature])
    attach.upload(remote, repository, referrer)
    if remote.put_manifest(repository, referrer.manifest.digest, referrer.manifest.raw, mt.OCI_MANIFEST) \
            != subject.digest:
        _list(remote, repository, subject.digest, referrer.manifest)
    return referrer


def build(subject: Descriptor, signatures: list[Signature]) -> Attachment:
    """The referrer holding `signatures` for `subject`, in cosign's OCI 1.1 form."""
    body = attach.build(signatures)
    config = body.manifest.config
    manifest = Manifest.build(Descriptor(ARTIFACT_TYPE, config.digest, config.size), body.manifest.layers, {},
                              Descriptor(subject.media_type, subject.digest, subject.size), ARTIFACT_TYPE)
    return Attachment(manifest, body.blobs)


def _list(remote: Remote, repository: str, digest: str, referrer: Manifest) -> None:
    """Add `referrer` to the referrers tag's index of `digest` (begun empty where there is none)."""
    tag = references.referrers_tag(digest)
    try:
        listed = _index(*remote.get_manifest_raw(repository, tag)).manifests
    except ImageNotFound:
        listed = []
    except StoreError as exc:  # the spec: report it, and write nothing over what another tool keeps there
        raise SigningError(f"{repository}:{tag} is not a referrers index ({exc}); the referrer is pushed but "
                           "not listed") from None
    if all(d.digest != referrer.digest for d in listed):
        remote.put_manifest(repository, tag, Index.build([*listed, _entry(referrer)], {}).raw, mt.OCI_INDEX)


def _entry(referrer: Manifest) -> Descriptor:
    """A referrer's descriptor as a referrers list has it: its artifactType and its annotations."""
    return referrer.descriptor(artifact_type=referrer.artifact_type or referrer.config.media_type,
                               annotations=dict(referrer.annotations))


def read(source: Source, repository: str, digest: str) -> Found:
    """The signature attachments `source` has for manifest `digest`: the `.sig` tag's and the referrers'."""
    return Found(attach.fetch(source, repository, digest), fetch(source, repository, digest))


def fetch(source: Source, repository: str, digest: str) -> list[Attachment]:
    """The signature referrers of manifest `digest`, from the referrers API, else the referrers tag."""
    listing = source.get_referrers(repository, digest)
    try:
        index = _index(listing, mt.OCI_INDEX) if listing is not None else \
            _index(*source.get_manifest_raw(repository, references.referrers_tag(digest)))
    except (ImageNotFound, StoreError):
        return []
    wanted = [d for d in index.manifests if d.artifact_type == ARTIFACT_TYPE and d.media_type == mt.OCI_MANIFEST]
    if len(wanted) > MAX_REFERRERS:
        raise SignatureRefused(f"{repository}: {len(wanted)} signature referrers of {digest[:19]}, over the "
                               f"{MAX_REFERRERS} read")
    found = (attach.read(source, repository, d.digest) for d in wanted)
    return [a for a in found if a.manifest.subject is not None and a.manifest.subject.digest == digest]


def keep(store: Store, ref: Reference, digest: str, found: Found) -> None:
    """Store what was read for `digest`: the `.sig` entry, and the referrers under `repo:sha256-<hex>` (with
    those the store listed there already)."""
    if found.tagged is not None:
        attach.keep(store, ref, digest, found.tagged)
    if not found.referrers:
        return
    tag = Reference(ref.registry, ref.repository, references.referrers_tag(digest))
    with store.writing():
        listed = [d for t in store.tags() if t.name == tag.familiar()
                  for d in store.read_index_blob(t.descriptor).manifests]
        for referrer in found.referrers:
            attach.put(store, referrer)
            if all(d.digest != referrer.manifest.digest for d in listed):
                listed.append(_entry(referrer.manifest))
        attach.name(store, tag, store.put_bytes(Index.build(listed, {}).raw, mt.OCI_INDEX))


def _index(raw: bytes, media_type: str) -> Index:
    """A referrers list: an OCI image index, else `StoreError`."""
    index = Index.parse(raw, media_type)
    if index.media_type != mt.OCI_INDEX:
        raise StoreError(f"it is of type {index.media_type!r}, not an OCI image index")
    return index
