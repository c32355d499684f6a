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
        assert re.search(r"wasmctr-shared:\{Type:io\.containerd\.wasmctr-shared\.v1", log), "and the shared one"
    finally:
        containerd.stop()


def test_runtimeclasses_name_the_configs_runtimes_and_the_pod_one_of_them() -> None:
    config = (EXAMPLE / "containerd-config.toml").read_text()
    classes = [dict(re.findall(r"^(?:  )?(name|handler):\s*(\S+)", doc, re.M))
               for doc in (EXAMPLE / "runtimeclass.yaml").read_text().split("\n---\n")]
    assert [c["handler"] for c in classes] == ["wasmctr", "wasmctr-shared"]
    for runtime_class in classes:
        assert runtime_class["name"] == runtime_class["handler"]
        assert f"runtimes.{runtime_class['handler']}]" in config
    assert "runtimeClassName: wasmctr\n" in (EXAMPLE / "pod.yaml").read_text()
