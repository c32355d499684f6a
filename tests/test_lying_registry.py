"""Pull from a registry that lies: silent, drip-fed, endless, wrong bytes, busy, stalling, malformed.
Each ends in one line naming the host within the documented bound (WASMCTR_REGISTRY_TIMEOUT, set to
2 s here), leaves the store as it was, or succeeds when the fault is one a client should ride out.
And push and pull with one that sends our credentials' holders elsewhere on loopback (`Tattler`)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr
from imagekit import Entry, tar_bytes
from liar import LyingRegistry, Tattler, image
from services import wait_for

BOUND = {"WASMCTR_REGISTRY_TIMEOUT": "2"}


@pytest.fixture
def liar(hello_wasm: Path, tmp_path: Path) -> Iterator[LyingRegistry]:
    layer = gzip.compress(tar_bytes([Entry("hello.wasm", data=hello_wasm.read_bytes())]), mtime=0)
    server = LyingRegistry(*image(tmp_path, layer))
    try:
        yield server
    finally:
        server.stop()


def store_files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and not p.name.endswith(".lock")
                  and p.name not in ("index.json", "oci-layout"))


@pytest.mark.parametrize("behaviour", ["silent", "drip", "silent-token"])
def test_a_server_that_never_finishes_answering_ends_in_one_line(liar: LyingRegistry, behaviour: str,
                                                                wasmctr_home: Path) -> None:
    liar.behaviour = behaviour
    proc = wasmctr("pull", f"{liar.host}/img:1", env=BOUND, check=False)
    assert_one_line_error(proc, 1, liar.host, "after 2 s")
    assert store_files(wasmctr_home) == []
    assert json.loads((wasmctr_home / "index.json").read_text())["manifests"] == []


def test_an_endless_manifest_is_cut_at_the_limit(liar: LyingRegistry, wasmctr_home: Path) -> None:
    liar.behaviour = "endless"
    assert_one_line_error(wasmctr("pull", f"{liar.host}/img:1", env=BOUND, check=False), 1, "over the 4 MiB limit")
    assert store_files(wasmctr_home) == []


def test_wrong_bytes_are_never_stored(liar: LyingRegistry, wasmctr_home: Path) -> None:
    liar.behaviour = "wrong-bytes"
    proc = wasmctr("pull", f"{liar.host}/img:1", env=BOUND, check=False)
    assert proc.returncode == 1 and "digest mismatch" in proc.stderr.splitlines()[-1], proc.stderr
    assert store_files(wasmctr_home) == []


def test_a_busy_registry_is_retried_honouring_retry_after(liar: LyingRegistry) -> None:
    liar.behaviour = "busy"
    wasmctr("pull", f"{liar.host}/img:1", env=BOUND)
    manifest_gets = [r for r in liar.requests if r[0] == "GET" and "/manifests/" in r[1]]
    assert len(manifest_gets) == 3  # 503 with Retry-After: 1, 503 with an HTTP date, then 200


def test_an_interrupted_pull_resumes_with_a_range_request(tmp_path: Path, wasmctr_home: Path) -> None:
    layer = os.urandom(4 << 20)  # pull does not unpack: any bytes will do
    server = LyingRegistry(*image(tmp_path, layer))
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    try:
        server.behaviour = "stall-blob"
        assert_one_line_error(wasmctr("pull", f"{server.host}/img:1", env=BOUND, check=False) , 1, "after 2 s")
        partial = wasmctr_home / "ingest" / f"{digest.split(':')[1]}.partial"
        assert partial.stat().st_size == 2 << 20
        assert not (wasmctr_home / "blobs" / "sha256" / digest.split(":")[1]).exists()
        server.behaviour = "honest"
        server.requests.clear()
        wasmctr("pull", f"{server.host}/img:1", env=BOUND)
        assert ("GET", f"/v2/img/blobs/{digest}", f"bytes={2 << 20}-") in server.requests
        assert hashlib.sha256((wasmctr_home / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()).hexdigest() \
            == digest.split(":")[1]
        assert list((wasmctr_home / "ingest").iterdir()) == []
    finally:
        server.stop()


@pytest.mark.parametrize("behaviour", ["silent", "stall-blob"])
def test_ctrl_c_during_a_pull_says_so_exits_130_and_the_next_pull_resumes(tmp_path: Path, wasmctr_home: Path,
                                                                          behaviour: str) -> None:
    layer = os.urandom(4 << 20)
    server = LyingRegistry(*image(tmp_path, layer))
    partial = wasmctr_home / "ingest" / f"{hashlib.sha256(layer).hexdigest()}.partial"
    try:
        server.behaviour = behaviour
        pull = subprocess.Popen([str(Path(sys.executable).parent / "wasmctr"), "pull", f"{server.host}/img:1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if behaviour == "silent":  # waiting for the manifest
            wait_for(lambda: server.requests, what="the manifest request")
        else:  # in a download thread, half the layer in
            wait_for(lambda: partial.exists() and partial.stat().st_size == 2 << 20, what="half the layer")
        pull.send_signal(signal.SIGINT)
        out, err = pull.communicate(timeout=60)
        assert (pull.returncode, err) == (130, "wasmctr: error: interrupted\n") and out == ""
        server.behaviour = "honest"
        server.requests.clear()
        wasmctr("pull", f"{server.host}/img:1", env=BOUND)
        if behaviour == "stall-blob":
            assert ("GET", f"/v2/img/blobs/sha256:{hashlib.sha256(layer).hexdigest()}", f"bytes={2 << 20}-") \
                in server.requests
    finally:
        server.stop()


def test_rmi_collects_what_an_abandoned_pull_left_in_ingest(tmp_path: Path, wasmctr_home: Path,
                                                           hello_wasm: Path) -> None:
    server = LyingRegistry(*image(tmp_path, os.urandom(4 << 20)))
    try:
        server.behaviour = "stall-blob"
        wasmctr("pull", f"{server.host}/img:1", env=BOUND, check=False)
    finally:
        server.stop()
    assert list((wasmctr_home / "ingest").iterdir())
    wasmctr("build", str(hello_wasm), "-t", "x:1")
    wasmctr("image", "prune")
    assert list((wasmctr_home / "ingest").iterdir()) == []
    assert wasmctr("run", "x:1").stdout == "hello from wat\n"


VALID = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64,
                    "size": 2},
         "layers": []}
MALFORMED = {
    "config-is-a-number": {**VALID, "config": 5},
    "config-missing": {k: v for k, v in VALID.items() if k != "config"},
    "layers-is-a-string": {**VALID, "layers": "x"},
    "layer-is-a-number": {**VALID, "layers": [5]},
    "digest-not-hex": {**VALID, "config": {**VALID["config"], "digest": "sha256:../../etc/passwd"}},  # type: ignore
    "size-is-a-string": {**VALID, "config": {**VALID["config"], "size": "2"}},  # type: ignore
    "size-negative": {**VALID, "config": {**VALID["config"], "size": -1}},  # type: ignore
    "size-is-a-bool": {**VALID, "config": {**VALID["config"], "size": True}},  # type: ignore
    "media-type-is-a-number": {**VALID, "mediaType": 5},
    "annotation-not-a-string": {**VALID, "annotations": {"a": 1}},
    "a-list": [VALID],
    "index-entries-not-a-list": {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                 "manifests": {"a": 1}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifests_are_one_line_errors(liar: LyingRegistry, case: str, wasmctr_home: Path) -> None:
    liar.behaviour = "manifest"
    liar.manifest_override = json.dumps(MALFORMED[case]).encode()
    assert_one_line_error(wasmctr("pull", f"{liar.host}/img:1", env=BOUND, check=False), 1)
    assert store_files(wasmctr_home) == []


def test_a_manifest_that_is_not_json_is_one_line(liar: LyingRegistry) -> None:
    liar.behaviour = "manifest"
    liar.manifest_override = b"\x00\xff not json"
    assert_one_line_error(wasmctr("pull", f"{liar.host}/img:1", env=BOUND, check=False), 1, "not a JSON object")


def test_a_bad_timeout_setting_is_refused_not_ignored(liar: LyingRegistry) -> None:
    for value in ("abc", "0", "-5", "inf"):
        proc = wasmctr("pull", f"{liar.host}/img:1", env={"WASMCTR_REGISTRY_TIMEOUT": value}, check=False)
        assert_one_line_error(proc, 2, "WASMCTR_REGISTRY_TIMEOUT")


def endless_layer(liar: LyingRegistry, declared: int) -> None:
    """The liar's image, its layer declared `declared` bytes long and streamed without end."""
    manifest = json.loads(liar.manifest)
    manifest["layers"][0].update(digest="sha256:" + "b" * 64, size=declared)
    liar.behaviour, liar.manifest_override = "endless-blob", json.dumps(manifest).encode()


