"""`wasmctr node install`, `uninstall` and `doctor`, as a node operator runs them: against the config this
machine's containerd writes (`containerd config default`), then a containerd started with the result
and a pod run through its CRI plugin; a containerd 2.x config checked against the schema containerd's
docs/cri/config.md gives; and the doctor on a good node and on nodes broken on purpose. Every config
and link is under the test's temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import REPO, assert_one_line_error, wasmctr
from cri.node import Node, node_images
from services import Containerd

BIN = Path(sys.executable).parent  # where pip put wasmctr and the shim binaries
ON_PATH = {"PATH": f"{BIN}:{os.environ['PATH']}"}  # a node where the binaries are on PATH


def default_config() -> str:
    return subprocess.run(["containerd", "config", "default"], capture_output=True, text=True, check=True).stdout


def node_settings(text: str, registry_host: str, pause: str) -> str:
    """What a node operator sets in the default config for these machines (tests/cri/node.py says why):
    the sandbox image, no oom_score_adj changes, and the plain-HTTP test registry as a mirror."""
    for old, new in (('sandbox_image = "registry.k8s.io/pause:3.6"', f'sandbox_image = "{pause}"'),
                     ("restrict_oom_score_adj = false", "restrict_oom_score_adj = true")):
        assert old in text
        text = text.replace(old, new)
    return text + (f'\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry_host}"]\n'
                   f'  endpoint = ["http://{registry_host}"]\n')


def install(config: Path, bin_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return wasmctr("node", "install", "--config", str(config), "--bin-dir", str(bin_dir), *args, check=check)


@pytest.fixture(scope="module")
def node(plain_registry, hello_c_wasm: Path,  # type: ignore[no-untyped-def]
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, dict[str, str], Containerd, Path]]:
    """A containerd whose config is the default one after `wasmctr node install`, with a CRI client."""
    work = tmp_path_factory.mktemp("node")
    host = plain_registry.host
    refs = {**node_images(work, host), "hello": f"{host}/node-hello:1"}
    wasmctr("build", str(hello_c_wasm.parent), "-t", refs["hello"], "--push", env={"WASMCTR_HOME": str(work / "s")})
    config = work / "config.toml"
    config.write_text(node_settings(default_config(), host, refs["pause"]))
    manifests = install(config, work / "bin").stdout
    assert "kind: RuntimeClass" in manifests and "handler: wasmctr-shared" in manifests
    containerd = Containerd(work / "ctd", config=config).start()
    client = Node(containerd.socket, work / "logs")
    try:
        client.pull(refs["hello"])
        yield client, refs, containerd, config
    finally:
        client.close()
        containerd.stop()


def test_an_installed_default_config_runs_wasm_pods_with_their_annotations(node) -> None:  # type: ignore[no-untyped-def]
    client, refs, _, _ = node
    for handler in ("wasmctr", "wasmctr-shared"):
        pod, config = client.run_pod(f"installed-{handler}", handler=handler)
        container = client.create(pod, config, "hello", refs["hello"], ["node"])
        client.start(container)
        assert client.wait_exited(container).exit_code == 0
        assert ("stdout", "F", "Hello, node!") in client.log(config, "hello")
        client.remove_pod(pod)
    pod, config = client.run_pod("denied", annotations={"wasmctr.io/deny-wasi": "fd_write"})
    container = client.create(pod, config, "hello", refs["hello"], ["x"])
    with pytest.raises(grpc.RpcError) as refused:
        client.start(container)  # pod_annotations lets the policy reach the shim
    assert "fd_write" in refused.value.details()
    client.remove_pod(pod)


def test_a_second_install_changes_no_byte_and_uninstall_gives_the_file_back(tmp_path: Path) -> None:
    config, bin_dir = tmp_path / "config.toml", tmp_path / "bin"
    original = default_config()
    config.write_text(original)
    dry = install(config, bin_dir, "--dry-run")
    assert config.read_text() == original and not bin_dir.exists()
    assert '+        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmctr]' in dry.stdout.splitlines()
    assert '+          pod_annotations = ["wasmctr.io/*"]' in dry.stdout.splitlines()
    first = install(config, bin_dir)
    assert "containerd must be restarted" in first.stderr
    installed = config.read_bytes()
    assert (tmp_path / "config.toml.wasmctr.bak").read_text() == original
    assert os.readlink(bin_dir / "containerd-shim-wasmctr-v1") == str(BIN / "containerd-shim-wasmctr-v1")
    second = install(config, bin_dir)
    assert config.read_bytes() == installed and "nothing to change" in second.stderr
    runtimes = tomllib.loads(installed.decode())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert set(runtimes) == {"runc", "wasmctr", "wasmctr-shared"}
    assert runtimes["wasmctr"]["runtime_path"] == str(bin_dir / "containerd-shim-wasmctr-v1")
    assert tomllib.loads(installed.decode())["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == \
        tomllib.loads(original)["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"]
    restart = install(config, bin_dir, "--restart", check=False)  # nothing changed: nothing to restart
    assert restart.returncode == 0
    wasmctr("node", "uninstall", "--config", str(config), "--bin-dir", str(bin_dir))
    assert config.read_text() == original
    assert list(bin_dir.iterdir()) == []


def test_restart_says_in_one_line_that_systemd_does_not_run_containerd_here(tmp_path: Path) -> None:
    """After what install did (the config is written all the same)."""
    config = tmp_path / "config.toml"
    config.write_text(default_config())
    proc = install(config, tmp_path / "bin", "--restart", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == ("wasmctr: error: containerd is not run by systemd here (no active "
                                            "containerd.service): restart it yourself for it to read its new config")
    assert "wasmctr" in tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"][
        "runtimes"]


# containerd 2.x's CRI runtime schema, from docs/cri/config.md of the containerd repository (config version 3):
# the runtimes of plugin io.containerd.cri.v1.runtime under containerd.runtimes, each a table of these keys
V3_RUNTIMES = ["plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"]
V3_RUNTIME_KEYS = {"runtime_type": str, "runtime_path": str, "pod_annotations": list, "container_annotations": list,
                   "privileged_without_host_devices": bool, "base_runtime_spec": str, "cni_conf_dir": str,
                   "cni_max_conf_num": int, "snapshotter": str, "sandboxer": str, "io_type": str, "options": dict}

A_V3_CONFIG = """version = 3

