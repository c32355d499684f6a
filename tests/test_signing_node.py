"""The node's signature policy, checked fail-closed where a container is made: by the shim at Create (through a
real containerd, `ctr run` and the CRI) and by `wasmctr-runtime create`, before the container process exists.
The policy reaches them as it reaches `wasmctr run`: $WASMCTR_SIGNATURE_POLICY, here in containerd's
environment (its shims inherit it) or the runtime's."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from conftest import WASMCTR_RUNTIME, WITH_PASSWORD, runtime, signed_by, wasmctr, write_policy
from cri import api_pb2 as cri
from cri.node import Node, node_config, node_images
from services import Containerd, ctr_run, wait_for_nothing_left

from wasmctr.image import reference

POLICY_ENV = "WASMCTR_SIGNATURE_POLICY"


@pytest.fixture(scope="module")
def refs(plain_registry, key: tuple[Path, Path], hello_c_wasm: Path,  # type: ignore[no-untyped-def]
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """examples/hello pushed signed with `key` (twice), and not signed (stamped another time: the CRI takes two
    names of one image ID for one image). Built in a store of their own, so the signatures the runtime finds
    are the registry's."""
    env = {"WASMCTR_HOME": str(tmp_path_factory.mktemp("node-store")), **WITH_PASSWORD}
    found = {name: f"{plain_registry.host}/node-{name}:1" for name in ("signed", "unsigned", "kept")}
    wasmctr("build", str(hello_c_wasm.parent), "-t", found["unsigned"], "--push", env={**env, "SOURCE_DATE_EPOCH": "1"})
    for name in ("signed", "kept"):
        wasmctr("build", str(hello_c_wasm.parent), "-t", found[name], "--push", "--sign", str(key[0]), env=env)
    return found


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The node's policy: each test writes what it needs before it makes containers."""
    return tmp_path_factory.mktemp("node-policy") / "policy.json"


@pytest.fixture(scope="module")
def node_containerd(policy_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    ctd = Containerd(tmp_path_factory.mktemp("signing-ctd"), env={POLICY_ENV: str(policy_file)}).start()
    try:
        yield ctd
    finally:
        ctd.stop()


def pull(ctd: Containerd, ref: str) -> None:
    ctd.ctr("image", "pull", "--plain-http", "--platform", "wasi/wasm", ref, check=True)


def test_the_shim_runs_a_signed_image_and_fails_create_of_an_unsigned_one_before_its_process_exists(
        node_containerd: Containerd, refs: dict[str, str], policy_file: Path, key: tuple[Path, Path],
        plain_registry) -> None:  # type: ignore[no-untyped-def]
    write_policy(policy_file, plain_registry.host, signed_by(key[1]))
    for name in ("signed", "unsigned"):
        pull(node_containerd, refs[name])
    with node_containerd.events() as events:
        ok = ctr_run(node_containerd, "--rm", refs["signed"], "signed-1")
        assert (ok.returncode, ok.stdout.splitlines()[0]) == (0, "Hello, world!"), ok.stderr
        refused = ctr_run(node_containerd, "--rm", refs["unsigned"], "unsigned-1")
        assert refused.returncode != 0 and refused.stdout == ""
        for fragment in ("wasmctr cannot run unsigned-1", f"{refs['unsigned']} (sha256:",
                         f"refused by the signature policy {policy_file}",
                         f"sigstoreSigned (key {key[1]}; signedIdentity matchRepoDigestOrExact)",
                         "no signature exists"):
            assert fragment in refused.stderr, (fragment, refused.stderr)
        created = [line for line in events if "/tasks/create" in line]
    # the shim publishes /tasks/create once a container process exists: the refused one never had one
    assert any("signed-1" in line for line in created) and not any("unsigned-1" in line for line in created)
    node_containerd.ctr("containers", "rm", "unsigned-1")
    wait_for_nothing_left(node_containerd)


def test_the_shim_reads_signatures_from_containerds_content_store_and_refuses_an_unreachable_registry(
        node_containerd: Containerd, refs: dict[str, str], policy_file: Path, key: tuple[Path, Path],
        other_key: tuple[Path, Path], plain_registry) -> None:  # type: ignore[no-untyped-def]
    """An air-gapped node: the image's `.sig` and referrers tag pulled into containerd with it, then gone from
    the registry; the referrers tag's alone is enough."""
    host = plain_registry.host
    write_policy(policy_file, host, signed_by(key[1]))
    pull(node_containerd, refs["kept"])
    target = node_containerd.ctr("image", "ls").stdout
    digest = next(line.split()[2] for line in target.splitlines() if line.startswith(refs["kept"] + " "))
    for tag in (reference.signatures_tag(digest), reference.referrers_tag(digest)):
        node_containerd.ctr("content", "fetch", "--plain-http", f"{host}/node-kept:{tag}", check=True)
        manifest = requests.head(f"http://{host}/v2/node-kept/manifests/{tag}", timeout=10, headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"})
        requests.delete(f"http://{host}/v2/node-kept/manifests/{manifest.headers['Docker-Content-Digest']}",
                        timeout=10).raise_for_status()
    assert wasmctr("verify", "--key", str(key[1]), refs["kept"], check=False).returncode == 1  # not on the registry
    ok = ctr_run(node_containerd, "--rm", refs["kept"], "kept-1")
    assert ok.returncode == 0, ok.stderr
    node_containerd.ctr("image", "rm", f"{host}/node-kept:{reference.signatures_tag(digest)}", check=True)
    ok = ctr_run(node_containerd, "--rm", refs["kept"], "kept-referrer")
    assert ok.returncode == 0, ok.stderr
    write_policy(policy_file, host, signed_by(other_key[1]))  # read at each Create: nothing was cached as verified
    refused = ctr_run(node_containerd, "--rm", refs["kept"], "kept-2")
    assert "is not of the policy's key" in refused.stderr and refused.returncode != 0, refused.stderr
    node_containerd.ctr("containers", "rm", "kept-2")

    # the same image under a registry that does not answer: no signature can be read, so it does not run
    unreachable = "127.0.0.1:1/node-signed:1"
    policy_file.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        host: [signed_by(key[1])], "127.0.0.1:1": [signed_by(key[1])]}}}))
    pull(node_containerd, refs["signed"])
    node_containerd.ctr("image", "tag", refs["signed"], unreachable, check=True)
    refused = ctr_run(node_containerd, "--rm", unreachable, "unreachable-1")
    assert "its signatures cannot be read" in refused.stderr and refused.returncode != 0, refused.stderr
    node_containerd.ctr("containers", "rm", "unreachable-1")
    wait_for_nothing_left(node_containerd)


