"""Keys in cosign's format, and the ECDSA signatures made and checked with them.

`cosign.key` is one PEM block, `ENCRYPTED SIGSTORE PRIVATE KEY` (cosign's older files say `ENCRYPTED COSIGN
PRIVATE KEY`), whose bytes are the JSON envelope of go-securesystemslib's `encrypted` package: scrypt
(`kdf.params` N, r, p and `kdf.salt`) derives a 32-byte key from the password, and NaCl secretbox
(XSalsa20-Poly1305, `cipher.nonce`) seals the private key's DER (PKCS #8 as cosign writes it; SEC1 as its
older files hold). `cosign.pub` is the public key's PEM SubjectPublicKeyInfo. A signature is ECDSA over the
SHA-256 of the payload, ASN.1 DER, base64: what cosign writes and containers/image (skopeo, podman, CRI-O)
checks. Only ECDSA keys (cosign's default, P-256) are taken; an RSA or Ed25519 key is refused by name.

`cryptography` and PyNaCl are imported here only, so a run whose policy asks for no signature never loads
them. Imports nothing of wasmctr above its errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from wasmctr.errors import SigningError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey

PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
_PEM_TYPES = (PEM_TYPE, "ENCRYPTED COSIGN PRIVATE KEY")
# what cosign and skopeo write (go-securesystemslib's defaults); reading takes any N up to _MAX_N, as cosign's
# own files of N=65536 need
SCRYPT_N, SCRYPT_R, SCRYPT_P = 32768, 8, 1
_MAX_N, _MAX_R, _MAX_P = 1 << 20, 32, 16  # a key file is input too: its parameters bound the memory scrypt takes
_SALT, _NONCE = 32, 24


def generate(password: bytes) -> tuple[bytes, bytes]:
    """A new P-256 pair as (`cosign.key`, `cosign.pub`) file contents, the private half sealed under `password`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return _pem(PEM_TYPE, _seal(der, password)), public_pem(private.public_key())


def public_pem(key: EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(data: bytes, password: bytes, where: str) -> EllipticCurvePrivateKey:
    """The private key of a `cosign.key` file (`where` names it in errors)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    kind, body = _unpem(data, where)
    if kind not in _PEM_TYPES:
        raise SigningError(f"{where}: a PEM block of type {kind!r}, not a cosign private key ({PEM_TYPE})")
    der = _open(body, password, where)
    try:
        key = serialization.load_der_private_key(der, None)
    except ValueError:
        raise SigningError(f"{where}: the decrypted key is not a private key wasmctr can read") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningError(f"{where}: a {type(key).__name__.lstrip('_')}, not an ECDSA key (cosign's default)")
    return key


def load_public(data: bytes, where: str) -> EllipticCurvePublicKey:
    """An ECDSA public key from PEM (`cosign.pub`, a policy's keyPath or keyData)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise SigningError(f"{where}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SigningError(f"{where}: a {type(key).__name__.lstrip('_')}, not an ECDSA key (cosign's default)")
    return key


def sign(key: EllipticCurvePrivateKey, payload: bytes) -> str:
    """The base64 signature cosign puts in `dev.cosignproject.cosign/signature`."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def verifies(key: EllipticCurvePublicKey, payload: bytes, signature: str) -> bool:
    """Whether `signature` (base64, as annotated) is `key`'s over `payload`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key.verify(base64.b64decode(signature, validate=True), payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def fingerprint(key: EllipticCurvePublicKey) -> str:
    """A short name for a key in messages: the first 12 hex digits of its DER's SHA-256."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:12]


def _seal(secret: bytes, password: bytes) -> bytes:
    from nacl.secret import SecretBox

    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    box = SecretBox(_derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    sealed = box.encrypt(secret, nonce).ciphertext
    envelope = {"kdf": {"name": "scrypt", "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
                        "salt": _b64(salt)},
                "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)}, "ciphertext": _b64(sealed)}
    return json.dumps(envelope, separators=(",", ":")).encode()


def _open(body: bytes, password: bytes, where: str) -> bytes:
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    try:
        envelope = json.loads(body)
        kdf, cipher = envelope["kdf"], envelope["cipher"]
        params = kdf["params"]
        n, r, p = (params[k] for k in ("N", "r", "p"))
        salt, nonce, sealed = _unb64(kdf["salt"]), _unb64(cipher["nonce"]), _unb64(envelope["ciphertext"])
        names = kdf["name"], cipher["name"]
    except (ValueError, KeyError, TypeError):
        raise SigningError(f"{where}: not the encrypted JSON envelope cosign writes") from None
    if names != ("scrypt", "nacl/secretbox"):
        raise SigningError(f"{where}: sealed with {names[0]!r} and {names[1]!r}; wasmctr reads scrypt and "
                           "nacl/secretbox, as cosign writes")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)) or not (
            1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P) or len(nonce) != _NONCE:
        raise SigningError(f"{where}: scrypt parameters N={n!r} r={r!r} p={p!r} (nonce {len(nonce)} bytes) are "
                           f"out of bounds (N a power of two up to {_MAX_N}, r up to {_MAX_R}, p up to {_MAX_P})")
    try:
        return SecretBox(_derive(password, salt, n, r, p)).decrypt(sealed, nonce)
    except CryptoError:
        raise SigningError(f"{where}: wrong password (the key does not open with it)") from None


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=129 * r * (n + p) + (1 << 20))


def _pem(kind: str, body: bytes) -> bytes:
    text = base64.b64encode(body).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----", ""]).encode()


def _unpem(data: bytes, where: str) -> tuple[str, bytes]:
    lines = data.decode("ascii", errors="replace").strip().splitlines()
    if len(lines) < 2 or not lines[0].startswith("-----BEGIN ") or not lines[0].endswith("-----"):
        raise SigningError(f"{where}: not a PEM file")
    kind = lines[0][len("-----BEGIN "):-5]
    try:
        end = lines.index(f"-----END {kind}-----")
        return kind, base64.b64decode("".join(lines[1:end]), validate=True)
    except (ValueError, binascii.Error):
        raise SigningError(f"{where}: a damaged PEM block {kind!r}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError(text)
    return base64.b64decode(text, validate=True)
