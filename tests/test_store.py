"""The local store and its interop: tags, rmi and GC, concurrent builds, save/load, and what skopeo and
oci-image-tool make of our layouts and archives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr

import wasmctr as api
from wasmctr.errors import DigestMismatch
from wasmctr.image.store import Store


def snapshot(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_store_is_a_valid_oci_layout_read_by_skopeo_and_oci_image_tool(wasmctr_home: Path, hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "hello:1")
    wasmctr("build", str(hello_wasm), "-t", "hello:2", "--platform", "linux/amd64")
    assert json.loads((wasmctr_home / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for name in ("hello:1", "hello:2"):
        subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", f"name={name}", str(wasmctr_home)],
                       check=True, capture_output=True)
    inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{wasmctr_home}:hello:1"], check=True,
                                          capture_output=True, text=True).stdout)
    assert (inspected["Os"], inspected["Architecture"]) == ("wasi", "wasm")
    assert inspected["Digest"] == api.inspect("hello:1")["digest"]


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


def test_tag_rmi_and_garbage_collection(wasmctr_home: Path, hello_wasm: Path, component_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "hello:1")
    wasmctr("tag", "hello:1", "127.0.0.1:5000/team/hello:v1")
    wasmctr("build", str(component_wasm), "-t", "comp:1")
    listing = wasmctr("images").stdout.splitlines()
    assert listing[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "PLATFORM", "FORMAT", "SIZE", "CREATED"]
    assert any(line.startswith("127.0.0.1:5000/team/hello") for line in listing)
    store = Store()
    before = set(store.blobs_dir.iterdir())
    out = wasmctr("rmi", "hello:1")
    assert "Untagged: hello:1" in out.stdout and "Deleted 0 blobs" in out.stdout
    digest = api.inspect("127.0.0.1:5000/team/hello:v1")["digest"]
    out = wasmctr("rmi", f"127.0.0.1:5000/team/hello@{digest}")
    assert "Untagged: 127.0.0.1:5000/team/hello:v1" in out.stdout
    after = set(store.blobs_dir.iterdir())
    assert after < before and len(before - after) == 3  # manifest, config, layer
    api.inspect("comp:1")
    assert_one_line_error(wasmctr("rmi", "hello:1", check=False), 1, "no image hello:1")


def test_image_ids_work_wherever_a_name_does_as_in_docker(wasmctr_home: Path, tmp_path: Path,
                                                          hello_c_wasm: Path, hello_wasm: Path) -> None:
    wasmctr("build", str(hello_c_wasm), "-t", "ids:1")
    full = wasmctr("images", "-q", "--no-trunc").stdout.strip()
    short = wasmctr("images", "-q").stdout.strip()
    assert full.startswith("sha256:") and short == full[7:19] == api.inspect("ids:1")["digest"][7:19]
    assert short in wasmctr("images").stdout.splitlines()[1].split()
    for word in (short, full, full[7:], short[:5]):
        assert wasmctr("run", word).stdout.startswith("Hello, world!"), word
        assert json.loads(wasmctr("inspect", word, "--json").stdout)["names"] == ["ids:1"]
    wasmctr("tag", short, "ids:2")
    assert api.inspect("ids:2")["digest"] == full
    # saved by ID, the image is unnamed in the archive, as `docker save ID` leaves it; load names it with -t
    wasmctr("save", short, "-o", str(tmp_path / "by-id.tar"))
    with tarfile.open(tmp_path / "by-id.tar") as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert [e.get("annotations") for e in index["manifests"]] == [None]
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    assert_one_line_error(wasmctr("load", "-i", str(tmp_path / "by-id.tar"), env=fresh, check=False), 1, "-t")
    wasmctr("load", "-i", str(tmp_path / "by-id.tar"), "-t", "named:1", env=fresh)
    assert wasmctr("run", "named:1", env=fresh).stdout.startswith("Hello, world!")
    # a name wins over an ID prefix; 64 hex digits are never a name
    other = api.build(hello_wasm, short[:6]).digest
    assert api.inspect(short[:6])["digest"] == other and api.inspect(short[:5])["digest"] == full
    assert_one_line_error(wasmctr("tag", "ids:1", full[7:], check=False), 2, "image ID")
    out = wasmctr("rmi", "-f", short).stdout  # an ID removes every name of its image (two: only with -f)
    assert out.splitlines()[:2] == ["Untagged: ids:1", "Untagged: ids:2"]
    assert f"Deleted: {full}" in out
    assert_one_line_error(wasmctr("inspect", short, check=False), 1, f"no image {short}")


def test_a_rebuild_leaves_a_dangling_image_that_prune_deletes(wasmctr_home: Path, hello_c_wasm: Path, hello_wasm: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    old = api.build(hello_c_wasm, "app:1").digest
    wasmctr("build", str(hello_wasm), "-t", "app:1")
    wasmctr("build", str(hello_wasm), "-t", "keep:1", "--platform", "linux/amd64")
    rows = [line.split() for line in wasmctr("images").stdout.splitlines()]
    assert rows[-1][:3] == ["<none>", "<none>", old[7:19]], rows
    assert rows[-1][-1] == "-", "SOURCE_DATE_EPOCH=0 is shown as no time, not as 56 years ago"
    assert [r[0] for r in rows[1:]] == ["app", "keep", "<none>"]
    assert wasmctr("run", old[7:19]).stdout.startswith("Hello, world!")  # still there, by its ID
    # filters, as `docker images REPOSITORY[:TAG]`: a name, a name:tag, a glob within one path component
    assert [line.split()[0] for line in wasmctr("images", "app").stdout.splitlines()] == ["REPOSITORY", "app"]
    assert len(wasmctr("images", "k?ep:1").stdout.splitlines()) == 2
    assert len(wasmctr("images", "*:1").stdout.splitlines()) == 3
    assert len(wasmctr("images", "app:2").stdout.splitlines()) == 1
    listed = [json.loads(line) for line in wasmctr("images", "--format", "json").stdout.splitlines()]
    assert [(i["Repository"], i["Tag"], i["ID"]) for i in listed][-1] == ("<none>", "<none>", old)
    assert listed[0]["CreatedAt"] == "1970-01-01T00:00:00Z" and listed[0]["Platforms"] == ["wasi/wasm"]
    assert_one_line_error(wasmctr("images", "--format", "yaml", check=False), 2, "--format")
    # tag moves leave dangling images too, but never one still named elsewhere or twice
    current = api.inspect("app:1")["digest"]
    wasmctr("tag", "keep:1", "app:1")
    wasmctr("tag", old, "app:1")
    assert {(i.repository, i.digest) for i in api.images()} == {("app", old), ("keep", api.inspect("keep:1")["id"]),
                                                                ("<none>", current)}
    pruned = wasmctr("image", "prune").stdout
    assert pruned.splitlines()[0] == f"Deleted: {current}" and "Deleted 2 blobs" in pruned  # manifest, config
    assert [i.repository for i in api.images()] == ["app", "keep"]
    # many dangling images: an ID prefix that begins two of them is refused, not guessed
    for epoch in range(1, 18):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
        api.build(hello_wasm, "app:1")
    ids = [i.digest[7:] for i in api.images() if i.repository == "<none>"]
    assert len(ids) == 17
    shared = next(d[0] for d in ids if sum(e[0] == d[0] for e in ids) > 1)
    assert_one_line_error(wasmctr("rmi", shared, check=False), 2, "ambiguous")
    assert len(wasmctr("image", "prune").stdout.splitlines()) == 17 + 2


@pytest.mark.parametrize("args", [["images"], ["images", "--format", "json"], ["inspect", "out:1"], ["--help"],
                                  ["run", "--help"], ["--version"]])
def test_output_to_a_closed_pipe_ends_quietly_and_successfully(wasmctr_home: Path, hello_wasm: Path,
                                                               args: list[str]) -> None:
    """`wasmctr images | head -1`, made certain: the reader is gone before anything is written."""
    api.build(hello_wasm, "out:1")
    reader, writer = os.pipe()
    os.close(reader)
    exe = Path(sys.executable).parent / "wasmctr"
    proc = subprocess.run([str(exe), *args], stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(writer)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_rmi_removes_the_unpacked_rootfs_of_an_image_it_deletes(wasmctr_home: Path, hello_c_wasm: Path) -> None:
    wasmctr("build", str(hello_c_wasm), "-t", "unpacked:1")
    wasmctr("tag", "unpacked:1", "unpacked:2")
    assert wasmctr("run", "unpacked:1").stdout.startswith("Hello, world!")
    rootfs = wasmctr_home / "rootfs" / api.inspect("unpacked:1")["digest"].split(":")[1]
    assert (rootfs / "hello.wasm").is_file()
    wasmctr("rmi", "unpacked:1")
    assert rootfs.is_dir(), "still an image: unpacked:2"
    wasmctr("rmi", "unpacked:2")
    assert not rootfs.exists()


def test_save_and_load_round_trip_through_an_oci_archive(wasmctr_home: Path, tmp_path: Path, hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "rt:1", "--platform", "wasi/wasm,linux/amd64")
    digest = api.inspect("rt:1")["digest"]
    archive = tmp_path / "rt.tar"
    wasmctr("save", "rt:1", "-o", str(archive))
    again = tmp_path / "rt2.tar"
    wasmctr("save", "rt:1", "-o", str(again))
    assert archive.read_bytes() == again.read_bytes(), "saving is deterministic"
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    out = wasmctr("load", "-i", str(archive), env=fresh)
    assert out.stdout.strip() == "Loaded image: rt:1"
    shown = json.loads(wasmctr("inspect", "rt:1", "--json", env=fresh).stdout)
    assert shown["digest"] == digest and shown["platforms"] == ["wasi/wasm", "linux/amd64"]
    # skopeo reads the archive, with every platform of the index
    copy = tmp_path / "skopeo-copy"
    subprocess.run(["skopeo", "copy", "--all", f"oci-archive:{archive}", f"oci:{copy}:rt"], check=True,
                   capture_output=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{copy}:rt"], check=True, capture_output=True).stdout
    assert "sha256:" + __import__("hashlib").sha256(raw).hexdigest() == digest


def test_save_into_an_oci_layout_directory_and_load_it_back(wasmctr_home: Path, tmp_path: Path,
                                                             hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "dir:1")
    wasmctr("build", str(hello_wasm), "-t", "dir:art", "--format", "artifact")
    layout = tmp_path / "layout"
    wasmctr("save", "dir:1", "--oci-dir", str(layout))
    wasmctr("save", "dir:art", "--oci-dir", str(layout))
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]  # no locks, no ingest/
    subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=dir:1", str(layout)], check=True,
                   capture_output=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:dir:art"], check=True, capture_output=True,
                         text=True).stdout
    assert json.loads(raw)["config"]["mediaType"] == "application/vnd.wasm.config.v0+json"
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    out = wasmctr("load", "-i", str(layout), env=fresh)
    assert sorted(out.stdout.split("\n")[:2]) == ["Loaded image: dir:1", "Loaded image: dir:art"]


def test_skopeo_written_archive_loads(wasmctr_home: Path, tmp_path: Path, hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "sk:1")
    named, bare = tmp_path / "named.tar", tmp_path / "bare.tar"
    subprocess.run(["skopeo", "copy", f"oci:{wasmctr_home}:sk:1", f"oci-archive:{named}:sk:1"], check=True,
                   capture_output=True)
    subprocess.run(["skopeo", "copy", f"oci:{wasmctr_home}:sk:1", f"oci-archive:{bare}:v1"], check=True,
                   capture_output=True)
    fresh = {"WASMCTR_HOME": str(tmp_path / "fresh")}
    assert wasmctr("load", "-i", str(named), env=fresh).stdout.strip() == "Loaded image: sk:1"
    archive = bare
    assert_one_line_error(wasmctr("load", "-i", str(archive), env=fresh, check=False), 1, "--tag")
    wasmctr("load", "-i", str(archive), "-t", "from-skopeo:1", env=fresh)
    assert json.loads(wasmctr("inspect", "from-skopeo:1", "--json", env=fresh).stdout)["wasm"]["kind"] == "module"


def test_damaged_archive_leaves_the_store_unchanged(wasmctr_home: Path, tmp_path: Path, hello_wasm: Path,
                                                     component_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "dmg:1")
    archive = tmp_path / "dmg.tar"
    wasmctr("save", "dmg:1", "-o", str(archive))
    target = tmp_path / "target"
    wasmctr("build", str(component_wasm), "-t", "existing:1", env={"WASMCTR_HOME": str(target)})
    before = snapshot(target)
    # flip the content of the layer blob inside the archive, keep its name
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(archive) as src, tarfile.open(damaged, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and member.size > 100 and data[:2] == b"\x1f\x8b":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.addfile(member, __import__("io").BytesIO(data) if data is not None else None)
    proc = wasmctr("load", "-i", str(damaged), env={"WASMCTR_HOME": str(target)}, check=False)
    assert_one_line_error(proc, 1, "digest mismatch")
    assert snapshot(target) == before
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(archive.read_bytes()[:700])
    proc = wasmctr("load", "-i", str(truncated), env={"WASMCTR_HOME": str(target)}, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert snapshot(target) == before


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["build", "/nonexistent/app.wasm", "-t", "x:1"], 2, "no such file"),
        (["build", "{wasm}", "-t", "Not_Valid:ref"], 2, "invalid reference"),
        (["build", "{wasm}", "-t", "x:1", "--format", "zip"], 2, "--format"),
        (["build", "{wasm}", "-t", "x:1", "--platform", "wasi"], 2, "invalid platform"),
        (["build", "{wasm}"], 2, "-t"),
        (["inspect", "missing:1"], 1, "no image missing:1"),
        (["tag", "missing:1", "x:2"], 1, "no image missing:1"),
        (["save", "missing:1", "-o", "/tmp/x.tar"], 1, "no image"),
        (["load", "-i", "/nonexistent.tar"], 2, "no such file"),
        (["frobnicate"], 2, "No such command"),
        (["images", "--bogus"], 2, "--bogus"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(hello_wasm: Path, args: list[str], code: int, fragment: str) -> None:
    proc = wasmctr(*[a.replace("{wasm}", str(hello_wasm)) for a in args], check=False)
    assert_one_line_error(proc, code, fragment)


def test_unreadable_store_is_a_clear_error(tmp_path: Path, hello_wasm: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    proc = wasmctr("images", env={"WASMCTR_HOME": str(blocker / "store")}, check=False)
    assert_one_line_error(proc, 1, "cannot use store")
    home = tmp_path / "damaged"
    wasmctr("build", str(hello_wasm), "-t", "x:1", env={"WASMCTR_HOME": str(home)})
    (home / "index.json").write_text("{not json")
    assert_one_line_error(wasmctr("images", env={"WASMCTR_HOME": str(home)}, check=False), 1, "damaged")


def test_default_store_follows_xdg_data_home(tmp_path: Path, hello_wasm: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WASMCTR_HOME"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    subprocess.run([str(Path(sys.executable).parent / "wasmctr"), "build", str(hello_wasm), "-t", "x:1"],
                   check=True, env=env, capture_output=True)
    assert (tmp_path / "xdg" / "wasmctr" / "index.json").is_file()


def test_version_and_help() -> None:
    engine = __import__("importlib.metadata").metadata.version("wasmtime")
    assert wasmctr("--version").stdout.strip() == (f"wasmctr {api.__version__} (wasmtime {engine}, "
                                                   f"Python {sys.version.split()[0]})")
    commands = ["build", "run", "push", "pull", "login", "logout", "images", "inspect", "tag", "rmi", "save", "load",
                "image prune"]
    summary = wasmctr("--help", env={"COLUMNS": "80"}).stdout
    for command in commands:
        text = wasmctr(*command.split(), "--help", env={"COLUMNS": "80"}).stdout
        assert "Example: " in text and f"wasmctr {command}" in text.split("Example: ")[1], command
        # as `docker run --help` reads: placeholders say what goes there, nothing is cut short
        assert not re.search(r"<(str|int|text|integer|float|path)>|\{[a-z_]+\}|\.\.\.$|…", text, re.M), (command, text)
        usage = text.splitlines()[0]
        assert usage.startswith(f"Usage: wasmctr {command} [OPTIONS]") and "{" not in usage, usage
    assert "..." not in summary.split("Commands:")[1] and "…" not in summary
    assert wasmctr("run", "--help").stdout.startswith("Usage: wasmctr run [OPTIONS] IMAGE|FILE.wasm [ARG...]")


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


def test_load_keeps_no_blob_that_no_loaded_image_references(wasmctr_home: Path, hello_wasm: Path,
                                                            tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    wasmctr("build", str(hello_wasm), "-t", "one:1")
    wasmctr("save", "one:1", "--oci-dir", str(layout))
    (layout / "blobs" / "sha256" / ("ab" * 32)).write_bytes(b"stray")  # named wrongly: refused
    stray = b"a stray blob nothing references"
    import hashlib

    (layout / "blobs" / "sha256" / hashlib.sha256(stray).hexdigest()).write_bytes(stray)
    home = tmp_path / "fresh"
    proc = wasmctr("load", "-i", str(layout), env={"WASMCTR_HOME": str(home)}, check=False)
    assert proc.returncode == 1 and "digest mismatch" in proc.stderr  # the wrongly named blob spoils it
    (layout / "blobs" / "sha256" / ("ab" * 32)).unlink()
    wasmctr("load", "-i", str(layout), env={"WASMCTR_HOME": str(home)})
    assert not (home / "blobs" / "sha256" / hashlib.sha256(stray).hexdigest()).exists()
    assert len(list((home / "blobs" / "sha256").iterdir())) == len(list((wasmctr_home / "blobs" / "sha256").iterdir()))


def test_a_rebuild_over_a_tag_leaves_blobs_that_image_prune_removes(wasmctr_home: Path, hello_wasm: Path,
                                                                     tmp_path: Path) -> None:
    other = tmp_path / "other.wasm"
    other.write_bytes(hello_wasm.read_bytes() + b"\0\x05\x04note")
    wasmctr("build", str(hello_wasm), "-t", "app:1")
    before = set((wasmctr_home / "blobs" / "sha256").iterdir())
    wasmctr("build", str(other), "-t", "app:1")
    pruned = wasmctr("image", "prune").stdout
    assert "Deleted 3 blobs" in pruned and "Total reclaimed space" in pruned  # manifest, config, layer
    assert not before & set((wasmctr_home / "blobs" / "sha256").iterdir())
    assert wasmctr("run", "app:1").stdout == "hello from wat\n"


def test_save_writes_into_fifos_devices_and_stdout_and_replaces_files_and_links(
        wasmctr_home: Path, hello_wasm: Path, tmp_path: Path) -> None:
    """Never rename over a FIFO or device: `save -o /dev/null` once replaced the node's /dev/null. Here the
    device is one of the test's own, made in its temp dir. A link is replaced, never written through, except
    a link to this process's stdout (as /dev/stdout is), which is the stream itself."""
    import stat
    import threading

    wasmctr("build", str(hello_wasm), "-t", "out:1")
    reference = tmp_path / "ref.tar"
    wasmctr("save", "out:1", "-o", str(reference))
    expected = reference.read_bytes()

    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    wasmctr("save", "out:1", "-o", str(device))
    assert stat.S_ISCHR(device.lstat().st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".null", "null."))]

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    wasmctr("save", "out:1", "-o", str(fifo))
    reader.join(30)
    assert received == [expected] and stat.S_ISFIFO(fifo.lstat().st_mode)

    target = tmp_path / "target.tar"
    target.write_bytes(b"old content, longer than nothing")
    link = tmp_path / "link.tar"
    link.symlink_to(target)
    wasmctr("save", "out:1", "-o", str(link))
    assert not link.is_symlink() and link.read_bytes() == expected
    assert target.read_bytes() == b"old content, longer than nothing"

    stdout_link = tmp_path / "stdout"  # as /dev/stdout, which a test must not aim at
    stdout_link.symlink_to("/proc/self/fd/1")
    through = subprocess.run([str(Path(os.sys.executable).parent / "wasmctr"), "save", "out:1", "-o",
                              str(stdout_link)], capture_output=True, check=True)
    assert through.stdout == expected and stdout_link.is_symlink()

    to_stdout = subprocess.run([str(Path(os.sys.executable).parent / "wasmctr"), "save", "out:1", "-o", "-"],
                               capture_output=True, check=True)
    assert to_stdout.stdout == expected

    regular = tmp_path / "regular.tar"
    regular.write_bytes(b"old")
    inode = regular.stat().st_ino
    wasmctr("save", "out:1", "-o", str(regular))
    assert regular.read_bytes() == expected and regular.stat().st_ino != inode  # replaced whole, by rename
    assert_one_line_error(wasmctr("save", "out:1", "-o", str(tmp_path), check=False), 1, "directory")
    missing = tmp_path / "no-such-dir" / "x.tar"
    assert_one_line_error(wasmctr("save", "out:1", "-o", str(missing), check=False), 1, str(missing))


