"""Whether the signature policy accepts an image: the one check `pull`, `run` and `verify` make, and the shim
and `wasmctr-runtime` at Create (wasmctr_node.admission).

    verify.check(reference, manifest_digest, fetch, policy)

`reference` is the name the image is used under (its scope, and the identity signatures must claim),
`manifest_digest` the digest of the manifest or index that name resolves to (the image is that digest's:
every other blob is reached through it by digest), `fetch()` returns the image's signatures (from a registry,
the store, containerd's content store) and is called only when a requirement needs them. It returns the
requirements that accepted the image, or raises `SignatureRefused`, one line naming the image, the
requirement and why; a `fetch` that fails refuses too (an unreachable signature store is no signature).
Evaluation is containers/image's (policy_eval_sigstore.go): every requirement must accept; a `sigstoreSigned`
one accepts when one signature is of its key (any of its keys), over a payload that claims this digest and an
identity its `signedIdentity` matches.
"""

from __future__ import annotations

from collections.abc import Callable

from wasmctr.errors import SignatureRefused, WasmctrError
from wasmctr.image.reference import Reference
from wasmctr.signing import keys as keyring
from wasmctr.signing import payload as payloads
from wasmctr.signing.attach import Signature
from wasmctr.signing.policy import Policy, Requirement

Fetch = Callable[[], list[Signature]]


def check(reference: Reference, manifest_digest: str, fetch: Fetch, policy: Policy) -> tuple[Requirement, ...]:
    """The requirements of `reference`'s scope, once each has accepted the image; else `SignatureRefused`."""
    requirements = policy.requirements(reference)
    signatures: list[Signature] | None = None
    for requirement in requirements:
        why = None
        if requirement.unsupported:
            why = requirement.unsupported
        elif requirement.type == "reject":
            why = "the policy rejects every image of this scope"
        elif requirement.needs_signatures:
            if signatures is None:
                try:
                    signatures = fetch()
                except WasmctrError as exc:
                    why = f"its signatures cannot be read: {exc}"
            if signatures is not None:
                why = refusal(requirement, reference, manifest_digest, signatures)
        if why is not None:
            raise SignatureRefused(f"{reference.familiar()} ({manifest_digest[:19]}) is refused by the signature "
                                   f"policy {policy.source}: {requirement}: {why}")
    return requirements


def unnamed(what: str, policy: Policy) -> None:
    """An image that is run under no name (an image ID, a bundle naming none) has no scope and no identity to
    check: accepted only where the policy's default asks for nothing, else `SignatureRefused` saying so."""
    if any(r.type != "insecureAcceptAnything" for r in policy.default):
        raise SignatureRefused(f"{what} has no name to check signatures against, and the signature policy "
                               f"{policy.source} requires more than nothing by default")


def refusal(requirement: Requirement, reference: Reference, manifest_digest: str,
            signatures: list[Signature]) -> str | None:
    """Why no signature satisfies a sigstoreSigned requirement, or None when one does."""
    public = [keyring.load_public(pem, where) for where, pem in requirement.keys]
    reasons = []
    others = 0
    for signature in signatures:
        if signature.media_type != payloads.MEDIA_TYPE:
            others += 1
            continue
        value = signature.value
        if value is None:
            reasons.append("a signature has no dev.cosignproject.cosign/signature annotation")
        elif not any(keyring.verifies(key, signature.payload, value) for key in public):
            reasons.append("a signature is not of the policy's key (another key, or a changed payload)")
        else:
            try:
                claim = payloads.parse(signature.payload)
            except SignatureRefused as exc:
                reasons.append(str(exc))
                continue
            if claim.digest != manifest_digest:
                reasons.append(f"a signature is for another digest ({claim.digest[:19]})")
            elif not requirement.identity.matches(reference, claim.identity):
                reasons.append(f"a signature's identity {claim.identity!r} does not match ({requirement.identity})")
            else:
                return None
    if not reasons:
        return "no signature exists" + (f" ({others} other attachments)" if others else "")
    return "; ".join(dict.fromkeys(reasons))
