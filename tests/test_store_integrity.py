"""What keeps the local store whole: a blob is stored only under its own digest, and concurrent
builds, rmi, pulls, tags, loads, prunes and resumable writers of one blob lose nothing, leave nothing
in ingest/ and no blob unreferenced."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import wasmctr

import wasmctr as api
from wasmctr.errors import DigestMismatch
from wasmctr.image.store import Store


def test_blob_with_wrong_digest_is_never_stored(wasmctr_home: Path) -> None:
    store = Store()
    with pytest.raises(DigestMismatch):
        with store.writer("sha256:" + "0" * 64) as w:
            w.write(b"not what was promised")
            w.commit()
    with pytest.raises(DigestMismatch, match="larger than"):
        with store.writer(expected_size=4) as w:
            w.write(b"12345")
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.ingest_dir.iterdir()) == []


def test_concurrent_builds_into_one_store_keep_every_tag(wasmctr_home: Path, hello_wasm: Path) -> None:
    def build(n: int) -> subprocess.CompletedProcess[str]:
        return wasmctr("build", str(hello_wasm), "-t", f"con:{n}", "--platform",
                       "wasi/wasm" if n % 2 else "linux/amd64", check=False)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(build, range(16)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    names = sorted(f"{i.repository}:{i.tag}" for i in api.images())
    assert names == sorted(f"con:{n}" for n in range(16))
    json.loads((wasmctr_home / "index.json").read_text())
    assert not list((wasmctr_home / "ingest").iterdir())


def test_concurrent_rmi_and_build_lose_nothing(wasmctr_home: Path, hello_wasm: Path, tmp_path: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "keep:1")
    other = tmp_path / "other.wasm"
    other.write_bytes(hello_wasm.read_bytes() + b"\0\x05\x04note")  # a custom section: another digest

    def work(n: int) -> subprocess.CompletedProcess[str]:
        if n % 2:
            return wasmctr("build", str(other), "-t", f"new:{n}", check=False)
        wasmctr("build", str(hello_wasm), "-t", f"tmp:{n}", check=False)
        return wasmctr("rmi", f"tmp:{n}", check=False)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(work, range(12)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    for image in api.images():
        api.inspect(f"{image.repository}:{image.tag}")  # every blob of every image still readable
    assert {i.tag for i in api.images() if i.repository == "new"} == {str(n) for n in range(1, 12, 2)}


def test_every_mix_of_build_pull_tag_rmi_load_and_prune_leaves_complete_images(
        wasmctr_home: Path, hello_wasm: Path, tmp_path: Path, plain_registry) -> None:
    """Parallel loops of every store-changing command; then each tag names a complete image that
    oci-image-tool validates, nothing is left in ingest/, and no blob is unreferenced."""
    def unique(worker: int, i: int) -> str:
        """A module of its own (a custom section naming it), so its blobs are no other image's."""
        module = tmp_path / f"m{worker}-{i}.wasm"
        module.write_bytes(hello_wasm.read_bytes() + b"\0\x05\x04n" + bytes([worker, i]) + b"x")
        return str(module)

    remote = f"{plain_registry.host}/mix:1"
    seed = {"WASMCTR_HOME": str(tmp_path / "seed")}
    wasmctr("build", unique(99, 0), "-t", remote, "--push", env=seed)
    wasmctr("save", remote, "-o", str(tmp_path / "mix.tar"), env=seed)

    def loop(worker: int) -> list[subprocess.CompletedProcess[str]]:
        done = []
        for i in range(6):
            step = (worker + i) % 6
            if step == 0:
                done.append(wasmctr("build", unique(worker, i), "-t", f"b{worker}:{i}", check=False))
            elif step == 1:
                done.append(wasmctr("pull", remote, check=False))
            elif step == 2:
                wasmctr("build", unique(worker, i), "-t", f"t{worker}:src", check=False)
                done.append(wasmctr("tag", f"t{worker}:src", f"t{worker}:{i}", check=False))
            elif step == 3:
                done.append(wasmctr("load", "-i", str(tmp_path / "mix.tar"), "--tag", f"l:{worker}", check=False))
            elif step == 4:
                wasmctr("build", unique(worker, i), "-t", f"gone:{worker}", check=False)
                done.append(wasmctr("rmi", f"gone:{worker}", check=False))
            else:
                done.append(wasmctr("image", "prune", check=False))
        return done

    with ThreadPoolExecutor(6) as pool:
        results = [r for batch in pool.map(loop, range(6)) for r in batch]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    store = Store(wasmctr_home)
    live: set[str] = set()
    for tagged in store.tags():
        assert store.missing(tagged.descriptor) == [], tagged.name
        live |= store.referenced(tagged.descriptor)
    for n, digest in enumerate(sorted({t.descriptor.digest for t in store.tags() if not t.dangling})):
        # oci-image-tool 1.0.0-rc calls a ref "not unique" when another tag names the same manifest:
        # validate a layout of each image alone
        name = next(t.name for t in store.tags() if t.descriptor.digest == digest and not t.dangling)
        wasmctr("save", name, "--oci-dir", str(tmp_path / f"check{n}"))
        subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", f"name={name}",
                        str(tmp_path / f"check{n}")], check=True, capture_output=True)
    assert not any(t.name.startswith("gone:") for t in store.tags())
    assert {"sha256:" + p.name for p in store.blobs_dir.iterdir()} == live
    assert list(store.ingest_dir.iterdir()) == []


def test_concurrent_resumable_writers_of_one_blob_never_trip_over_each_other(tmp_path: Path) -> None:
    """As concurrent pulls of one layer do: each waits for the ingest lock, then resumes, finds the blob
    done, or finishes it; the lock is held until the partial is renamed (it once was released before,
    and a waiter renamed the same file a second time: ENOENT)."""
    import hashlib
    import threading

    store = Store(tmp_path / "store")
    errors: list[BaseException] = []
    for round_number in range(60):
        data = os.urandom(256 << 10) + bytes([round_number])
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        def pull(data: bytes = data, digest: str = digest) -> None:
            try:
                with store.writing(), store.writer(digest, len(data), resumable=True) as writer:
                    if store.has_blob(digest):
                        return
                    writer.write(data[writer.size:])
                    writer.commit()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=pull) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert store.blob_path(digest).read_bytes() == data
    assert list(store.ingest_dir.iterdir()) == []