@pytest.mark.parametrize("declared", [1 << 40, 1 << 20], ids=["over-the-cap", "at-the-cap"])
def test_an_endless_blob_stops_at_the_cap_and_leaves_nothing(liar: LyingRegistry, wasmctr_home: Path,
                                                              declared: int) -> None:
    """A registry that declared a huge blob and streamed it without end filled 8 GB of disk in 30 s. With
    the cap at 1 MiB: a blob declared over it is not even asked for; one declared at it is cut there."""
    endless_layer(liar, declared)
    proc = wasmctr("pull", f"{liar.host}/img:1", env={**BOUND, "WASMCTR_MAX_BLOB_MIB": "1"}, check=False)
    layer_gets = [r for r in liar.requests if r[0] == "GET" and r[1].endswith("b" * 64)]
    if declared > 1 << 20:
        assert_one_line_error(proc, 1, f"{declared} bytes, over the 1 MiB limit (WASMCTR_MAX_BLOB_MIB)")
        assert layer_gets == []
    else:
        assert_one_line_error(proc, 1, "larger than the 1048576 bytes its descriptor says")
        assert len(layer_gets) == 1
    assert store_files(wasmctr_home) == []
    assert json.loads((wasmctr_home / "index.json").read_text())["manifests"] == []


def test_a_blob_larger_than_the_free_space_is_not_fetched(liar: LyingRegistry, wasmctr_home: Path) -> None:
    """The cap set above it, a blob declared 1 GiB more than the store's filesystem has free is refused
    before a byte of it is asked for (the disk is never filled, here or by the test)."""
    fs = os.statvfs(wasmctr_home.parent)
    declared = fs.f_bavail * fs.f_frsize + (1 << 30)
    endless_layer(liar, declared)
    cap = {**BOUND, "WASMCTR_MAX_BLOB_MIB": str((declared >> 20) + 1)}
    proc = wasmctr("pull", f"{liar.host}/img:1", env=cap, check=False)
    assert_one_line_error(proc, 1, f"{declared} bytes", "MiB free")
    assert not [r for r in liar.requests if r[0] == "GET" and r[1].endswith("b" * 64)]
    assert store_files(wasmctr_home) == []


