"""`wasmctr build`: both formats, indexes, reproducibility, validation, and the Dockerfile subset."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr

import wasmctr as api
from wasmctr.image import mediatypes as mt
from wasmctr.image.store import Store


def blob(store: Store, digest: str) -> bytes:
    return store.blob_path(digest).read_bytes()


def manifest_and_config(store: Store, name: str) -> tuple[dict, dict]:
    info = api.inspect(name, store=store)
    return info["manifest"], info["config"]


def layer_members(store: Store, digest: str) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(store, digest)))) as tar:
        return tar.getmembers()


def test_single_module_compat_image_has_wasi_config_and_one_gzip_layer(hello_wasm: Path) -> None:
    out = wasmctr("build", str(hello_wasm), "-t", "hello:1")
    digest = out.stdout.strip().splitlines()[-1]
    store = Store()
    manifest, config = manifest_and_config(store, "hello:1")
    assert digest == api.inspect("hello:1")["digest"]
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["annotations"][mt.ANNOTATION_VARIANT] == "compat"
    assert manifest["config"]["mediaType"] == mt.OCI_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [mt.OCI_LAYER_TAR_GZIP]
    assert config["os"] == "wasi" and config["architecture"] == "wasm"
    assert config["config"]["Entrypoint"] == ["/hello.wasm"]
    assert config["config"]["Labels"][mt.ANNOTATION_VARIANT] == "compat"
    assert config["created"] == "1970-01-01T00:00:00Z"
    layer = blob(store, manifest["layers"][0]["digest"])
    assert layer[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()]
    (member,) = layer_members(store, manifest["layers"][0]["digest"])
    assert member.name == "hello.wasm" and member.mtime == 0 and member.uid == 0 and member.uname == ""
    assert member.mode == 0o755


def test_artifact_format_for_a_module(hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "hello:art", "--format", "artifact", "--author", "Ada")
    store = Store()
    manifest, config = manifest_and_config(store, "hello:art")
    assert manifest["config"]["mediaType"] == mt.WASM_CONFIG_V0
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/wasm"
    assert blob(store, layer["digest"]) == hello_wasm.read_bytes()
    assert config == {
        "created": "1970-01-01T00:00:00Z",
        "author": "Ada",
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer["digest"]],
    }


def test_artifact_format_for_a_component_lists_imports_and_exports(component_wasm: Path) -> None:
    wasmctr("build", str(component_wasm), "-t", "comp:1", "--format", "artifact")
    _, config = manifest_and_config(Store(), "comp:1")
    assert config["os"] == "wasip2"
    assert config["component"] == {
        "imports": ["wasi:cli/environment@0.2.0"],
        "exports": ["wasi:cli/run@0.2.0"],
        "target": None,
    }
    assert api.inspect("comp:1")["wasm"]["kind"] == "component"


def test_component_in_compat_image_is_detected(component_wasm: Path) -> None:
    out = wasmctr("build", str(component_wasm), "-t", "comp:compat")
    assert "component" in out.stdout
    info = api.inspect("comp:compat")
    assert info["wasm"] == {"kind": "component", "path": "/component.wasm",
                            "imports": ["wasi:cli/environment@0.2.0"], "world": "command"}


def test_platform_list_builds_an_index_sharing_one_layer(hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "multi:1", "--platform", "wasi/wasm,linux/amd64,linux/arm64")
    store = Store()
    info = api.inspect("multi:1")
    assert info["mediaType"] == mt.OCI_INDEX
    assert info["platforms"] == ["wasi/wasm", "linux/amd64", "linux/arm64"]
    index = json.loads(blob(store, info["digest"]))
    layers = set()
    for entry in index["manifests"]:
        manifest = json.loads(blob(store, entry["digest"]))
        config = json.loads(blob(store, manifest["config"]["digest"]))
        assert (config["os"], config["architecture"]) == (entry["platform"]["os"], entry["platform"]["architecture"])
        layers.add(manifest["layers"][0]["digest"])
    assert len(layers) == 1
    amd = api.inspect("multi:1", platform="linux/amd64")
    assert amd["config"]["os"] == "linux" and amd["format"] == "compat"


def test_same_inputs_give_the_same_digest_from_different_directories(tmp_path: Path, hello_wasm: Path) -> None:
    digests = []
    for n, mtime in ((1, 1_000_000), (2, 2_000_000)):
        ctx = tmp_path / f"ctx{n}" / "deeper"
        (ctx / "data").mkdir(parents=True)
        shutil.copy(hello_wasm, ctx / "app.wasm")
        (ctx / "data" / "b.txt").write_text("b")
        (ctx / "data" / "a.txt").write_text("a")
        (ctx / "Dockerfile").write_text('FROM scratch\nCOPY app.wasm /\nCOPY data /data/\nENTRYPOINT ["/app.wasm"]\n')
        for p in ctx.rglob("*"):
            os.utime(p, (mtime, mtime))
        out = wasmctr("build", str(ctx), "-t", f"repro:{n}", env={"WASMCTR_HOME": str(tmp_path / f"home{n}")})
        digests.append(out.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]
    later = wasmctr("build", str(tmp_path / "ctx1" / "deeper"), "-t", "repro:3",
                    env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert later.stdout.strip().splitlines()[-1] != digests[0]
    assert api.inspect("repro:3")["config"]["created"] == "2023-11-14T22:13:20Z"


def test_dockerfile_subset(tmp_path: Path, hello_wasm: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "assets" / "sub").mkdir(parents=True)
    shutil.copy(hello_wasm, ctx / "app.wasm")
    (ctx / "assets" / "one.txt").write_text("1")
    (ctx / "assets" / "sub" / "two.txt").write_text("2")
    (ctx / "notes.md").write_text("n")
    (ctx / "secret.key").write_text("k")
    (ctx / "conf-a.json").write_text("{}")
    (ctx / "conf-b.json").write_text("{}")
    (ctx / ".dockerignore").write_text("*.key\n")
    (ctx / "Dockerfile").write_text(
        "# syntax=docker/dockerfile:1\n"
        "ARG VERSION=0.0\n"
        "FROM scratch AS final\n"
        "ARG VERSION\n"
        "ARG WHO=nobody\n"
        "# a comment\n"
        "ENV APP_VERSION=$VERSION \\\n"
        "    GREETING=\"hello ${WHO}\"\n"
        "LABEL org.opencontainers.image.version=${VERSION} \\\n"
        "      # comments inside continuations are dropped\n"
        "      team=wasm\n"
        "WORKDIR /srv\n"
        "COPY --chmod=700 app.wasm bin/\n"
        "COPY assets/ /assets/\n"
        "COPY conf-*.json ./etc/\n"
        "COPY [\"notes.md\", \"/docs/notes.md\"]\n"
        "USER 1000:1000\n"
        'ENTRYPOINT ["bin/app.wasm"]\n'
        'CMD ["--serve"]\n'
    )
    wasmctr("build", str(ctx), "-t", "df:1", "--build-arg", "VERSION=1.2", "--build-arg", "WHO=you")
    store = Store()
    manifest, config = manifest_and_config(store, "df:1")
    rc = config["config"]
    assert rc["Env"] == ["APP_VERSION=1.2", "GREETING=hello you"]
    assert rc["Labels"]["org.opencontainers.image.version"] == "1.2" and rc["Labels"]["team"] == "wasm"
    assert rc["WorkingDir"] == "/srv" and rc["User"] == "1000:1000"
    assert rc["Entrypoint"] == ["bin/app.wasm"] and rc["Cmd"] == ["--serve"]
    members = {m.name: m for m in layer_members(store, manifest["layers"][0]["digest"])}
    assert sorted(members) == sorted([
        "assets", "assets/one.txt", "assets/sub", "assets/sub/two.txt", "docs", "docs/notes.md",
        "srv", "srv/bin", "srv/bin/app.wasm", "srv/etc", "srv/etc/conf-a.json", "srv/etc/conf-b.json",
    ])
    assert list(members) == sorted(members), "tar entries are sorted"
    assert members["srv/bin/app.wasm"].mode == 0o700
    assert members["assets/sub"].isdir() and members["srv"].isdir()
    assert api.inspect("df:1")["wasm"]["path"] == "/srv/bin/app.wasm"


@pytest.mark.parametrize(
    ("dockerfile", "line", "fragment"),
    [
        ("FROM scratch\nRUN make\n", 2, "RUN: RUN needs a shell"),
        ("FROM alpine:3\n", 1, "FROM: only FROM scratch is supported"),
        ("FROM scratch\nCOPY app.wasm /\nFROM scratch\n", 3, "multi-stage"),
        ("FROM scratch\nADD https://example.com/x.wasm /\n", 2, "remote URLs are not supported"),
        ("FROM scratch\nCOPY --from=build /x /\n", 2, "--from"),
        ("FROM scratch\nCOPY missing.wasm /\n", 2, "missing.wasm: not found in the build context"),
        ("FROM scratch\nCOPY ../outside.wasm /\n", 2, "outside the build context"),
        ("FROM scratch\nCOPY app.wasm /\nENTRYPOINT /app.wasm\n", 3, "needs /bin/sh"),
        ("FROM scratch\nFROBNICATE x\n", 2, "FROBNICATE: unknown instruction"),
        ("COPY app.wasm /\n", 1, "first instruction must be FROM scratch"),
        ("FROM scratch\nCOPY --chown=app app.wasm /\n", 2, "numeric uid"),
    ],
)
def test_unsupported_dockerfile_input_names_file_line_and_instruction(
    tmp_path: Path, hello_wasm: Path, dockerfile: str, line: int, fragment: str
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(hello_wasm, ctx / "app.wasm")
    (tmp_path / "outside.wasm").write_bytes(b"x")
    (ctx / "Dockerfile").write_text(dockerfile)
    proc = wasmctr("build", str(ctx), "-t", "bad:1", check=False)
    assert_one_line_error(proc, 1, f"{ctx / 'Dockerfile'}:{line}:", fragment)
    assert not list((Store().blobs_dir).iterdir()), "nothing was written"


def test_symlink_escaping_the_context_is_refused(tmp_path: Path, hello_wasm: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.wasm").symlink_to(hello_wasm)
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY app.wasm /\nENTRYPOINT ["/app.wasm"]\n')
    proc = wasmctr("build", str(ctx), "-t", "bad:1", check=False)
    assert_one_line_error(proc, 1, "resolves outside the build context")


def test_entrypoint_must_be_valid_wasm(tmp_path: Path, hello_wasm: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(hello_wasm, ctx / "app.wasm")
    (ctx / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nENTRYPOINT ["/run.sh"]\n')
    assert_one_line_error(wasmctr("build", str(ctx), "-t", "x:1", check=False), 1, "/run.sh is not WebAssembly")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nENTRYPOINT ["/nope.wasm"]\n')
    assert_one_line_error(wasmctr("build", str(ctx), "-t", "x:1", check=False), 1, "/nope.wasm is not a file")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    assert_one_line_error(wasmctr("build", str(ctx), "-t", "x:1", check=False), 1, "no ENTRYPOINT or CMD")
    (ctx / "broken.wasm").write_bytes(hello_wasm.read_bytes()[:-5])
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nENTRYPOINT ["/app.wasm"]\n')
    assert_one_line_error(wasmctr("build", str(ctx), "-t", "x:1", check=False), 1, "broken.wasm")
    assert not list(Store().blobs_dir.iterdir())


def test_invalid_modules_are_refused_before_anything_is_written(tmp_path: Path, hello_wasm: Path) -> None:
    notwasm = tmp_path / "not.wasm"
    notwasm.write_text("hello")
    assert_one_line_error(wasmctr("build", str(notwasm), "-t", "x:1", check=False), 1, "not a WebAssembly binary")
    bad_type = tmp_path / "badtype.wasm"
    # A function whose body returns nothing although its type promises an i32: well-formed, invalid.
    bad_type.write_bytes(bytes.fromhex("0061736d01000000010501600001 7f0302010 00a040102000b".replace(" ", "")))
    assert_one_line_error(wasmctr("build", str(bad_type), "-t", "x:1", check=False), 1, "invalid WebAssembly")
    assert not list(Store().blobs_dir.iterdir())


def test_a_component_is_validated_without_being_compiled_and_precompile_compiles_it_once(
        tmp_path: Path, component_wasm: Path, wasmctr_home: Path) -> None:
    cache = wasmctr_home / "cache" / "compiled"
    shown = wasmctr("build", str(component_wasm), "-t", "comp:1", "--format", "artifact")
    assert "component" in shown.stdout and not list(cache.glob("*.cwasm")), "validated, not compiled"
    _, config = manifest_and_config(Store(), "comp:1")  # the names, read from the component's own sections
    assert config["component"]["imports"] == ["wasi:cli/environment@0.2.0"]
    assert config["component"]["exports"] == ["wasi:cli/run@0.2.0"]
    wasmctr("build", str(component_wasm), "-t", "comp:2", "--precompile")
    (entry,) = cache.glob("*.cwasm")
    inode = entry.stat().st_ino
    assert wasmctr("run", "comp:2").returncode == 0 and entry.stat().st_ino == inode  # the cached code, used
    # what validation still catches, inside a component: a core module that does not type-check, a
    # component section cut short, a nested component's bad header
    good = component_wasm.read_bytes()
    core = good.index(bytes.fromhex("0061736d01000000"))
    bad_body = bytearray(good)
    at = bad_body.index(bytes.fromhex("41000b"), core)  # the core function's `i32.const 0; end`
    bad_body[at:at + 3] = bytes.fromhex("01010b")  # `nop; nop; end`: nothing left for the i32 result
    cases = {"core.wasm": (bytes(bad_body), "invalid WebAssembly"), "cut.wasm": (good[:-7], "truncated")}
    for name, (data, why) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert_one_line_error(wasmctr("build", str(tmp_path / name), "-t", "bad:1", check=False), 1, why)
    assert not list(cache.glob("*.cwasm"))[1:], "nothing compiled"


def test_layers_are_compressed_on_every_core_into_bytes_that_do_not_depend_on_it(tmp_path: Path) -> None:
    """pgzip: blocks deflated on threads join into one standard gzip member; the bytes depend on the
    input only (not the thread count or how it was written); the system's gzip reads and checks it."""
    from wasmctr.layers.pgzip import BLOCK, ParallelGzipWriter

    data = os.urandom(BLOCK) + bytes(BLOCK // 2) + b"tail" * 1000 + os.urandom(BLOCK // 3)
    outputs = []
    for threads, step in ((1, len(data)), (4, 4096), (2, BLOCK + 7)):
        out = io.BytesIO()
        with ParallelGzipWriter(out, 6, threads) as gz:
            for at in range(0, len(data), step):
                gz.write(data[at:at + step])
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1] == outputs[2] and gzip.decompress(outputs[0]) == data
    (tmp_path / "layer.gz").write_bytes(outputs[0])
    assert subprocess.run(["gzip", "-t", str(tmp_path / "layer.gz")]).returncode == 0
    small, before = io.BytesIO(), io.BytesIO()  # one block: what gzip.GzipFile wrote, byte for byte
    with ParallelGzipWriter(small, 6) as gz:
        gz.write(b"small layer")
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=before, mtime=0) as old:
        old.write(b"small layer")
    assert small.getvalue() == before.getvalue()
    empty = io.BytesIO()
    ParallelGzipWriter(empty).close()
    assert gzip.decompress(empty.getvalue()) == b""


