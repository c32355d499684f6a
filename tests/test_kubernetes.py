"""examples/kubernetes: containerd starts with the documented CRI config and loads the wasmctr runtime."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO
from services import Containerd

EXAMPLE = REPO / "examples" / "kubernetes"


def test_containerd_loads_the_runtime_from_the_documented_config(tmp_path: Path) -> None:
    snippet = (EXAMPLE / "containerd-config.toml").read_text()
    containerd = Containerd(tmp_path / "ctd", extra_config=snippet).start()
    try:
        plugins = containerd.ctr("plugins", "ls").stdout
        assert re.search(r"io\.containerd\.grpc\.v1\s+cri\s+.*ok", plugins), plugins
        log = (tmp_path / "ctd" / "containerd.log").read_text()
        assert re.search(r"wasmctr:\{Type:io\.containerd\.wasmctr\.v1", log), "CRI lists the wasmctr runtime"
    finally:
        containerd.stop()


def test_runtimeclass_and_pod_name_the_same_handler() -> None:
    runtimeclass = (EXAMPLE / "runtimeclass.yaml").read_text()
    pod = (EXAMPLE / "pod.yaml").read_text()
    handler = re.search(r"^handler:\s*(\S+)", runtimeclass, re.M)
    name = re.search(r"^\s+name:\s*(\S+)", runtimeclass, re.M)
    assert handler and name and handler.group(1) == "wasmctr"
    assert f"runtimeClassName: {name.group(1)}" in pod
    assert "runtimes.wasmctr]" in (EXAMPLE / "containerd-config.toml").read_text()
