"""What containerd must be told about wasmctr, in the schema of each containerd, and how to find its version.

containerd's CRI plugin names its runtimes under a plugin whose id changed in containerd 2.0 (config
version 3): `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME` in config version 2
(containerd 1.x, still read by 2.x), `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.NAME`
in version 3 (docs/cri/config.md of the containerd repository). Each of our entries names the shim by
`runtime_type` (containerd derives the binary's name from it, `containerd-shim-wasmctr-v1`) and by
`runtime_path` (the binary itself, so that a containerd with another PATH, as k3s's, finds it), and
lists the `wasmctr.io/*` annotations, which containerd passes to a runtime only if its entry names them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from wasmctr.errors import UsageError

DEFAULT_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_BIN_DIR = Path("/usr/local/bin")  # on the PATH systemd gives containerd.service
DEFAULT_ADDRESS = Path("/run/containerd/containerd.sock")
ANNOTATIONS = ["wasmctr.io/*"]
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}  # by config version
RUNC: dict[str, object] = {"runtime_type": "io.containerd.runc.v2"}  # containerd's built-in default runtime


@dataclass(frozen=True)
class Runtime:
    name: str  # the CRI handler, and the RuntimeClass's name
    runtime_type: str
    binary: str
    about: str  # the RuntimeClass manifest's comment


RUNTIMES = (
    Runtime("wasmctr", "io.containerd.wasmctr.v1", "containerd-shim-wasmctr-v1",
            "wasm pods, one shim process per pod"),
    Runtime("wasmctr-shared", "io.containerd.wasmctr-shared.v1", "containerd-shim-wasmctr-shared-v1",
            "wasm pods, one shim process for all of the node's pods (less memory per pod; its death ends them all)"),
)


def entry(runtime: Runtime, bin_dir: Path) -> dict[str, object]:
    """The runtime's table in containerd's CRI config, with the shim at `bin_dir`."""
    return {"runtime_type": runtime.runtime_type, "runtime_path": str(bin_dir / runtime.binary),
            "pod_annotations": ANNOTATIONS, "container_annotations": ANNOTATIONS}


def runtimes_path(version: int) -> list[str]:
    """The key path of the runtimes table in a config of `version` (2 or 3)."""
    return ["plugins", CRI_PLUGIN[version], "containerd", "runtimes"]


def installed_binary(runtime: Runtime) -> Path:
    """The shim binary pip installed with this wasmctr (a script beside this interpreter's `wasmctr`)."""
    return Path(sysconfig.get_path("scripts")) / runtime.binary


def config_version_for(containerd: str) -> int:
    """The config version a containerd of version `containerd` (`1.6.20`, `2.0.1`) writes: 3 from 2.0."""
    return 3 if major(containerd) >= 2 else 2


def major(version: str) -> int:
    found = re.match(r"v?(\d+)\.(\d+)", version)
    if not found:
        raise UsageError(f"containerd version {version!r}: expected MAJOR.MINOR, e.g. 1.7 or 2.0")
    return int(found[1])


def containerd_version(binary: str = "containerd") -> str | None:
    """The version `containerd --version` prints (`1.6.20~ds1`, `v2.0.0` -> `2.0.0`); None where there
    is no containerd on PATH or it does not answer."""
    found = shutil.which(binary)
    if found is None:
        return None
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.split()  # "containerd github.com/containerd/containerd[/v2] VERSION REVISION"
    return words[2].removeprefix("v") if len(words) >= 3 and re.match(r"v?\d+\.\d+", words[2]) else None


def runtime_class_manifests() -> str:
    """The RuntimeClass objects that let pods ask for our runtimes (`runtimeClassName: wasmctr`)."""
    return "---\n".join(f"# {r.about}\napiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n"
                        f"  name: {r.name}\nhandler: {r.name}\n" for r in RUNTIMES)
