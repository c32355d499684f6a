"""A Kubernetes node without the kubelet: containerd with its CRI plugin configured as a node operator
would (examples/kubernetes/containerd-config.toml verbatim, plus the node's own settings), driven over
CRI v1 gRPC in the order a kubelet calls it. Shared by tests/test_cri.py and bench/cri.py."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc

from . import api_pb2 as cri
from . import api_pb2_grpc as rpc

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "examples" / "kubernetes" / "containerd-config.toml"
ARCH = {"x86_64": ("amd64", "x86_64"), "aarch64": ("arm64", "aarch64")}[platform.machine()]


def node_config(registry_host: str, pause_ref: str) -> str:
    """What a node operator adds to the example: the sandbox image, no oom_score_adj changes where root
    lacks CAP_SYS_RESOURCE (as in these VMs), and the plain-HTTP local registry as a mirror."""
    return (f'[plugins."io.containerd.grpc.v1.cri"]\n'
            f'  sandbox_image = "{pause_ref}"\n'
            f'  restrict_oom_score_adj = true\n'
            f'  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry_host}"]\n'
            f'    endpoint = ["http://{registry_host}"]\n'
            + EXAMPLE_CONFIG.read_text())


def native_image(directory: Path, ref: str, files: dict[str, bytes], entrypoint: list[str]) -> str:
    """A linux image of static binaries (mode 0755), pushed with skopeo: the pause and busybox images."""
    from imagekit import Entry, tar_bytes, write_layout
    from imagekit import directory as dir_entry

    entries = [dir_entry(d) for d in sorted({str(Path(n).parent) for n in files} - {"."})]
    entries += [Entry(name, data=data, mode=0o755) for name, data in files.items()]
    layer = tar_bytes(entries)
    config = {"architecture": ARCH[0], "os": "linux", "config": {"Entrypoint": entrypoint},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}
    write_layout(directory, "1", [layer], config=config)
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{directory}:1", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    return ref


def node_images(work: Path, registry_host: str) -> dict[str, str]:
    """The native images a node's pods need, built here and pushed: pause (the sandbox) and busybox."""
    refs = {"pause": f"{registry_host}/pause:1", "busybox": f"{registry_host}/busybox:1"}
    native_image(work / "pause", refs["pause"], {"pause": pause_binary(work / "pause.bin")}, ["/pause"])
    native_image(work / "busybox", refs["busybox"], {"bin/busybox": Path("/bin/busybox").read_bytes()},
                 ["/bin/busybox"])
    return refs


def pause_binary(output: Path) -> bytes:
    source = REPO / "tests" / "guests" / "pause.c"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", f"{ARCH[1]}-linux-musl", "-static", "-O2",
                    "-s", "-o", str(output), str(source)], check=True, timeout=600)
    return output.read_bytes()


class Node:
    """A CRI client bound to one containerd; `pods` remembers what it created, to clean up."""

    def __init__(self, socket: Path, logs: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = rpc.RuntimeServiceStub(self.channel)
        self.images = rpc.ImageServiceStub(self.channel)
        self.logs = logs
        self.pods: list[str] = []

    def pull(self, image: str) -> str:
        return self.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image)), timeout=120).image_ref

    def run_pod(self, name: str, handler: str = "wasmctr", annotations: dict[str, str] | None = None,
                cgroup_parent: str = "") -> tuple[str, cri.PodSandboxConfig]:
        """A host-network pod (no CNI on these machines), as the kubelet asks for one."""
        uid = str(uuid.uuid4())
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace="default"), hostname="",
            log_directory=str(self.logs / uid), annotations=annotations or {},
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.NODE))))
        (self.logs / uid).mkdir(parents=True, exist_ok=True)
        pod = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                         timeout=120).pod_sandbox_id
        self.pods.append(pod)
        return pod, config

    def create(self, pod: str, pod_config: cri.PodSandboxConfig, name: str, image: str, args: list[str],
               annotations: dict[str, str] | None = None, memory: int = 0, command: list[str] | None = None,
               env: dict[str, str] | None = None, pid: int = cri.POD) -> str:
        """A container in the pod; `pid` its pid namespace mode (the pod's, as an unset one means, or
        cri.CONTAINER for its own, the kubelet's default)."""
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=image), args=args,
            command=command or [], annotations=annotations or {}, log_path=f"{name}.log",
            envs=[cri.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
            linux=cri.LinuxContainerConfig(
                resources=cri.LinuxContainerResources(memory_limit_in_bytes=memory),
                security_context=cri.LinuxContainerSecurityContext(
                    namespace_options=cri.NamespaceOption(pid=pid))))
        return self.runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod, config=config, sandbox_config=pod_config), timeout=120).container_id

    def start(self, container: str) -> None:
        self.runtime.StartContainer(cri.StartContainerRequest(container_id=container), timeout=60)

    def status(self, container: str) -> cri.ContainerStatus:
        return self.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container), timeout=30).status

    def wait_exited(self, container: str, timeout: float = 60) -> cri.ContainerStatus:
        """The container's status once it has exited; a container that has not within `timeout` fails."""
        deadline = time.monotonic() + timeout
        while (status := self.status(container)).state != cri.CONTAINER_EXITED:
            assert time.monotonic() < deadline, f"container {container} has not exited in {timeout} s: {status.state}"
            time.sleep(0.01)  # fine-grained: bench/cri.py times pods with it
        return status

    def log(self, pod_config: cri.PodSandboxConfig, name: str) -> list[tuple[str, str, str]]:
        """The container's CRI log as (stream, tag, text) lines: `TIMESTAMP STREAM TAG TEXT`."""
        path = Path(pod_config.log_directory) / f"{name}.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(parts[1], parts[2], parts[3] if len(parts) > 3 else "")
                for parts in (line.split(" ", 3) for line in lines)]

    def remove_pod(self, pod: str) -> None:
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)
        if pod in self.pods:
            self.pods.remove(pod)

    def close(self) -> None:
        for pod in list(self.pods):
            try:
                self.remove_pod(pod)
            except grpc.RpcError:
                pass
        self.channel.close()

