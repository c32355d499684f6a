"""The simple-signing payload a sigstore signature signs: which manifest digest, under which name.

    {"critical": {"identity": {"docker-reference": "reg/repo:tag"},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": {"creator": "...", "timestamp": 1700000000}}

Read as containers/image reads it (signature/internal/sigstore_payload.go): `critical` and its objects hold
exactly these fields, no key twice, `optional` is free (null, as cosign writes it, or an object). cosign
signs the repository alone as the identity; skopeo and wasmctr sign the reference with its tag, which the
policy's default `matchRepoDigestOrExact` asks for. Imports nothing of wasmctr above its errors.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from wasmctr.errors import SignatureRefused
from wasmctr.record import record

MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
TYPE = "cosign container image signature"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@record(frozen=True)
class Payload:
    """What a payload claims; trusted only once its signature has been checked."""

    identity: str  # critical.identity.docker-reference
    digest: str  # critical.image.docker-manifest-digest


def build(identity: str, digest: str, creator: str) -> bytes:
    """A payload as containers/image writes one (sorted keys, `optional` with creator and time)."""
    document = {"critical": {"identity": {"docker-reference": identity},
                             "image": {"docker-manifest-digest": digest}, "type": TYPE},
                "optional": {"creator": creator, "timestamp": int(time.time())}}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def parse(raw: bytes) -> Payload:
    """The claims of a payload, refused (`SignatureRefused`, the reason) unless it is exactly of this shape."""
    try:
        document = json.loads(raw, object_pairs_hook=_no_repeats)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureRefused(f"the payload is not JSON ({exc})") from None
    critical = _exact(document, ("critical", "optional"), "payload")["critical"]
    if document["optional"] is not None and not isinstance(document["optional"], dict):
        raise SignatureRefused("the payload's optional is neither null nor an object")
    fields = _exact(critical, ("identity", "image", "type"), "critical")
    if fields["type"] != TYPE:
        raise SignatureRefused(f"the payload's type is {fields['type']!r}, not {TYPE!r}")
    digest = _exact(fields["image"], ("docker-manifest-digest",), "critical.image")["docker-manifest-digest"]
    identity = _exact(fields["identity"], ("docker-reference",), "critical.identity")["docker-reference"]
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise SignatureRefused(f"the payload's docker-manifest-digest {str(digest)[:80]!r} is not sha256:<64 hex>")
    if not isinstance(identity, str):
        raise SignatureRefused("the payload's docker-reference is not a string")
    return Payload(identity, digest)


def _exact(value: Any, names: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(names):
        raise SignatureRefused(f"the payload's {what} must be an object of exactly {', '.join(names)}")
    return value


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key appears twice")
    return found