def test_artifact_rejects_several_files_and_suggests_compat(tmp_path: Path, hello_wasm: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(hello_wasm, ctx / "app.wasm")
    (ctx / "data.txt").write_text("x")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nENTRYPOINT ["/app.wasm"]\n')
    proc = wasmctr("build", str(ctx), "-t", "x:1", "--format", "artifact", check=False)
    assert_one_line_error(proc, 1, "exactly one wasm file", "--format compat")


def test_large_module_with_data_segment_builds_and_validates(tmp_path: Path) -> None:
    from synth import data_module

    from wasmctr.image import wasm

    path = data_module(tmp_path / "big.wasm", 3 << 20, lambda: os.urandom(1 << 20))
    assert wasm.analyse(path).kind == "module"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with pytest.raises(api.WasmctrError, match="runs past the end"):
        wasm.analyse(path)


def test_build_refuses_a_platform_no_wasm_engine_asks_for(tmp_path: Path) -> None:
    module = tmp_path / "m.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0")
    proc = wasmctr("build", str(module), "-t", "plat:1", "--platform", "foo/bar", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("wasmctr: error: --platform foo/bar: wasm images are built")
    assert wasmctr("build", str(module), "-t", "plat:1", "--platform", "wasi/wasm,linux/arm64").returncode == 0