def test_a_bad_blob_cap_setting_is_refused_not_ignored(liar: LyingRegistry) -> None:
    for value in ("abc", "0", "-5", "1.5", "\u0661"):
        proc = wasmctr("pull", f"{liar.host}/img:1", env={"WASMCTR_MAX_BLOB_MIB": value}, check=False)
        assert_one_line_error(proc, 2, "WASMCTR_MAX_BLOB_MIB")


BASIC = base64.b64encode(b"alice:s3cret-pw").decode()


@contextlib.contextmanager
def tattler_image(hello_wasm: Path, docker_config: Path, tattler: Tattler) -> Iterator[str]:
    """An image built for `tattler`, whose credentials (BASIC) are in the Docker config; stops it after."""
    try:
        (docker_config / "config.json").write_text(json.dumps({"auths": {tattler.host: {"auth": BASIC}}}))
        ref = f"{tattler.host}/app:1"
        wasmctr("build", str(hello_wasm), "-t", ref)
        yield ref
    finally:
        tattler.stop()


@pytest.mark.parametrize("elsewhere", [False, True], ids=["realm-and-transfers-at-home", "elsewhere"])
def test_credentials_go_to_their_registry_alone(elsewhere: bool, hello_wasm: Path, docker_config: Path,
                                               tmp_path: Path) -> None:
    """Our password went to a token realm on another host over plain HTTP, and the registry's Bearer token
    to an upload Location on another host. Both now stay at home; the same flow at home still gets them."""
    tattler = Tattler(*(("127.0.0.2", "127.0.0.3") if elsewhere else ("127.0.0.1", "127.0.0.1")))
    with tattler_image(hello_wasm, docker_config, tattler) as ref:
        wasmctr("push", ref)
        wasmctr("pull", ref, env={"WASMCTR_HOME": str(tmp_path / "fresh")})
        to_realm = {auth for _, _, path, auth in tattler.seen if path.startswith("/token")}
        uploads = {auth for _, method, path, auth in tattler.seen if path.startswith("/transfer/upload/")}
        downloads = {auth for _, method, path, auth in tattler.seen if path.startswith("/transfer/blob/")}
        if elsewhere:
            assert to_realm == uploads == downloads == {""}
            assert not any(auth for address, *_, auth in tattler.seen if address != "127.0.0.1")
        else:
            assert to_realm == {f"Basic {BASIC}"}
            assert uploads == downloads == {f"Bearer {Tattler.TOKEN}"}


def test_an_upload_location_elsewhere_that_asks_for_credentials_gets_none(hello_wasm: Path,
                                                                          docker_config: Path) -> None:
    tattler = Tattler(transfer_challenges=True)
    with tattler_image(hello_wasm, docker_config, tattler) as ref:
        assert_one_line_error(wasmctr("push", ref, check=False), 1,
                              f"http://127.0.0.3:{tattler.port} asked for credentials", f"go to {tattler.host} alone")
        assert tattler.authorizations("127.0.0.3") and not any(tattler.authorizations("127.0.0.3"))
        assert not any(tattler.authorizations("127.0.0.2"))


def test_a_url_that_parses_as_ours_but_connects_elsewhere_gets_no_credentials(hello_wasm: Path,
                                                                             docker_config: Path) -> None:
    """`http://127.0.0.3:P\\@127.0.0.1:P/...`: urllib.parse said 127.0.0.1 (ours), and requests connected to
    127.0.0.3 with our Authorization. The realm and every transfer here are written that way."""
    tattler = Tattler(disguised=True)
    with tattler_image(hello_wasm, docker_config, tattler) as ref:
        wasmctr("push", ref, check=False)  # however far it gets, nothing of ours may leave 127.0.0.1
        elsewhere = [auth for address, *_, auth in tattler.seen if address != "127.0.0.1"]
        assert elsewhere and not any(elsewhere), tattler.seen
