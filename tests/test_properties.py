"""Property-based: manifests, configs and tar headers mutated at random, then loaded, inspected and run
through the Python API. Whatever the mutation, the outcome is a correct result or a `WasmctrError` with
a one-line message, never another exception, and a failed load leaves the store as it was. And the
shim's spec scanner against json, on specs spelled at random."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagekit import Entry, tar_bytes, write_layout
from wasmctr_node.specscan import annotation
from wasmctr_node.verbs import GROUP_ANNOTATION as KEY

import wasmctr as api
from wasmctr.errors import WasmctrError
from wasmctr.image.store import Store

# the same 40 examples on every CI run; WASMCTR_PROPERTY_EXAMPLES=N explores N random ones instead
EXAMPLES = os.environ.get("WASMCTR_PROPERTY_EXAMPLES")
SETTINGS = settings(max_examples=int(EXAMPLES or 40), derandomize=EXAMPLES is None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def mutate(doc: Any, data: st.DataObject) -> Any:
    """`doc` with one node (chosen by walking down at random) replaced by any JSON value, or a key dropped."""
    if isinstance(doc, dict) and doc and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        if data.draw(st.integers(0, 4)) == 0:
            return {k: v for k, v in doc.items() if k != key}
        return {**doc, key: mutate(doc[key], data)}
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], mutate(doc[i], data), *doc[i + 1:]]
    return data.draw(JSON)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, hello_wasm: Path) -> dict[str, Any]:
    """A store holding one image, and the documents of a valid layout to mutate."""
    store = tmp_path_factory.mktemp("base-store")
    api.build(hello_wasm, "base:1", store=Store(store))
    layer = tar_bytes([Entry("hello.wasm", data=hello_wasm.read_bytes())])
    layout = tmp_path_factory.mktemp("layout")
    write_layout(layout, "1", [layer])
    index = json.loads((layout / "index.json").read_text())
    manifest_raw = (layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes()
    manifest = json.loads(manifest_raw)
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return {"store": store, "layer": layer, "manifest": manifest, "config": config}


def attempt(base: dict[str, Any], layer: bytes, config: Any, manifest: Any | None) -> None:
    """Load an image made of these documents into a copy of the base store, inspect it and run it."""
    work = Path(tempfile.mkdtemp(prefix="wasmctr-prop-"))
    try:
        store_dir = work / "store"
        shutil.copytree(base["store"], store_dir)
        store = Store(store_dir)
        before = snapshot(store_dir)
        blobs = work / "layout" / "blobs" / "sha256"
        blobs.mkdir(parents=True)

        def put(data: bytes) -> dict[str, Any]:
            (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
            return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

        layer_gz = gzip.compress(layer, mtime=0)
        config_raw = json.dumps(config).encode()
        if manifest is None:
            manifest = {**base["manifest"],
                        "config": {**base["manifest"]["config"], **put(config_raw)},
                        "layers": [{**base["manifest"]["layers"][0], **put(layer_gz)}]}
        else:
            put(config_raw)
            put(layer_gz)
        manifest_raw = json.dumps(manifest).encode()
        entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(manifest_raw),
                 "annotations": {"org.opencontainers.image.ref.name": "1"}}
        (work / "layout" / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        (work / "layout" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        try:
            api.load(work / "layout", "prop:1", store=store)
        except WasmctrError as exc:
            assert "\n" not in str(exc)
            assert snapshot(store_dir) == before, "a failed load changed the store"
            return
        for step in (lambda: api.inspect("prop:1", store=store),
                     lambda: api.run("prop:1", stdout=str(work / "out"), stderr=str(work / "err"), store=store)):
            try:
                step()
            except WasmctrError as exc:
                assert "\n" not in str(exc)
        api.inspect("base:1", store=store)  # the other image is intact whatever happened
    finally:
        shutil.rmtree(work)


@SETTINGS
@given(data=st.data())
def test_mutated_manifests_give_a_result_or_one_clean_error(base: dict[str, Any], data: st.DataObject) -> None:
    config_raw = json.dumps(base["config"]).encode()
    layer_gz = gzip.compress(base["layer"], mtime=0)
    manifest = {**base["manifest"],
                "config": {**base["manifest"]["config"], "digest": "sha256:" + hashlib.sha256(config_raw).hexdigest(),
                           "size": len(config_raw)},
                "layers": [{**base["manifest"]["layers"][0], "digest": "sha256:" + hashlib.sha256(layer_gz).hexdigest(),
                            "size": len(layer_gz)}]}
    attempt(base, base["layer"], base["config"], mutate(manifest, data))


@SETTINGS
@given(data=st.data())
def test_mutated_configs_give_a_result_or_one_clean_error(base: dict[str, Any], data: st.DataObject) -> None:
    attempt(base, base["layer"], mutate(base["config"], data), None)


@SETTINGS
@given(patches=st.lists(st.tuples(st.integers(0, 1535), st.binary(min_size=1, max_size=12)), min_size=1,
                        max_size=4))
def test_mutated_tar_headers_give_a_result_or_one_clean_error(base: dict[str, Any],
                                                               patches: list[tuple[int, bytes]]) -> None:
    layer = bytearray(base["layer"])
    for offset, patch in patches:  # the first three blocks: the PAX header, its data, the member's header
        layer[offset:offset + len(patch)] = patch
    attempt(base, bytes(layer), base["config"], None)


def json_string(text: str, escape: bool, ascii_only: bool) -> str:
    """`text` as a JSON string; with `escape`, its first character written as a \\u escape (json reads the
    same string)."""
    if not escape or not text:
        return json.dumps(text, ensure_ascii=ascii_only)
    first = f"\\u{ord(text[0]):04x}" if ord(text[0]) <= 0xFFFF else json.dumps(text[0])[1:-1]  # a surrogate pair
    return f'"{first}{json.dumps(text[1:], ensure_ascii=ascii_only)[1:]}'


@st.composite
def specs(draw: st.DrawFn) -> tuple[str, bool]:
    """A spec's JSON text, spelled at random, and whether it is plain: no key of its top-level object or of
    its annotations written with an escape, neither `annotations` nor the sandbox id's key twice in its
    object, the id free of escapes. Elsewhere it holds what could mislead a reader of bytes: objects
    before the annotations that have annotations of their own, strings that spell the key, escapes."""
    ascii_only = draw(st.booleans())
    space = st.sampled_from(["", " ", "\n", "\n  ", "\t", "\r\n "])

    def string(text: str) -> str:
        return json_string(text, draw(st.integers(0, 11)) == 0, ascii_only)

    def value(doc: Any) -> str:
        if isinstance(doc, dict):
            return obj([(string(k), value(v)) for k, v in doc.items()])
        if isinstance(doc, list):
            return "[" + ",".join(draw(space) + value(v) for v in doc) + draw(space) + "]"
        return string(doc) if isinstance(doc, str) else json.dumps(doc)

    def obj(members: list[tuple[str, str]]) -> str:
        return "{" + ",".join(f"{draw(space)}{k}{draw(space)}:{draw(space)}{v}" for k, v in members) + draw(space) + "}"

    lures = [f'"{KEY}": "victim"', f'\\"{KEY}\\": "victim"', f"{KEY}\\", f'x"{KEY}', f'x\\"{KEY}', KEY]
    nested = {"annotations": {KEY: "victim"}, KEY: "victim", "env": lures}
    top = [(string("ociVersion"), value("1.0.2")), (string("process"), value({"args": lures, "env": lures, **nested})),
           (string("linux"), value([nested, {"annotations": None}, draw(JSON)]))]
    keys = [KEY] * draw(st.sampled_from([0, 1, 1, 1, 2]))
    keys += draw(st.lists(st.text("abcdefghijklmnopqrstuvwxyz./-", max_size=12), max_size=3))
    if draw(st.integers(0, 2)) == 0:  # keys json writes with escapes, that end in or hold the key's text
        keys += draw(st.lists(st.sampled_from(lures[:-1]) | st.text(max_size=8), min_size=1, max_size=2))
    keys = draw(st.permutations(keys))
    values = st.text("0123456789abcdef", min_size=1, max_size=64) | st.text(max_size=12)
    members = [(k, draw(values)) for k in keys]
    copies = draw(st.sampled_from([0, 1, 1, 1, 2]))
    annotations = [[(string(k), string(v)) for k, v in members] for _ in range(copies)]
    top += [(string("annotations"), obj(a) if a or draw(st.booleans()) else "null") for a in annotations]
    top = draw(st.permutations(top))
    plain = (not any("\\" in k for k, _ in top) and len(annotations) <= 1
             and not any("\\" in k or k == json.dumps(KEY) and "\\" in v for a in annotations for k, v in a)
             and (not annotations or keys.count(KEY) <= 1))
    return draw(space) + obj(top) + draw(space), plain


@settings(SETTINGS, max_examples=int(EXAMPLES or 500))
@given(spec=specs(), junk=st.binary(max_size=8))
def test_the_spec_scanner_reads_the_sandbox_id_as_json_does_or_refuses(spec: tuple[str, bool], junk: bytes) -> None:
    """`start` reads a container's pod from its spec without json (shim/specscan.py says why): it gives
    json's answer, or refuses where json reads what it cannot compare byte for byte; a plain spec it reads
    whatever else the spec spells. Bytes past the file's size (`junk`) are never read."""
    text, plain = spec
    data = text.encode()
    annotations = json.loads(text).get("annotations")
    expected = "" if annotations is None else annotations.get(KEY, "")
    try:
        found = annotation(bytearray(data + junk), len(data), KEY)
    except ValueError as exc:
        assert not plain, f"refused a plain spec ({exc}): {text}"
        assert "\n" not in str(exc)
    else:
        assert found == expected