[plugins]
  # images, as 2.x names their plugin
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'

    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = true

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
"""


def test_a_containerd_2_config_gets_the_runtimes_in_its_documented_schema(tmp_path: Path) -> None:
    config, bin_dir = tmp_path / "config.toml", tmp_path / "bin"
    config.write_text(A_V3_CONFIG)
    refused = install(config, bin_dir, check=False)  # this machine's containerd (1.6) cannot read version 3
    assert_one_line_error(refused, 2, "config version 3", "--containerd-version")
    install(config, bin_dir, "--containerd-version", "2.0")
    written = tomllib.loads(config.read_text())
    before = tomllib.loads(A_V3_CONFIG)
    table = written
    for key in V3_RUNTIMES:
        table = table[key]
    assert set(table) == {"runc", "wasmctr", "wasmctr-shared"} and table["runc"] == before[V3_RUNTIMES[0]][
        V3_RUNTIMES[1]]["containerd"]["runtimes"]["runc"]
    for name, runtime_type in (("wasmctr", "io.containerd.wasmctr.v1"),
                               ("wasmctr-shared", "io.containerd.wasmctr-shared.v1")):
        entry = table[name]
        assert entry["runtime_type"] == runtime_type
        assert entry["pod_annotations"] == entry["container_annotations"] == ["wasmctr.io/*"]
        assert all(isinstance(value, V3_RUNTIME_KEYS[key]) for key, value in entry.items()), entry
    assert "containerd" not in written["plugins"]["io.containerd.grpc.v1.cri"]  # 1.x's place, not used
    del written["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["wasmctr"]
    del written["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["wasmctr-shared"]
    assert written == before
    assert "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmctr]" in config.read_text()

    empty = tmp_path / "new.toml"
    install(empty, bin_dir, "--containerd-version", "2.1")
    assert tomllib.loads(empty.read_text())["version"] == 3


def doctor(config: Path, containerd: Containerd, *args: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return wasmctr("node", "doctor", "--config", str(config), "--address", str(containerd.socket), *args,
                   check=False, env={**ON_PATH, "WASMCTR_SHIM_SOCKET_DIR": str(containerd.shims), **(env or {})})


def line_of(verdict: str, check: str, text: str) -> str:
    """A line of the doctor's text output: verdict, check, what it found (and the fix)."""
    return f"{verdict:<4}  {check:<19} {text}"


