"""Signatures as cosign and skopeo make them, and the containers signature policy checked fail-closed before
`pull` stores or `run` starts an image: against a real docker-registry, skopeo, a lying registry, and the
signed fixtures containers/image and cosign publish (tests/signing/README.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import requests
import wasmtime
from conftest import (
    EXE,
    FUNC_WAT,
    PASSWORD,
    WITH_PASSWORD,
    assert_one_line_error,
    pair,
    run,
    signed_by,
    wasmctr,
    write_policy,
)
from liar import LyingRegistry, image

import wasmctr as api
from wasmctr.errors import SignatureRefused, SigningError
from wasmctr.image import reference
from wasmctr.signing import attach, keys, policy, verify

FIXTURES = Path(__file__).parent / "signing"


def digest_of(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.strip().splitlines()[-1]


def blobs_in(home: Path) -> set[str]:
    return {p.name for p in (home / "blobs" / "sha256").glob("*")} if home.exists() else set()


def test_key_generate_writes_a_cosign_pair_sealed_as_skopeos_libraries_read_it(tmp_path: Path) -> None:
    private, public = pair(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    lines = private.read_text().splitlines()
    assert lines[0] == "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"
    envelope = json.loads(base64.b64decode("".join(lines[1:-1])))
    assert envelope["kdf"]["name"] == "scrypt" and envelope["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert len(base64.b64decode(envelope["kdf"]["salt"])) == 32
    assert envelope["cipher"]["name"] == "nacl/secretbox" and len(base64.b64decode(envelope["cipher"]["nonce"])) == 24
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    opened = keys.load_private(private.read_bytes(), PASSWORD.encode(), "k")
    assert keys.public_pem(opened.public_key()) == public.read_bytes()
    again = wasmctr("key", "generate", "--output-key-prefix", str(tmp_path / "cosign"), env=WITH_PASSWORD, check=False)
    assert_one_line_error(again, 2, "cosign.key exists", "--output-key-prefix")
    no_password = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}
    proc = subprocess.run([EXE, "key", "generate", "--output-key-prefix", str(tmp_path / "x")], capture_output=True,
                          text=True, env=no_password, stdin=subprocess.DEVNULL)
    assert_one_line_error(proc, 2, "COSIGN_PASSWORD")


@pytest.mark.parametrize("name", ["ec-n65536.key", "sigstore-n32768.key"])
def test_keys_cosign_wrote_open_with_their_password_and_sign_what_their_public_half_verifies(name: str) -> None:
    data = (FIXTURES / "cosign" / name).read_bytes()
    private = keys.load_private(data, b"hello", name)
    signature = keys.sign(private, b"payload")
    assert keys.verifies(private.public_key(), b"payload", signature)
    assert not keys.verifies(private.public_key(), b"payload!", signature)
    with pytest.raises(SigningError, match="wrong password"):
        keys.load_private(data, b"goodbye", name)


def fixture(name: str) -> tuple[str, attach.Signature]:
    """A containers/image fixture: its manifest's digest and its signature (`dir:`'s sigstore-json format)."""
    folder = FIXTURES / "containers-image" / name
    raw = (folder / "signature-1").read_bytes() if (folder / "signature-1").exists() else b""
    digest = "sha256:" + hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    if not raw:
        return digest, attach.Signature("", b"", {})
    assert raw.startswith(b"\0sigstore-json\n")
    document = json.loads(raw[len(b"\0sigstore-json\n"):])
    return digest, attach.Signature(document["mimeType"], base64.b64decode(document["payload"]),
                                    document["annotations"])


def accepts(ref: str, digest: str, signature: attach.Signature, public: str, identity: dict | None = None) -> None:
    requirement = signed_by(FIXTURES / "containers-image" / public, identity)
    rules = policy.parse(json.dumps({"default": [requirement]}).encode(), "test policy")
    verify.check(reference.parse(ref), digest, lambda: [signature], rules)


def test_signatures_cosign_and_skopeo_wrote_are_accepted_with_their_key_and_refused_after_any_change() -> None:
    digest, by_cosign = fixture("dir-img-cosign-valid")
    cosign_ref = "192.168.64.2:5000/cosign-signed-single-sample"
    accepts(cosign_ref, digest, by_cosign, "cosign.pub", {"type": "matchRepository"})
    with pytest.raises(SignatureRefused, match="not of the policy's key"):
        accepts(cosign_ref, digest, by_cosign, "cosign2.pub", {"type": "matchRepository"})
    with pytest.raises(SignatureRefused, match="does not match"):  # cosign signs the repository, not the tag
        accepts(cosign_ref, digest, by_cosign, "cosign.pub")
    changed, _ = fixture("dir-img-cosign-modified-manifest")
    with pytest.raises(SignatureRefused, match="another digest"):
        accepts(cosign_ref, changed, by_cosign, "cosign.pub", {"type": "matchRepository"})
    tampered = attach.Signature(by_cosign.media_type, by_cosign.payload.replace(b"single", b"singlE"),
                                by_cosign.annotations)
    with pytest.raises(SignatureRefused, match="changed payload"):
        accepts(cosign_ref, digest, tampered, "cosign.pub", {"type": "matchRepository"})

    digest, by_skopeo = fixture("dir-img-cosign-valid-with-tag")
    accepts("192.168.64.2:5000/skopeo-signed:tag", digest, by_skopeo, "cosign.pub")
    with pytest.raises(SignatureRefused, match="does not match"):
        accepts("192.168.64.2:5000/skopeo-signed:othertag", digest, by_skopeo, "cosign.pub")
    accepts(f"192.168.64.2:5000/skopeo-signed@{digest}", digest, by_skopeo, "cosign.pub")  # by digest: the repository
    accepts("mirror.example/skopeo-signed:tag", digest, by_skopeo, "cosign.pub",
            {"type": "remapIdentity", "prefix": "mirror.example", "signedPrefix": "192.168.64.2:5000"})


def test_the_most_specific_scope_decides_as_in_containers_policy_json() -> None:
    rules = policy.parse(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        "reg.example.com": [{"type": "reject"}], "reg.example.com/team/app": [{"type": "insecureAcceptAnything"}],
        "*.example.com": [{"type": "insecureAcceptAnything"}], "": [{"type": "reject"}]}}}).encode(), "p")
    first = lambda ref: rules.requirements(reference.parse(ref))[0].type  # noqa: E731
    assert first("reg.example.com/team/app:1") == "insecureAcceptAnything"
    assert first("reg.example.com/team/other:1") == "reject"
    assert first("other.example.com/x:1") == "insecureAcceptAnything"
    assert first("elsewhere.org/x:1") == "reject"
    assert policy.scopes(reference.parse("a.b.example.com:5000/ns/app:1")) == [
        "a.b.example.com:5000/ns/app:1", "a.b.example.com:5000/ns/app", "a.b.example.com:5000/ns",
        "a.b.example.com:5000", "*.b.example.com", "*.example.com", "*.com"]


@pytest.mark.parametrize("text,why", [
    (b"{", "does not parse"), (b'{"transports": {}}', '"default"'),
    (b'{"default": [{"type": "acceptEverything"}]}', "unknown requirement type"),
    (b'{"default": []}', "non-empty list"),
    (b'{"default": [{"type": "reject", "extra": 1}]}', "unknown fields extra"),
    (b'{"default": [{"type": "sigstoreSigned", "keyData": "eA==", "keyPath": "/k"}]}', "exactly one of"),
    (b'{"default": [{"type": "reject"}], "default": [{"type": "reject"}]}', "appears twice"),
])
def test_a_policy_that_does_not_parse_is_refused_whole(text: bytes, why: str) -> None:
    with pytest.raises(SigningError, match=why):
        policy.parse(text, "p.json")


def test_a_signed_image_is_pulled_and_run_under_a_policy_that_asks_for_its_key(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path], wasmctr_home: Path) -> None:
    ref = f"{plain_registry.host}/signed:1"
    built = wasmctr("build", str(hello_wasm), "-t", ref, "--push", "--sign", str(key[0]), env=WITH_PASSWORD)
    assert f"signed {ref}" in built.stderr
    assert digest_of(wasmctr("verify", "--key", str(key[1]), ref)) == digest_of(built)
    rules = write_policy(tmp_path / "policy.json", plain_registry.host, signed_by(key[1]))
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh"), "WASMCTR_SIGNATURE_POLICY": str(rules)}
    assert digest_of(wasmctr("pull", ref, env=fresh)) == digest_of(built)
    assert [line.split()[0] for line in wasmctr("images", env=fresh).stdout.splitlines()[1:]] == [
        f"{plain_registry.host}/signed"]  # the signature is kept, not listed
    proc = run(ref, env=fresh)
    assert (proc.returncode, proc.stdout) == (0, "hello from wat\n"), proc.stderr
    # the store signing made the signature in keeps a copy: the builder's node runs it too
    assert run("--signature-policy", str(rules), ref).returncode == 0


def test_an_unsigned_image_is_refused_by_pull_before_anything_is_stored_and_by_run_with_125(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    ref = f"{plain_registry.host}/unsigned:1"
    wasmctr("build", str(hello_wasm), "-t", ref, "--push")
    rules = write_policy(tmp_path / "policy.json", plain_registry.host, signed_by(key[1]))
    home = tmp_path / "fresh"
    fresh = {"WASMCTR_HOME": str(home)}
    proc = wasmctr("pull", ref, "--signature-policy", str(rules), env=fresh, check=False)
    assert_one_line_error(proc, 1, f"{ref} (sha256:", f"refused by the signature policy {rules}",
                          f"sigstoreSigned (key {key[1]}; signedIdentity matchRepoDigestOrExact)",
                          "no signature exists")
    assert blobs_in(home) == set()
    proc = run("--signature-policy", str(rules), ref, env=fresh)
    assert_one_line_error(proc, 125, "no signature exists")
    with pytest.raises(SignatureRefused, match="no signature exists"):
        api.run(ref, signature_policy=rules, store=api.Store(home))
    assert blobs_in(home) == set()


def test_a_signature_by_another_key_for_another_digest_or_under_another_name_is_refused(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path], other_key: tuple[Path, Path]) -> None:
    host = plain_registry.host
    another_wasm = tmp_path / "func.wasm"
    another_wasm.write_bytes(wasmtime.wat2wasm(FUNC_WAT))
    rules = write_policy(tmp_path / "policy.json", host, signed_by(key[1]))
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh"), "WASMCTR_SIGNATURE_POLICY": str(rules)}

    wasmctr("build", str(hello_wasm), "-t", f"{host}/other-key:1", "--push", "--sign", str(other_key[0]),
            env=WITH_PASSWORD)
    assert_one_line_error(wasmctr("pull", f"{host}/other-key:1", env=fresh, check=False), 1,
                          "not of the policy's key")
    assert_one_line_error(wasmctr("verify", "--key", str(key[1]), f"{host}/other-key:1", check=False), 1,
                          "not of the policy's key")

    # image B under image A's signature manifest: a signature for another digest
    signed = digest_of(wasmctr("build", str(hello_wasm), "-t", f"{host}/swap:a", "--push", "--sign", str(key[0]),
                               env=WITH_PASSWORD))
    other = digest_of(wasmctr("build", str(another_wasm), "-t", f"{host}/swap:b", "--push"))
    base = f"http://{host}/v2/swap/manifests/"
    sig = requests.get(base + reference.signatures_tag(signed),
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    requests.put(base + reference.signatures_tag(other), data=sig.content,
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).raise_for_status()
    assert_one_line_error(wasmctr("pull", f"{host}/swap:b", env=fresh, check=False), 1, "for another digest")

    # the same image under another tag: its signature names swap:a
    wasmctr("tag", f"{host}/swap:a", f"{host}/swap:c")
    wasmctr("push", f"{host}/swap:c")
    assert_one_line_error(wasmctr("pull", f"{host}/swap:c", env=fresh, check=False), 1,
                          f"identity '{host}/swap:a' does not match (matchRepoDigestOrExact)")
    by_repository = write_policy(tmp_path / "repo.json", host, signed_by(key[1], {"type": "matchRepository"}))
    wasmctr("pull", f"{host}/swap:c", "--signature-policy", str(by_repository), env=fresh)


def test_a_signature_blob_that_is_not_of_its_digest_refuses_the_image_and_stores_nothing(
        tmp_path: Path, key: tuple[Path, Path]) -> None:
    liar = LyingRegistry(*image(tmp_path, b"layer"))
    try:
        rules = write_policy(tmp_path / "policy.json", liar.host, signed_by(key[1]))
        for behaviour, why in (("wrong-bytes", "has another digest"), ("signatures-down", "502")):
            liar.behaviour = behaviour
            home = tmp_path / behaviour
            proc = wasmctr("pull", f"{liar.host}/app:1", "--signature-policy", str(rules),
                           env={"WASMCTR_HOME": str(home)}, check=False)
            assert_one_line_error(proc, 1, "its signatures cannot be read", why)
            assert blobs_in(home) == set()
    finally:
        liar.stop()


def test_registries_d_can_turn_attachments_off_and_then_no_signature_is_found(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    ref = f"{plain_registry.host}/off:1"
    wasmctr("build", str(hello_wasm), "-t", ref, "--push", "--sign", str(key[0]), env=WITH_PASSWORD)
    rules = write_policy(tmp_path / "policy.json", plain_registry.host, signed_by(key[1]))
    registries_d = tmp_path / "registries.d"
    registries_d.mkdir()
    (registries_d / "off.yaml").write_text(f"docker:\n  {plain_registry.host}/off:\n"
                                           "    use-sigstore-attachments: false\n")
    proc = wasmctr("pull", ref, "--signature-policy", str(rules), "--registries.d", str(registries_d),
                   env={"WASMCTR_HOME": str(tmp_path / "fresh")}, check=False)
    assert_one_line_error(proc, 1, "registries.d turns sigstore attachments off")
    (registries_d / "broken.yaml").write_text("docker: [\n")
    proc = wasmctr("pull", ref, "--registries.d", str(registries_d), env={"WASMCTR_HOME": str(tmp_path / "f2")},
                   check=False)
    assert_one_line_error(proc, 1, "broken.yaml does not parse")


def test_a_policy_that_does_not_parse_refuses_pull_and_run(tmp_path: Path, hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "local:1")
    broken = tmp_path / "policy.json"
    broken.write_text('{"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {"x": [{}]}}}')
    assert_one_line_error(run("--signature-policy", str(broken), "local:1"), 125, f"signature policy {broken} does "
                          "not parse")
    assert_one_line_error(run("local:1", env={"WASMCTR_SIGNATURE_POLICY": str(tmp_path / "absent.json")}), 125,
                          "absent.json")
    assert_one_line_error(wasmctr("pull", "127.0.0.1:1/x:1", "--signature-policy", str(broken), check=False), 1,
                          "does not parse")


def test_save_and_load_carry_the_signatures_so_an_air_gapped_store_verifies_and_a_tampered_one_refuses(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    ref = f"{plain_registry.host}/carried:1"
    wasmctr("build", str(hello_wasm), "-t", ref, "--push", "--sign", str(key[0]), env=WITH_PASSWORD)
    rules = write_policy(tmp_path / "policy.json", plain_registry.host, signed_by(key[1]))
    wasmctr("save", ref, "-o", str(tmp_path / "carried.tar"))
    gapped = tmp_path / "gapped"
    env = {"WASMCTR_HOME": str(gapped), "WASMCTR_SIGNATURE_POLICY": str(rules)}
    wasmctr("load", "-i", str(tmp_path / "carried.tar"), env=env)
    assert run(ref, env=env).returncode == 0
    store = api.Store(gapped)
    digest = store.resolve(reference.parse(ref)).digest
    listed, entry = sorted(attach.entries(store, {digest}), key=lambda t: t.name)  # the referrers', the .sig tag's
    assert (listed.name, entry.name) == (f"{ref[:-2]}:{reference.referrers_tag(digest)}",
                                         f"{ref[:-2]}:{reference.signatures_tag(digest)}")
    payload = store.read_manifest(entry.descriptor).layers[0]  # the one payload both carry
    store.blob_path(payload.digest).write_bytes(b"{}")
    assert_one_line_error(run(ref, env=env), 125, "stored signatures", "are damaged")
    wasmctr("rmi", ref, env=env)  # the signatures go with their image
    assert attach.entries(store, {entry.descriptor.digest, *(t.descriptor.digest for t in store.tags())}) == []
    assert store.tags() == []


def test_skopeo_finds_and_copies_the_signature_wasmctr_attached(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    host = plain_registry.host
    digest = digest_of(wasmctr("build", str(hello_wasm), "-t", f"{host}/origin:1", "--push", "--sign", str(key[0]),
                               env=WITH_PASSWORD))
    registries_d = tmp_path / "registries.d"
    registries_d.mkdir()
    (registries_d / "sigstore.yaml").write_text("default-docker:\n  use-sigstore-attachments: true\n")
    subprocess.run(["skopeo", "copy", "--registries.d", str(registries_d), "--src-tls-verify=false",
                    "--dest-tls-verify=false", f"docker://{host}/origin:1", f"docker://{host}/mirror:1"],
                   check=True, capture_output=True)
    tag = reference.signatures_tag(digest)
    shown = lambda repo: json.loads(subprocess.run(  # noqa: E731
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{repo}:{tag}"], check=True,
        capture_output=True).stdout)
    assert [layer["annotations"] for layer in shown("mirror")["layers"]] == [
        layer["annotations"] for layer in shown("origin")["layers"]]
    # the copy verifies under the name it was signed for
    remapped = write_policy(tmp_path / "policy.json", host, signed_by(key[1], {
        "type": "remapIdentity", "prefix": f"{host}/mirror", "signedPrefix": f"{host}/origin"}))
    assert digest_of(wasmctr("pull", f"{host}/mirror:1", "--signature-policy", str(remapped),
                             "--registries.d", str(registries_d),
                             env={"WASMCTR_HOME": str(tmp_path / "fresh")})) == digest


def test_signing_an_index_signs_it_and_each_of_its_manifests(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    ref = f"{plain_registry.host}/multi-signed:1"
    wasmctr("build", str(hello_wasm), "-t", ref, "--platform", "wasi/wasm,linux/amd64", "--push")
    signed = wasmctr("sign", "--key", str(key[0]), ref, env=WITH_PASSWORD).stdout.split()
    index = api.inspect(ref)
    assert len(signed) == 3 and signed[0] == index["digest"]
    rules = write_policy(tmp_path / "policy.json", plain_registry.host, signed_by(key[1]))
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh"), "WASMCTR_SIGNATURE_POLICY": str(rules)}
    wasmctr("pull", ref, env=fresh)
    for child in signed[1:]:
        wasmctr("pull", f"{plain_registry.host}/multi-signed@{child}", env=fresh)
