"""Push and pull against a real `docker-registry`, with skopeo and ctr as peers, auth, TLS and faults."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pty
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import assert_one_line_error, wasmctr
from services import Containerd, registry
from synth import data_module

import wasmctr as api
from wasmctr.image import mediatypes as mt
from wasmctr.image import reference
from wasmctr.image.model import Descriptor, Manifest, canonical_json
from wasmctr.image.store import Store


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.strip().splitlines()[-1]


def snapshot(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


@pytest.mark.parametrize("fmt", ["compat", "artifact"])
def test_round_trip_gives_identical_digests(plain_registry, tmp_path: Path, hello_wasm: Path, fmt: str) -> None:
    ref = f"{plain_registry.host}/rt-{fmt}:1"
    built = last_line(wasmctr("build", str(hello_wasm), "-t", ref, "--format", fmt, "--push"))
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    pulled = last_line(wasmctr("pull", ref, env=fresh))
    assert pulled == built
    shown = json.loads(wasmctr("inspect", ref, "--json", env=fresh).stdout)
    assert shown["format"] == fmt and shown["wasm"]["kind"] == "module"
    wasmctr("save", ref, "-o", str(tmp_path / "x.tar"), env=fresh)  # everything arrived


def test_a_terminal_gets_progress_bars_and_a_pipe_one_line_per_blob(plain_registry, tmp_path: Path,
                                                                    hello_wasm: Path) -> None:
    ref = f"{plain_registry.host}/bars:1"
    wasmctr("build", str(hello_wasm), "-t", ref, "--push", "-q")
    layers = api.inspect(ref)["manifest"]["layers"]
    controller, terminal = pty.openpty()
    fresh = {**os.environ, "WASMCTR_HOME": str(tmp_path / "tty"), "COLUMNS": "120"}
    pull = subprocess.Popen([str(Path(sys.executable).parent / "wasmctr"), "pull", ref], stderr=terminal,
                            stdout=subprocess.PIPE, env=fresh)
    os.close(terminal)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the pull has closed the terminal
        while chunk := os.read(controller, 65536):
            shown += chunk
    os.close(controller)
    assert pull.wait(timeout=60) == 0
    screen = shown.decode(errors="replace")
    assert f"{layers[0]['digest'][7:19]} pulled" in screen and "\x1b[" in screen  # drawn by rich, with escapes
    piped = wasmctr("pull", ref, env={"WASMCTR_HOME": str(tmp_path / "pipe")}).stderr.splitlines()
    assert f"{layers[0]['digest'][7:19]}: pulled" in "\n".join(piped) and "\x1b[" not in "".join(piped)


def test_index_round_trip_keeps_every_platform(plain_registry, tmp_path: Path, hello_wasm: Path) -> None:
    ref = f"{plain_registry.host}/multi:1"
    built = last_line(wasmctr("build", str(hello_wasm), "-t", ref, "--platform", "wasi/wasm,linux/amd64", "--push"))
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], check=True,
                         capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == built
    assert [m["platform"]["os"] for m in json.loads(raw)["manifests"]] == ["wasi", "linux"]
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    assert last_line(wasmctr("pull", ref, env=fresh)) == built
    amd = json.loads(wasmctr("inspect", ref, "--platform", "linux/amd64", "--json", env=fresh).stdout)
    assert amd["config"]["os"] == "linux"
    proc = wasmctr("pull", ref, "--platform", "linux/arm64", env=fresh, check=False)
    assert_one_line_error(proc, 1, "no manifest for platform linux/arm64", "wasi/wasm, linux/amd64")


def test_skopeo_reads_what_we_pushed(plain_registry, tmp_path: Path, hello_wasm: Path) -> None:
    ref = f"{plain_registry.host}/for-skopeo:1"
    digest = last_line(wasmctr("build", str(hello_wasm), "-t", ref, "--push"))
    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:x"], check=True,
                   capture_output=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:x"], check=True, capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest


def test_zstd_layers_recompressed_by_skopeo_are_pulled_and_run(plain_registry, tmp_path: Path,
                                                              hello_c_wasm: Path) -> None:
    ref = f"{plain_registry.host}/gz:1"
    wasmctr("build", str(hello_c_wasm), "-t", ref, "--push")
    zstd_ref = f"{plain_registry.host}/zstd:1"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "--dest-compress-format", "zstd", f"docker://{ref}", f"docker://{zstd_ref}"], check=True,
                   capture_output=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{zstd_ref}"], check=True,
                         capture_output=True).stdout
    assert [layer["mediaType"] for layer in json.loads(raw)["layers"]] == [mt.OCI_LAYER_TAR_ZSTD]
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    proc = wasmctr("run", zstd_ref, "zstd", "5", env=fresh, check=False)
    assert (proc.returncode, proc.stdout) == (5, "Hello, zstd!\nargc=3\n"), proc.stderr
    shown = json.loads(wasmctr("inspect", zstd_ref, "--json", env=fresh).stdout)
    assert shown["wasm"]["kind"] == "module"


def test_image_pushed_by_skopeo_from_a_docker_archive_is_pulled_and_inspected(
        plain_registry, tmp_path: Path, hello_wasm: Path, wasmctr_home: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "src:1")
    archive = tmp_path / "docker.tar"
    subprocess.run(["skopeo", "copy", f"oci:{wasmctr_home}:src:1", f"docker-archive:{archive}:src:1"], check=True,
                   capture_output=True)
    ref = f"{plain_registry.host}/from-docker-archive:1"
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"docker-archive:{archive}", f"docker://{ref}"],
                   check=True, capture_output=True)
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    wasmctr("pull", ref, env=fresh)
    shown = json.loads(wasmctr("inspect", ref, "--json", env=fresh).stdout)
    assert shown["mediaType"] == mt.DOCKER_MANIFEST
    assert shown["manifest"]["layers"][0]["mediaType"] == mt.DOCKER_LAYER_TAR_GZIP
    assert shown["format"] == "compat"
    assert shown["wasm"]["imports"] == ["wasi_snapshot_preview1.fd_write", "wasi_snapshot_preview1.proc_exit"]


def test_an_image_of_another_kind_is_stored_and_named(plain_registry, tmp_path: Path) -> None:
    store = Store()
    layer = store.put_bytes(b"\0" * 1024, mt.OCI_LAYER_TAR)
    config = store.put_bytes(canonical_json({"architecture": "amd64", "os": "linux",
                                             "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}), mt.OCI_CONFIG)
    manifest = Manifest.build(config, [Descriptor(mt.OCI_LAYER_TAR, layer.digest, layer.size)], {})
    ref = reference.parse(f"{plain_registry.host}/linux-thing:1")
    store.set_tag(ref, store.put_bytes(manifest.raw, mt.OCI_MANIFEST))
    wasmctr("push", str(ref.familiar()))
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    wasmctr("pull", ref.familiar(), env=fresh)
    shown = json.loads(wasmctr("inspect", ref.familiar(), "--json", env=fresh).stdout)
    assert shown["format"] == "linux/amd64 container image (not wasm)" and "wasm" not in shown


def test_ctr_pulls_and_unpacks_our_compat_image(plain_registry, tmp_path: Path, hello_wasm: Path) -> None:
    ref = f"{plain_registry.host}/for-ctr:1"
    digest = last_line(wasmctr("build", str(hello_wasm), "-t", ref, "--push"))
    containerd = Containerd(tmp_path / "ctd").start()
    try:
        pulled = containerd.ctr("image", "pull", "--plain-http", "--platform", "wasi/wasm", ref)
        assert pulled.returncode == 0, pulled.stderr
        listed = containerd.ctr("image", "ls")
        assert ref in listed.stdout and digest in listed.stdout
        check = containerd.ctr("image", "check")
        assert "complete" in check.stdout
        unpacked = containerd.ctr("snapshots", "ls")
        assert unpacked.returncode == 0 and "Committed" in unpacked.stdout
    finally:
        containerd.stop()


def test_login_with_wrong_password_fails_cleanly(secure_registry, tls, docker_config: Path) -> None:
    proc = subprocess.run([str(Path(os.sys.executable).parent / "wasmctr"), "login", secure_registry.host, "-u",
                           "alice", "--password-stdin", "--ca-cert", str(tls.ca)],
                          input="hunter2-bad", capture_output=True, text=True)
    assert_one_line_error(proc, 1, "authentication failed", "alice")
    assert "hunter2" not in proc.stderr
    assert not (docker_config / "config.json").exists()


def test_login_then_push_and_pull_over_tls(secure_registry, tls, docker_config: Path, hello_wasm: Path,
                                           tmp_path: Path) -> None:
    ref = f"{secure_registry.host}/private:1"
    wasmctr("build", str(hello_wasm), "-t", ref)
    denied = wasmctr("push", ref, "--ca-cert", str(tls.ca), check=False)
    assert_one_line_error(denied, 1, "requires authentication", "wasmctr login")
    untrusted = wasmctr("push", ref, check=False)
    assert_one_line_error(untrusted, 1, "TLS", "--ca-cert")
    proc = subprocess.run([str(Path(os.sys.executable).parent / "wasmctr"), "login", secure_registry.host, "-u",
                           "alice", "--password-stdin", "--ca-cert", str(tls.ca)],
                          input="s3cret-pw\n", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((docker_config / "config.json").read_text())
    assert base64.b64decode(config["auths"][secure_registry.host]["auth"]) == b"alice:s3cret-pw"
    digest = last_line(wasmctr("push", ref, "--ca-cert", str(tls.ca)))
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh"), "SSL_CERT_FILE": str(tls.ca)}
    assert last_line(wasmctr("pull", ref, env=fresh)) == digest
    assert "Removing login credentials" in wasmctr("logout", secure_registry.host).stdout
    assert secure_registry.host not in json.loads((docker_config / "config.json").read_text())["auths"]


def test_login_through_a_linked_config_json_leaves_a_private_file_not_a_readable_one(
        secure_registry, tls, docker_config: Path, tmp_path: Path) -> None:
    """A config.json that is a link (a dotfiles checkout, or one planted) to a world-readable file: the
    password once went into that 0644 file. Now the link is replaced by a 0600 file that keeps what the
    old one said, and its target is left as it was."""
    dotfile = tmp_path / "dotfiles" / "config.json"
    dotfile.parent.mkdir()
    dotfile.write_text(json.dumps({"auths": {"other.example": {"auth": "b3RoZXI6cHc="}}}))
    dotfile.chmod(0o644)
    before = dotfile.read_bytes()
    (docker_config / "config.json").symlink_to(dotfile)
    proc = subprocess.run([str(Path(os.sys.executable).parent / "wasmctr"), "login", secure_registry.host, "-u",
                           "alice", "--password-stdin", "--ca-cert", str(tls.ca)],
                          input="s3cret-pw\n", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config_json = docker_config / "config.json"
    assert not config_json.is_symlink() and config_json.stat().st_mode & 0o777 == 0o600
    auths = json.loads(config_json.read_text())["auths"]
    assert set(auths) == {"other.example", secure_registry.host}
    assert dotfile.read_bytes() == before


def test_credentials_from_a_config_json_and_from_a_credential_helper(
        secure_registry, tls, docker_config: Path, hello_wasm: Path, tmp_path: Path) -> None:
    ref = f"{secure_registry.host}/helper:1"
    wasmctr("build", str(hello_wasm), "-t", ref)
    token = base64.b64encode(b"alice:s3cret-pw").decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {secure_registry.host: {"auth": token}}}))
    wasmctr("push", ref, "--ca-cert", str(tls.ca))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-wasmctrtest"
    helper.write_text("#!/bin/sh\n"
                      f'[ "$1" = get ] || exit 1\nread server\n[ "$server" = "{secure_registry.host}" ] || exit 1\n'
                      'echo \'{"Username": "alice", "Secret": "s3cret-pw"}\'\n')
    helper.chmod(0o755)
    (docker_config / "config.json").write_text(json.dumps({"credHelpers": {secure_registry.host: "wasmctrtest"}}))
    env = {"WASMCTR_HOME": str(tmp_path / "fresh"), "PATH": f"{bindir}:{os.environ['PATH']}"}
    wasmctr("pull", ref, "--ca-cert", str(tls.ca), env=env)


def test_unreachable_registries_and_missing_tags_fail_in_one_line(plain_registry, wasmctr_home: Path) -> None:
    port = __import__("services").free_port()
    assert_one_line_error(wasmctr("pull", f"127.0.0.1:{port}/x:1", check=False), 1, "connection refused")
    assert_one_line_error(wasmctr("pull", "registry.invalid/x:1", check=False), 1, "unknown host")
    assert_one_line_error(wasmctr("pull", f"{plain_registry.host}/never-pushed:1", check=False), 1,
                          "not found on the registry")
    assert_one_line_error(wasmctr("push", f"{plain_registry.host}/not-local:1", check=False), 1, "no image")
    assert not (wasmctr_home / "blobs" / "sha256").exists() or not list((wasmctr_home / "blobs" / "sha256").iterdir())


def test_corrupt_blob_on_the_registry_fails_pull_and_leaves_the_store_unchanged(
        tmp_path: Path, hello_wasm: Path, component_wasm: Path) -> None:
    with registry(tmp_path / "reg") as reg:
        ref = f"{reg.host}/corrupt:1"
        wasmctr("build", str(hello_wasm), "-t", ref, "--push")
        layer = api.inspect(ref)["manifest"]["layers"][0]
        data = reg.blob_file(layer["digest"])
        content = bytearray(data.read_bytes())
        content[-1] ^= 0xFF
        data.write_bytes(bytes(content))
        home = tmp_path / "fresh"
        env = {"WASMCTR_HOME": str(home)}
        wasmctr("build", str(component_wasm), "-t", "existing:1", env=env)
        before = snapshot(home)
        assert_one_line_error(wasmctr("pull", ref, env=env, check=False), 1, "digest mismatch")
        assert snapshot(home) == before


def test_manifest_too_large_and_blob_larger_than_its_descriptor(tmp_path: Path, hello_wasm: Path) -> None:
    with registry(tmp_path / "reg") as reg:
        ref = f"{reg.host}/lies:1"
        wasmctr("build", str(hello_wasm), "-t", ref, "--push")
        manifest = api.inspect(ref)["manifest"]
        manifest["layers"][0]["size"] -= 10
        raw = canonical_json(manifest)
        put = requests.put(f"{reg.url}/v2/lies/manifests/short", data=raw,
                           headers={"Content-Type": mt.OCI_MANIFEST})
        assert put.status_code == 201, put.text
        fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
        assert_one_line_error(wasmctr("pull", f"{reg.host}/lies:short", env=fresh, check=False), 1,
                              "larger than")
        manifest["annotations"] = {"padding": "x" * (4 << 20)}
        put = requests.put(f"{reg.url}/v2/lies/manifests/huge", data=canonical_json(manifest),
                           headers={"Content-Type": mt.OCI_MANIFEST})
        if put.status_code == 201:
            assert_one_line_error(wasmctr("pull", f"{reg.host}/lies:huge", env=fresh, check=False), 1,
                                  "4 MiB")
        else:  # the registry itself refuses manifests this large; nothing to pull
            assert put.status_code in (400, 413), put.text


def test_push_interrupted_by_a_registry_crash_completes_when_run_again(tmp_path: Path) -> None:
    module = data_module(tmp_path / "big.wasm", 96 << 20, lambda: os.urandom(1 << 20))
    with registry(tmp_path / "reg") as reg:
        ref = f"{reg.host}/big:1"
        wasmctr("build", str(module), "-t", ref, "--format", "artifact")
        exe = str(Path(os.sys.executable).parent / "wasmctr")
        pusher = subprocess.Popen([exe, "push", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        uploads = reg.storage / "docker/registry/v2/repositories/big/_uploads"

        def upload_under_way() -> bool:  # the registry renames and removes upload directories as it goes
            with contextlib.suppress(FileNotFoundError):
                return any(p.name == "data" and p.stat().st_size > (1 << 20) for p in uploads.rglob("data"))
            return False

        deadline = time.monotonic() + 30
        while not upload_under_way():
            assert time.monotonic() < deadline, "the push's upload never got under way"
            time.sleep(0.02)
        reg.stop(9)
        out, err = pusher.communicate(timeout=60)
        assert pusher.returncode == 1, (out, err)
        final = err.strip().splitlines()[-1]
        assert final.startswith("wasmctr: error: ") and reg.host in final and "Traceback" not in err, err
        reg.start()
        again = wasmctr("push", ref)
        fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
        assert last_line(wasmctr("pull", ref, env=fresh)) == last_line(again)
        again2 = wasmctr("push", ref)
        assert "pushed" not in again2.stderr and "already on the registry" in again2.stderr


def test_concurrent_pulls_of_one_reference_leave_one_consistent_copy(plain_registry, tmp_path: Path,
                                                                     hello_wasm: Path) -> None:
    ref = f"{plain_registry.host}/concurrent:1"
    digest = last_line(wasmctr("build", str(hello_wasm), "-t", ref, "--push"))
    home = tmp_path / "fresh"
    env = {"WASMCTR_HOME": str(home)}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: wasmctr("pull", ref, env=env, check=False), range(8)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert {last_line(r) for r in results} == {digest}
    index = json.loads((home / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    store = Store(home)
    for blob in store.referenced(Descriptor(mt.OCI_MANIFEST, digest, 0)):
        assert "sha256:" + hashlib.sha256(store.blob_path(blob).read_bytes()).hexdigest() == blob
    assert not list((home / "ingest").iterdir())


def test_bearer_token_challenge_with_and_without_credentials(tmp_path: Path, hello_wasm: Path,
                                                            docker_config: Path) -> None:
    from services import TokenServer

    tokens = TokenServer(tmp_path / "token", users={"bob": "tok-pw"}, anonymous_pull=True)
    try:
        with registry(tmp_path / "reg", extra_auth=tokens.registry_auth()) as reg:
            ref = f"{reg.host}/bearer:1"
            wasmctr("build", str(hello_wasm), "-t", ref)
            anonymous = wasmctr("push", ref, check=False)
            assert_one_line_error(anonymous, 1, "authentication failed", "wasmctr login")
            proc = subprocess.run([str(Path(os.sys.executable).parent / "wasmctr"), "login", reg.host, "-u", "bob",
                                   "--password-stdin"], input="tok-pw", capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            digest = last_line(wasmctr("push", ref))
            assert any(r.startswith("bob repository:bearer:") and "push" in r for r in tokens.requests)
            (docker_config / "config.json").unlink()
            fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
            assert last_line(wasmctr("pull", ref, env=fresh)) == digest  # anonymous token, pull scope
            assert any(r.startswith("anonymous repository:bearer:pull") for r in tokens.requests)
    finally:
        tokens.stop()