def test_a_link_planted_in_a_shared_directory_is_replaced_not_written_through(
        wasmctr_home: Path, hello_wasm: Path, tmp_path: Path) -> None:
    """An unprivileged user (here: links owned by nobody, in a sticky world-writable directory, where
    fs.protected_symlinks=0 lets root follow them) points root's outputs at root's files: `save -o`
    replaces the link, as `docker save -o` does; into an `--oci-dir` there, a planted lock file link is
    refused instead of creating the file it names (`/etc/nologin` would stop logins)."""
    wasmctr("build", str(hello_wasm), "-t", "out:1")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "root-only"
    victim.write_bytes(b"root's own data")
    victim.chmod(0o600)
    planted = shared / "out.tar"
    planted.symlink_to(victim)
    os.lchown(planted, 65534, 65534)
    wasmctr("save", "out:1", "-o", str(planted))
    assert victim.read_bytes() == b"root's own data" and victim.stat().st_mode & 0o777 == 0o600
    assert not planted.is_symlink() and planted.stat().st_uid == 0
    assert tarfile.open(planted).getmember("index.json").isfile()

    layout = shared / "layout"
    layout.mkdir()
    nologin = tmp_path / "etc-nologin"
    (layout / "index.lock").symlink_to(nologin)
    os.lchown(layout / "index.lock", 65534, 65534)
    (layout / "oci-layout").symlink_to(tmp_path / "etc-layout")  # a dangling link: replaced, not created
    refused = wasmctr("save", "out:1", "--oci-dir", str(layout), check=False)
    assert_one_line_error(refused, 1, "index.lock")
    assert not nologin.exists() and not (tmp_path / "etc-layout").exists()
    assert not (layout / "oci-layout").is_symlink()


