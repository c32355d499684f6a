"""Naming and removing images in the local store: tags, image IDs wherever a name goes, rmi (and the
unpacked rootfs with it), dangling images and `image prune`, the `images` listing and its filters,
and the CLI's one-line errors, closed pipes, help, version and default store location."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr

import wasmctr as api
from wasmctr.image.store import Store


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
