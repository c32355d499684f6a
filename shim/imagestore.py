"""What containerd knows of a container's image, over its gRPC API: the name the container was made from
(containers service), the manifest a name points at (images service) and blobs (content service).

containerd 1.6 serves these on its gRPC socket only (its ttrpc socket has the events service alone), so this
module speaks gRPC through grpcio, to the `-address` containerd starts the shim with, in the shim's
namespace (the `containerd-namespace` metadata). It is imported only when the node's signature policy asks
for more than `insecureAcceptAnything`. containerd's content store is content-addressed, but what it holds
came from registries: every blob read here is bounded and checked against its digest all the same.
"""

from __future__ import annotations

import hashlib
import re

import grpc

from wasmctr.errors import DigestMismatch, ImageNotFound, WasmctrError
from wasmctr.image.model import Descriptor

from .api import containers_pb2, content_pb2, images_pb2

TIMEOUT = 10.0  # seconds a call may take: Create waits on it
MAX_MANIFEST = 4 << 20  # as a registry's manifests are bounded
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ContainerdError(WasmctrError):
    """containerd could not answer: the container cannot be checked, so it is not run."""


class Containerd:
    """A gRPC client of one containerd, in one namespace."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.metadata = (("containerd-namespace", namespace),)

    def close(self) -> None:
        self.channel.close()

    def container_image(self, container_id: str) -> str:
        """The image name the container was made from (`ctr run IMAGE`), "" when it names none (the CRI
        names it in the spec's annotations instead)."""
        response = self._call("/containerd.services.containers.v1.Containers/Get",
                              containers_pb2.GetContainerRequest(id=container_id),
                              containers_pb2.GetContainerResponse, f"container {container_id}")
        return response.container.image

    def image_target(self, name: str) -> Descriptor | None:
        """The manifest (or index) image `name` points at; None when containerd has no such image."""
        try:
            response = self._call("/containerd.services.images.v1.Images/Get", images_pb2.GetImageRequest(name=name),
                                  images_pb2.GetImageResponse, f"image {name}")
        except ImageNotFound:
            return None
        target = response.image.target
        if not _DIGEST.fullmatch(target.digest) or target.size < 0:
            raise ContainerdError(f"containerd's image {name} points at {target.digest[:80]!r}, not a sha256 digest")
        return Descriptor(target.media_type, target.digest, target.size)

    def read(self, digest: str, limit: int) -> bytes:
        """The blob `digest` from the content store: at most `limit` bytes, and of that digest."""
        if not _DIGEST.fullmatch(digest):
            raise ContainerdError(f"{digest[:80]!r} is not a sha256 digest")
        chunks, size = [], 0
        try:
            for chunk in self.channel.unary_stream(
                    "/containerd.services.content.v1.Content/Read",
                    request_serializer=content_pb2.ReadContentRequest.SerializeToString,
                    response_deserializer=content_pb2.ReadContentResponse.FromString)(
                    content_pb2.ReadContentRequest(digest=digest), timeout=TIMEOUT, metadata=self.metadata):
                size += len(chunk.data)
                if size > limit:
                    raise ContainerdError(f"blob {digest[:19]} in containerd's content store is over {limit} bytes")
                chunks.append(chunk.data)
        except grpc.RpcError as exc:
            raise _error(exc, f"blob {digest[:19]}") from None
        data = b"".join(chunks)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(f"blob {digest[:19]} in containerd's content store has another digest")
        return data

    def _call(self, method: str, request, response_type, what: str):  # type: ignore[no-untyped-def]
        try:
            return self.channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                            response_deserializer=response_type.FromString)(
                request, timeout=TIMEOUT, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _error(exc, what) from None


class ContentStore:
    """containerd's images and content as `wasmctr.signing.referrers.read` reads a registry's: a `.sig` tag, or
    the referrers tag, is the image `REGISTRY/REPOSITORY:sha256-<hex>.sig` (`:sha256-<hex>`) in containerd (what
    `ctr image pull` or `ctr image import` of a `wasmctr save` archive leaves), a manifest named by digest and
    the blobs are in the content store. containerd has no referrers API: the referrers tag is read."""

    def __init__(self, containerd: Containerd, registry: str) -> None:
        self.containerd = containerd
        self.registry = registry

    def get_referrers(self, repository: str, digest: str) -> bytes | None:
        return None

    def get_manifest_raw(self, repository: str, locator: str) -> tuple[bytes, str]:
        if locator.startswith("sha256:"):  # its media type is the one it declares (read checks the digest)
            return self.containerd.read(locator, MAX_MANIFEST), ""
        name = f"{self.registry}/{repository}:{locator}"
        target = self.containerd.image_target(name)
        if target is None:
            raise ImageNotFound(f"containerd has no image {name}")
        if target.size > MAX_MANIFEST:
            raise ContainerdError(f"containerd's {name} is a manifest of {target.size} bytes, over 4 MiB")
        return self.containerd.read(target.digest, MAX_MANIFEST), target.media_type

    def fetch_blob(self, repository: str, desc: Descriptor, limit: int) -> bytes:
        return self.containerd.read(desc.digest, limit)


def _error(exc: grpc.RpcError, what: str) -> WasmctrError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return ImageNotFound(f"containerd has no {what}")
    return ContainerdError(f"containerd did not answer for {what}: {details or code}")
