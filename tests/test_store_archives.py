"""save and load: OCI archives and layout directories written deterministically and read back, what
skopeo and oci-image-tool make of them (and of the store, itself an OCI layout), damaged or oversized
input refused with the store unchanged, and outputs never written through a planted link, renamed
over a FIFO or device, or put in a directory another user controls."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

from conftest import assert_one_line_error, wasmctr

import wasmctr as api


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
