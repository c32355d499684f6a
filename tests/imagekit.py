"""Hand-made images for attack tests: raw tar layers with whatever entries an attacker would write, put
into an OCI layout directory without going through wasmctr's builder (which refuses most of them)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644

    def info(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type, info.linkname, info.mode, info.size = self.type, self.linkname, self.mode, len(self.data)
        if self.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 1, 3
        return info


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target)


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode)


def tar_bytes(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.info(), io.BytesIO(entry.data) if entry.type == tarfile.REGTYPE else None)
    return out.getvalue()


def descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def write_layout(directory: Path, tag: str, layers: list[bytes], config: dict[str, object] | None = None,
                 gzipped: bool = True) -> str:
    """An OCI layout with one wasi/wasm image of these layers (uncompressed tars, gzipped here unless
    `gzipped` is false: then stored as given); returns the manifest digest. `config` replaces the default
    config document."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> None:
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)

    compressed = [gzip.compress(layer, mtime=0) for layer in layers] if gzipped else layers
    doc = config if config is not None else {
        "architecture": "wasm", "os": "wasi",
        "config": {"Entrypoint": ["/hello.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]},
    }
    config_raw = json.dumps(doc).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": descriptor("application/vnd.oci.image.config.v1+json", config_raw),
                "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", c) for c in compressed]}
    manifest_raw = json.dumps(manifest).encode()
    for blob in (config_raw, manifest_raw, *compressed):
        put(blob)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entry = {**descriptor(OCI_MANIFEST, manifest_raw), "annotations": {"org.opencontainers.image.ref.name": tag}}
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return str(entry["digest"])


def tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under `root` with its mode and content (file bytes, link target): to compare before/after."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content: bytes | str = b""
        if path.is_symlink():
            content = str(path.readlink())
        elif path.is_file():
            content = path.read_bytes()
        out[str(path.relative_to(root))] = (st.st_mode, content)
    return out