def failed(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The doctor's failed checks: name -> their line."""
    checks = json.loads(proc.stdout)["checks"]
    return {c["name"]: f"{c['detail']}; fix: {c['fix']}" for c in checks if c["verdict"] == "FAIL"}


def test_the_doctor_passes_a_good_node_and_runs_a_container_through_it(node) -> None:  # type: ignore[no-untyped-def]
    _, _, containerd, config = node
    proc = doctor(config, containerd)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    names = ["cgroups", "seccomp", "landlock", "pidfd", "openat2", "containerd", "config", "shim wasmctr",
             "shim wasmctr-shared", "smoke container", "shim template", "compile cache"]
    assert [line[6:25].strip() for line in lines] == names
    assert any(line.startswith(line_of("ok", "smoke container", "a wasm container ran")) for line in lines)
    assert any(line.startswith(line_of("ok", "shim template", "1 running")) for line in lines)  # the smoke's
    assert "wasmctr-doctor" not in containerd.ctr("namespaces", "ls", "-q").stdout  # removed after
    as_json = json.loads(doctor(config, containerd, "--format", "json").stdout)
    assert as_json["ok"] is True and len(as_json["checks"]) == len(names)


def test_the_doctor_names_the_fix_for_a_config_without_our_runtime(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, containerd, _ = node
    config = tmp_path / "config.toml"
    config.write_text(default_config())
    proc = doctor(config, containerd, "--format", "json")
    assert proc.returncode == 1
    assert failed(proc) == {"config": f"{config} has no runtime wasmctr (io.containerd.wasmctr.v1); fix: "
                                      f"wasmctr node install --config {config}, then restart containerd"}


def test_the_doctor_names_the_fix_for_a_missing_shim_binary(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, containerd, _ = node
    config = tmp_path / "config.toml"
    config.write_text(default_config())
    install(config, tmp_path / "bin")
    (tmp_path / "bin" / "containerd-shim-wasmctr-v1").unlink()
    proc = doctor(config, containerd, "--format", "json")
    assert proc.returncode == 1
    found = failed(proc)
    assert set(found) == {"shim wasmctr", "smoke container"}  # the smoke container uses the runtime's path
    assert found["shim wasmctr"].endswith("containerd-shim-wasmctr-v1 is missing or not executable; fix: wasmctr "
                                          "node install (links the shims into /usr/local/bin)")


def test_the_doctor_names_the_fix_where_seccomp_is_unavailable(node) -> None:  # type: ignore[no-untyped-def]
    _, _, containerd, config = node
    proc = doctor(config, containerd, env={"WASMCTR_DOCTOR_ASSUME_MISSING": "seccomp"})
    assert proc.returncode == 1
    failing = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert failing == [line_of("FAIL", "seccomp", "unavailable (WASMCTR_DOCTOR_ASSUME_MISSING); fix: a kernel with "
                               "CONFIG_SECCOMP_FILTER, and libseccomp2 (apt-get install libseccomp2)")]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("version = 2\n[plugins\n")
    assert_one_line_error(install(config, tmp_path / "bin", check=False), 2, "not valid TOML")
    config.write_text('[plugins."io.containerd.grpc.v1.cri"]\n')
    assert_one_line_error(install(config, tmp_path / "bin", check=False), 2, "no `version`")
    inline = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  runtimes = { runc = { a = 1 } }\n'
    config.write_text(inline)
    assert_one_line_error(install(config, tmp_path / "bin", check=False), 2, "edit it by hand")
    assert config.read_text() == inline
    assert_one_line_error(wasmctr("node", "doctor", "--format", "xml", check=False), 2, "--format")


def test_a_node_configured_by_hand_from_the_example_is_taken_over(tmp_path: Path) -> None:
    """The runtimes examples/kubernetes had operators write by hand: install adds the shims' path in place
    (their comments stay), uninstall takes the tables out."""
    config, bin_dir = tmp_path / "config.toml", tmp_path / "bin"
    by_hand = "version = 2\n" + (REPO / "examples" / "kubernetes" / "containerd-config.toml").read_text()
    config.write_text(by_hand)
    install(config, bin_dir)
    text = config.read_text()
    assert text.count("wasmctr.v1") == 1 and "# >>> wasmctr" not in text  # no second table: the hand-written one
    assert "# The same shim with one shim process for all of the node's pods" in text
    runtimes = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["wasmctr-shared"]["runtime_path"] == str(bin_dir / "containerd-shim-wasmctr-shared-v1")
    wasmctr("node", "uninstall", "--config", str(config), "--bin-dir", str(bin_dir))
    assert set(tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]) \
        == {"runc"}
