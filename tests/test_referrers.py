"""Signatures as OCI 1.1 referrers, beside the `.sig` tag: `wasmctr sign` lists its referrer under the
referrers tag on a registry without the referrers API (the real docker-registry 2.8) and through the API
where a registry has it (tests/liar.py's ReferrersRegistry, a proxy that adds the API to that registry per
distribution-spec 1.1); verification finds a signature that is only a referrer, and ignores a referrer of
another image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests
import wasmtime
from conftest import FUNC_WAT, WITH_PASSWORD, assert_one_line_error, run, signed_by, wasmctr, write_policy
from liar import ReferrersRegistry

from wasmctr.image import reference

ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(proc) -> str:  # type: ignore[no-untyped-def]
    return proc.stdout.strip().splitlines()[-1]


def get(host: str, repo: str, locator: str, accept: str = f"{MANIFEST}, {INDEX}") -> requests.Response:
    return requests.get(f"http://{host}/v2/{repo}/manifests/{locator}", headers={"Accept": accept}, timeout=10)


def put(host: str, repo: str, locator: str, body: bytes, media_type: str) -> None:
    requests.put(f"http://{host}/v2/{repo}/manifests/{locator}", data=body, headers={"Content-Type": media_type},
                 timeout=10).raise_for_status()


def drop_sig_tag(host: str, repo: str, digest: str) -> None:
    """Delete the `.sig` manifest (by its digest, as the registry deletes manifests), leaving the referrers."""
    sig = get(host, repo, reference.signatures_tag(digest))
    requests.delete(f"http://{host}/v2/{repo}/manifests/{sig.headers['Docker-Content-Digest']}",
                    timeout=10).raise_for_status()
    assert get(host, repo, reference.signatures_tag(digest)).status_code == 404


def signed(host: str, repo: str, wasm: Path, key: Path) -> str:
    return digest_of(wasmctr("build", str(wasm), "-t", f"{host}/{repo}:1", "--push", "--sign", str(key),
                             env=WITH_PASSWORD))


def test_sign_lists_its_referrer_under_the_referrers_tag_and_a_second_signature_extends_it_keeping_others(
        plain_registry, hello_wasm: Path, key: tuple[Path, Path], other_key: tuple[Path, Path]) -> None:
    host = plain_registry.host
    digest = signed(host, "listed", hello_wasm, key[0])
    assert requests.get(f"http://{host}/v2/listed/referrers/{digest}", timeout=10).status_code == 404  # no API
    tag = reference.referrers_tag(digest)
    index = get(host, "listed", tag).json()
    assert index["mediaType"] == INDEX
    [entry] = index["manifests"]
    assert (entry["mediaType"], entry["artifactType"]) == (MANIFEST, ARTIFACT_TYPE)
    referrer = get(host, "listed", entry["digest"]).json()
    assert referrer["subject"]["digest"] == digest and referrer["artifactType"] == ARTIFACT_TYPE
    assert referrer["config"]["mediaType"] == ARTIFACT_TYPE  # as cosign's oci-1-1 mode writes it
    [layer] = referrer["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert set(layer["annotations"]) == {"dev.cosignproject.cosign/signature"}

    # another tool's referrer in the list (an SBOM; of a manifest the repository has, as the registry checks),
    # then a second signature: the list is read, extended and written back
    sbom = {"mediaType": MANIFEST, "digest": referrer["subject"]["digest"], "size": referrer["subject"]["size"],
            "artifactType": "application/spdx+json", "annotations": {"org.example.sbom": "yes"}}
    put(host, "listed", tag, json.dumps({**index, "manifests": [entry, sbom]}).encode(), INDEX)
    wasmctr("sign", "--key", str(other_key[0]), f"{host}/listed:1", env=WITH_PASSWORD)
    extended = get(host, "listed", tag).json()["manifests"]
    assert extended[:2] == [entry, sbom] and len(extended) == 3
    assert extended[2]["artifactType"] == ARTIFACT_TYPE and extended[2]["digest"] != entry["digest"]
    assert digest_of(wasmctr("verify", "--key", str(other_key[1]), f"{host}/listed:1")) == digest


def test_a_signature_that_is_only_a_referrer_is_found_by_verify_pull_and_run_and_travels_in_an_archive(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    host = plain_registry.host
    ref = f"{host}/only-referrer:1"
    digest = signed(host, "only-referrer", hello_wasm, key[0])
    drop_sig_tag(host, "only-referrer", digest)
    assert digest_of(wasmctr("verify", "--key", str(key[1]), ref)) == digest
    rules = write_policy(tmp_path / "policy.json", host, signed_by(key[1]))
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh"), "WASMCTR_SIGNATURE_POLICY": str(rules)}
    wasmctr("pull", ref, env=fresh)
    assert [line.split()[0] for line in wasmctr("images", env=fresh).stdout.splitlines()[1:]] == [
        f"{host}/only-referrer"]  # the referrers index is kept, not listed
    assert run(ref, env=fresh).returncode == 0
    wasmctr("save", ref, "-o", str(tmp_path / "carried.tar"), env=fresh)
    gapped = {"WASMCTR_HOME": str(tmp_path / "gapped"), "WASMCTR_SIGNATURE_POLICY": str(rules)}
    wasmctr("load", "-i", str(tmp_path / "carried.tar"), env=gapped)
    proc = run(ref, env=gapped)
    assert (proc.returncode, proc.stdout) == (0, "hello from wat\n"), proc.stderr


def test_a_referrer_of_another_image_listed_for_this_one_is_not_accepted(
        plain_registry, tmp_path: Path, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    host = plain_registry.host
    signed_digest = signed(host, "swapped", hello_wasm, key[0])
    drop_sig_tag(host, "swapped", signed_digest)
    other_wasm = tmp_path / "func.wasm"
    other_wasm.write_bytes(wasmtime.wat2wasm(FUNC_WAT))
    wasmctr("build", str(other_wasm), "-t", f"{host}/swapped:2", "--push")
    other = hashlib.sha256(get(host, "swapped", "2").content).hexdigest()
    # image 1's referrers list, listed for image 2: the referrer's own subject is image 1
    listing = get(host, "swapped", reference.referrers_tag(signed_digest), INDEX).content
    put(host, "swapped", f"sha256-{other}", listing, INDEX)
    assert_one_line_error(wasmctr("verify", "--key", str(key[1]), f"{host}/swapped:2", check=False), 1,
                          "no signature exists")
    rules = write_policy(tmp_path / "policy.json", host, signed_by(key[1]))
    proc = wasmctr("pull", f"{host}/swapped:2", "--signature-policy", str(rules),
                   env={"WASMCTR_HOME": str(tmp_path / "fresh")}, check=False)
    assert_one_line_error(proc, 1, "no signature exists")


@pytest.fixture
def with_api(plain_registry):  # type: ignore[no-untyped-def]
    proxy = ReferrersRegistry(plain_registry.host)
    try:
        yield proxy
    finally:
        proxy.stop()


def test_a_registry_with_the_referrers_api_indexes_the_referrer_and_no_referrers_tag_is_written(
        with_api, plain_registry, hello_wasm: Path, key: tuple[Path, Path]) -> None:
    digest = signed(with_api.host, "indexed", hello_wasm, key[0])
    [entry] = requests.get(f"http://{with_api.host}/v2/indexed/referrers/{digest}", timeout=10).json()["manifests"]
    assert entry["artifactType"] == ARTIFACT_TYPE
    assert get(plain_registry.host, "indexed", reference.referrers_tag(digest)).status_code == 404
    drop_sig_tag(with_api.host, "indexed", digest)
    assert digest_of(wasmctr("verify", "--key", str(key[1]), f"{with_api.host}/indexed:1")) == digest