def test_load_says_what_its_limits_are(wasmctr_home: Path, tmp_path: Path) -> None:
    """A valid 5 MB index.json was "not valid JSON" (reading stopped at 4 MiB); an archive member, gzip
    lets declare far more than the file holds, is refused over the blob cap before it is written."""
    import gzip
    import hashlib
    import io

    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [],
                                                   "annotations": {"pad": "x" * (5 << 20)}}))
    assert_one_line_error(wasmctr("load", "-i", str(layout), check=False), 1, "index.json is over the 4 MiB limit")

    zeros = bytes(2 << 20)
    member = tarfile.TarInfo("blobs/sha256/" + hashlib.sha256(zeros).hexdigest())
    member.size = len(zeros)
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        tar.addfile(member, io.BytesIO(zeros))
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(packed.getvalue()))
    proc = wasmctr("load", "-i", str(bomb), env={"WASMCTR_MAX_BLOB_MIB": "1"}, check=False)
    assert_one_line_error(proc, 1, f"{len(zeros)} bytes, over the 1 MiB limit")
    assert list((wasmctr_home / "ingest").iterdir()) == []


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


def test_a_layout_directory_another_user_can_redirect_is_refused(wasmctr_home: Path, hello_wasm: Path,
                                                                tmp_path: Path) -> None:
    """`save --oci-dir` renames blobs into the layout's directories: where another user made
    `blobs/sha256` a link (to /etc/cron.d, say), or owns a directory there, root's blobs would land where
    that user chose. Refused in one line, nothing written."""
    wasmctr("build", str(hello_wasm), "-t", "out:1")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    cron = tmp_path / "cron.d"
    cron.mkdir()
    linked = shared / "linked"
    (linked / "blobs").mkdir(parents=True)
    (linked / "blobs" / "sha256").symlink_to(cron)
    os.lchown(linked / "blobs" / "sha256", 65534, 65534)
    assert_one_line_error(wasmctr("save", "out:1", "--oci-dir", str(linked), check=False), 1,
                          "blobs/sha256", "not a directory of its own")
    theirs = shared / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert_one_line_error(wasmctr("save", "out:1", "--oci-dir", str(theirs), check=False), 1, "uid 65534")
    assert list(cron.iterdir()) == [] and list(theirs.iterdir()) == []
