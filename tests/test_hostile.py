"""Hostile images: layers written as an attacker would write them, pushed to a real registry with skopeo
and run with `wasmctr run`. Whatever each layer tries, a canary directory outside the store stays
byte-for-byte as it was and nothing appears beside it. The same corpus is also applied in-process with
each of the two path resolvers (openat2, and the O_NOFOLLOW walk older kernels get)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr
from imagekit import Entry, directory, hardlink, symlink, tar_bytes, tree, write_layout

from wasmctr.errors import LayerError
from wasmctr.image import inroot
from wasmctr.layers.unpack import apply_layer

UP = "../" * 24  # more than enough to climb from any staging directory to /


def cve_2025_4517_chain(target: Path) -> list[Entry]:
    """Short symlinks whose expansion passes PATH_MAX, so that os.path.realpath gives up and returns an
    unresolved path that a string check accepts; then a link through the chain, and writes through it."""
    comp, steps, path, entries = "d" * 247, "abcdefghijklmnop", "", []
    for step in steps:
        entries += [directory(os.path.join(path, comp)), symlink(os.path.join(path, step), comp)]
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    entries.append(symlink(linkpath, os.path.join(*[".."] * len(steps))))
    entries.append(symlink("escape", os.path.join(linkpath, *[".."] * 30, str(target).lstrip("/"))))
    entries += [Entry("escape/evil", data=b"pwned"), hardlink("stolen", "escape/secret")]
    return entries


def corpus(canary: Path) -> dict[str, tuple[list[list[Entry]], str]]:
    """name -> (layers after the one holding hello.wasm, expected outcome: "runs" or "refused")."""
    c = str(canary)
    return {
        "dotdot-write": ([[Entry(UP + c.lstrip("/") + "/evil", data=b"pwned")]], "runs"),
        "absolute-write": ([[Entry(c + "/evil", data=b"pwned")]], "runs"),
        "whiteout-dotdot": ([[Entry(UP + c.lstrip("/") + "/.wh.victim")]], "runs"),
        "whiteout-absolute": ([[Entry(c + "/.wh.victim")]], "runs"),
        "opaque-whiteout-dotdot": ([[Entry(UP + c.lstrip("/") + "/.wh..wh..opq")]], "runs"),
        "symlink-then-write": ([[symlink("link", c), Entry("link/evil", data=b"pwned")]], "refused"),
        "relative-symlink-then-write": ([[symlink("link", UP + c.lstrip("/")), Entry("link/evil", data=b"x")]],
                                        "refused"),
        "symlink-layer-then-write-layer": ([[symlink("link", c)], [Entry("link/evil", data=b"pwned")]],
                                           "refused"),
        "write-through-symlink-lands-inside": ([[directory(c.lstrip("/")), symlink("link", c),
                                                 Entry("link/evil", data=b"in the image")]], "runs"),
        "symlink-then-whiteout": ([[symlink("link", c)], [Entry("link/.wh.victim")]], "runs"),
        "symlink-then-opaque": ([[symlink("link", c)], [Entry("link/.wh..wh..opq")]], "runs"),
        "file-over-symlink": ([[symlink("victim", c + "/victim")], [Entry("victim", data=b"pwned")]], "runs"),
        "hardlink-out-absolute": ([[hardlink("stolen", c + "/secret")]], "refused"),
        "hardlink-out-dotdot": ([[hardlink("stolen", UP + c.lstrip("/") + "/secret")]], "refused"),
        "hardlink-through-symlink": ([[symlink("link", c), hardlink("stolen", "link/secret")]], "refused"),
        "hardlink-to-outside-symlink-then-write": (
            [[symlink("s", c + "/victim"), hardlink("h", "s"), Entry("h", data=b"pwned")]], "runs"),
        "cve-2025-4517-chain": ([cve_2025_4517_chain(canary)], "refused"),
        "character-device": ([[Entry("dev/mem", tarfile.CHRTYPE)]], "refused"),
        "block-device": ([[Entry("dev/sda", tarfile.BLKTYPE)]], "refused"),
        "fifo": ([[Entry("fifo", tarfile.FIFOTYPE)]], "refused"),
        "setuid-file": ([[Entry("suid", data=b"x", mode=0o6755)]], "runs"),
        "long-name": ([[Entry("n" * 5000, data=b"x")]], "refused"),
        "deep-nesting": ([[Entry("d/" * 200 + "f", data=b"x")]], "runs"),
        "too-deep-nesting": ([[Entry("d/" * 1500 + "f", data=b"x")]], "refused"),
        "too-deep-through-a-symlink": ([[Entry("a/" * 200 + "f", data=b"x"), symlink("s", "/" + "a/" * 200),
                                         Entry("s/" + "b/" * 100 + "f", data=b"x")]], "refused"),
        "invalid-whiteout": ([[Entry("dir/.wh..")]], "refused"),
    }


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """tmp/outside/canary with a victim file, a secret and a subdirectory: what an attack would hit."""
    c = tmp_path / "outside" / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "victim").write_bytes(b"victim\n")
    (c / "secret").write_bytes(b"secret\n")
    (c / "sub" / "deep").write_bytes(b"deep\n")
    return c


def layers_for(hello: bytes, extra: list[list[Entry]]) -> list[bytes]:
    return [tar_bytes([Entry("hello.wasm", data=hello)]), *[tar_bytes(layer) for layer in extra]]


CASES = sorted(corpus(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_hostile_image_pulled_and_run_leaves_the_host_alone(case: str, canary: Path, tmp_path: Path,
                                                           hello_wasm: Path, plain_registry) -> None:
    extra, expected = corpus(canary)[case]
    layout = tmp_path / "layout"
    write_layout(layout, "1", layers_for(hello_wasm.read_bytes(), extra))
    ref = f"{plain_registry.host}/hostile-{case}:1"
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    before = tree(tmp_path / "outside")
    proc = wasmctr("run", ref, check=False)
    if expected == "runs":
        assert proc.returncode == 0 and proc.stdout == "hello from wat\n", proc.stderr
    else:  # after the pull's progress lines, one error line
        assert proc.returncode == 125 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.splitlines()[-1].startswith("wasmctr: error: sha256:"), proc.stderr
    assert tree(tmp_path / "outside") == before


@pytest.mark.parametrize("walk", [False, True], ids=["openat2", "walk"])
@pytest.mark.parametrize("case", CASES)
def test_unpacker_contains_every_case_with_either_resolver(case: str, walk: bool, canary: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inroot, "_openat2_works", False if walk else None)
    extra, expected = corpus(canary)[case]
    root = tmp_path / "root"
    root.mkdir()
    before = tree(tmp_path / "outside")
    outcome = "runs"
    for raw in layers_for(b"\0asm\1\0\0\0", extra):
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar:
                apply_layer(tar, root)
        except LayerError as exc:
            assert "\n" not in str(exc)
            outcome = "refused"
            break
    assert outcome == expected
    assert tree(tmp_path / "outside") == before
    assert inroot._openat2_works is (False if walk else True)


def test_unpacked_files_lose_setuid_and_setgid(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    raw = tar_bytes([Entry("suid", data=b"x", mode=0o6755), directory("tmp", 0o1777)])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar:
        apply_layer(tar, root)
    assert stat.S_IMODE((root / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777


def test_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    """OCI image-spec: a whiteout applies to lower layers; entries of its own layer stay."""
    root = tmp_path / "root"
    root.mkdir()
    layers = [
        [Entry("a/old", data=b"1"), Entry("b/gone", data=b"2"), Entry("keep", data=b"3")],
        [Entry("a/.wh..wh..opq"), Entry("a/new", data=b"4"), Entry("b/.wh.gone"), Entry("c", data=b"5"),
         Entry(".wh.c")],
    ]
    for layer in layers:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes(layer)), mode="r|") as tar:
            apply_layer(tar, root)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["a", "a/new", "b", "c", "keep"]


def test_absolute_symlinks_resolve_inside_the_image(tmp_path: Path, hello_wasm: Path) -> None:
    """`build` accepts an absolute symlink, so `run` must too: resolved in the image, as a chroot would."""
    context = tmp_path / "ctx"
    (context / "bin").mkdir(parents=True)
    (context / "bin" / "hello.wasm").write_bytes(hello_wasm.read_bytes())
    (context / "app").symlink_to("/bin")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /\nWORKDIR /app\nENTRYPOINT [\"/bin/hello.wasm\"]\n")
    wasmctr("build", str(context), "-t", "abs-link:1")
    assert wasmctr("run", "abs-link:1").stdout == "hello from wat\n"


def test_corrupt_layers_are_one_line_errors(tmp_path: Path, hello_wasm: Path) -> None:
    good = tar_bytes([Entry("hello.wasm", data=hello_wasm.read_bytes())])
    for name, blob in {"not-tar": gzip.compress(b"this is not a tar archive" * 100),
                       "truncated-gzip": gzip.compress(good)[:200],
                       "bad-zstd": b"\x28\xb5\x2f\xfd" + b"\xff" * 64,
                       "plain-garbage": b"\x00garbage" * 100}.items():
        write_layout(tmp_path / name, "1", [blob], gzipped=False)
        wasmctr("load", "-i", str(tmp_path / name), "--tag", f"corrupt-{name}:1")
        assert_one_line_error(wasmctr("run", f"corrupt-{name}:1", check=False), 125, "corrupt")
        assert_one_line_error(wasmctr("inspect", f"corrupt-{name}:1", check=False), 1, "corrupt")


def test_the_syscall_benchs_driver_runs_a_container_process_as_the_shim_does(hostile_wasm: Path,
                                                                             tmp_path: Path) -> None:
    """bench/syscalls.py derives the seccomp allowlist by tracing this driver, so it must keep calling the
    container path as the shim does (it went stale once, unnoticed, when Landlock joined that path)."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from syscalls import DRIVER

    (tmp_path / "in.txt").write_text("hello")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(hostile_wasm), str(tmp_path), "0", "read",
                           "/data/in.txt"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "read: hello\n", proc.stderr