def test_a_pod_whose_wasm_image_is_unsigned_fails_with_the_reason_and_its_native_sandbox_is_left_alone(
        plain_registry, refs: dict[str, str], key: tuple[Path, Path],  # type: ignore[no-untyped-def]
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Through the CRI: the pause sandbox comes from the same registry, unsigned, and runs (runc's, not ours
    to check); the signed wasm container runs, the unsigned one fails StartContainer naming why."""
    work = tmp_path_factory.mktemp("signing-cri")
    host = plain_registry.host
    policy = write_policy(work / "policy.json", host, signed_by(key[1]))
    pause = node_images(work, host)["pause"]
    containerd = Containerd(work / "ctd", extra_config=node_config(host, pause), env={POLICY_ENV: str(policy)}).start()
    client = Node(containerd.socket, work / "logs")
    try:
        for name in ("signed", "unsigned"):
            client.pull(refs[name])
        pod, config = client.run_pod("signing")
        signed = client.create(pod, config, "signed", refs["signed"], [])
        client.start(signed)
        assert client.wait_exited(signed).exit_code == 0
        assert client.log(config, "signed")[0][2] == "Hello, world!"
        unsigned = client.create(pod, config, "unsigned", refs["unsigned"], [])
        with pytest.raises(grpc.RpcError) as refused:
            client.start(unsigned)
        assert refs["unsigned"] in refused.value.details() and "no signature exists" in refused.value.details()
        assert client.status(unsigned).state != cri.CONTAINER_RUNNING
        assert client.log(config, "unsigned") == []
    finally:
        client.close()
        containerd.stop()


def test_wasmctr_runtime_checks_the_image_its_bundle_names_and_refuses_a_bundle_naming_none(
        bundle: Path, tmp_path: Path, refs: dict[str, str], key: tuple[Path, Path],  # type: ignore[no-untyped-def]
        plain_registry) -> None:
    policy = write_policy(tmp_path / "policy.json", plain_registry.host, signed_by(key[1]))
    env = {POLICY_ENV: str(policy)}
    root = tmp_path / "root"
    config = json.loads((bundle / "config.json").read_text())

    def write_config(annotations: dict[str, str]) -> None:
        (bundle / "config.json").write_text(json.dumps({**config, "annotations": {**config["annotations"],
                                                                                  **annotations}}))

    write_config({"org.opencontainers.image.ref.name": refs["signed"]})
    created = subprocess.Popen([WASMCTR_RUNTIME, "--root", str(root), "create", "--bundle", str(bundle), "signed"],
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # the container process keeps them
    assert created.wait(30) == 0
    assert runtime(root, "delete", "--force", "signed").returncode == 0
    for name, named, why in [
            ("unsigned", {"io.kubernetes.cri.image-name": refs["unsigned"]}, "no signature exists"),
            ("nameless", {}, "container nameless (it names no image) has no name to check signatures against")]:
        write_config(named)
        proc = runtime(root, "create", "--bundle", str(bundle), name, env=env)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("wasmctr-runtime: ") and why in proc.stderr, proc.stderr
        assert not (root / name).exists()  # no state, no container process
