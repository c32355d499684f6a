"""The signature check the shim and `wasmctr-runtime` make at Create, before a wasm container's process
exists: the node's policy (containers-policy.json, found as `wasmctr run` finds it: $WASMCTR_SIGNATURE_POLICY,
~/.config/containers/policy.json, /etc/containers/policy.json) for the image the container was made from,
through `wasmctr.signing.verify.check`, fail-closed.

The caller says which image (a name, and the manifest digest it resolved to when it knows it) and where
signatures may be kept near it (`local`: containerd's content store for the shim, the wasmctr store for the
runtime). Signatures come from there when it holds the image's `.sig` attachment or referrers, else from the
`.sig` tag and the referrers (wasmctr.signing.referrers) of the image's repository on its registry (plain HTTP
on loopback only, as `wasmctr pull`; credentials from Docker's config): a node that imported the signatures
with its images verifies without the network. The registry stack is imported only when it is asked. A policy
that accepts anything everywhere costs a parse of the file and nothing else. Nothing is remembered between
Creates: each one is checked against the policy and the signatures as they are then.
"""

from __future__ import annotations

from collections.abc import Callable

from wasmctr.errors import ImageNotFound, SigningError
from wasmctr.image import digest as digests
from wasmctr.image import reference as references
from wasmctr.image.reference import Reference
from wasmctr.signing import attach, policy, referrers, registries, verify
from wasmctr.signing.attach import Signature
from wasmctr.signing.policy import Policy

# the spec annotations that name a container's image: the CRI's (containerd sets it on every container it
# creates), then the OCI image-spec's, as a bundle made from an image may carry it
IMAGE_ANNOTATIONS = ("io.kubernetes.cri.image-name", "org.opencontainers.image.ref.name")

Local = Callable[[Reference, str], "list[Signature] | None"]  # an image's signatures kept near it, None: none


def rules() -> Policy:
    """The node's policy, read at each Create: a changed file applies to the next container."""
    return policy.load()


def annotated_image(config: dict[str, object]) -> str | None:
    """The image a bundle's spec names in its annotations, if any."""
    annotations = config.get("annotations")
    if not isinstance(annotations, dict):
        return None
    for key in IMAGE_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def admit(rules: Policy, image: str | None, digest: str | None, local: Local, what: str) -> None:
    """Accept container `what` made from `image` (its manifest `digest`, else the one its registry names
    now), or raise `SignatureRefused` (one line: the image, the requirement, why). An image that is not a
    reference (an ID) or no image at all has no scope: refused unless the policy's default accepts anything."""
    if rules.accepts_anything:
        return
    parsed = _reference(image) if image else None
    if parsed is None:
        verify.unnamed(f"container {what}" + (f" (image {image})" if image else " (it names no image)"), rules)
        return
    use = registries.load().use_attachments(parsed)
    manifest = digest or parsed.digest or _registry_digest(parsed)

    def signatures() -> list[Signature]:
        if use is False:
            raise SigningError(f"registries.d turns sigstore attachments off for {parsed.name}")
        found = local(parsed, manifest)
        if found is not None:
            return found
        return referrers.read(_registry(parsed), parsed.repository, manifest).signatures

    verify.check(parsed, manifest, signatures, rules)


def _reference(image: str) -> Reference | None:
    """`image` as a reference; None for an image ID (`sha256:...`), which names no repository."""
    if image.startswith("sha256:"):
        return None
    return references.parse(image)


def _registry_digest(ref: Reference) -> str:
    try:
        raw, _ = _registry(ref).get_manifest_raw(ref.repository, ref.locator)
    except ImageNotFound:
        raise ImageNotFound(f"{ref} is not on its registry: its signatures cannot be checked") from None
    return digests.of_bytes(raw)


def _registry(ref: Reference) -> attach.Source:
    from wasmctr.registry.client import Registry

    return Registry(ref.registry)
