""".dockerignore as Docker reads and matches it: moby/patternmatcher's own cases (TestMatches, the Go
filepath.Match cases it carries, its folder-exception cases) and its ignorefile reader's, then a build
whose context relies on the differences from a plain glob."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, wasmctr

import wasmctr as api
from wasmctr.building.dockerignore import Matcher, read
from wasmctr.errors import DockerfileError
from wasmctr.image.store import Store

# patternmatcher_test.go TestMatches: (pattern, path, matched exactly, matched through a parent directory)
EXACT, PARENT, NONE = "exact", "parent", "none"
MATCHES = [
    ("**", "file", EXACT), ("**", "file/", EXACT), ("**/", "file", EXACT), ("**/", "file/", EXACT),
    ("**", "/", EXACT), ("**/", "/", EXACT), ("**", "dir/file", EXACT), ("**/", "dir/file", EXACT),
    ("**", "dir/file/", EXACT), ("**/", "dir/file/", EXACT), ("**/**", "dir/file", EXACT),
    ("**/**", "dir/file/", EXACT), ("dir/**", "dir/file", EXACT), ("dir/**", "dir/file/", EXACT),
    ("dir/**", "dir/dir2/file", EXACT), ("dir/**", "dir/dir2/file/", EXACT), ("**/dir", "dir", EXACT),
    ("**/dir", "dir/file", PARENT), ("**/dir2/*", "dir/dir2/file", EXACT), ("**/dir2/*", "dir/dir2/file/", PARENT),
    ("**/dir2/**", "dir/dir2/dir3/file", EXACT), ("**/dir2/**", "dir/dir2/dir3/file/", EXACT),
    ("**file", "file", EXACT), ("**file", "dir/file", EXACT), ("**/file", "dir/file", EXACT),
    ("**file", "dir/dir/file", EXACT), ("**/file", "dir/dir/file", EXACT), ("**/file*", "dir/dir/file", EXACT),
    ("**/file*", "dir/dir/file.txt", EXACT), ("**/file*txt", "dir/dir/file.txt", EXACT),
    ("**/file*.txt", "dir/dir/file.txt", EXACT), ("**/file*.txt*", "dir/dir/file.txt", EXACT),
    ("**/**/*.txt", "dir/dir/file.txt", EXACT), ("**/**/*.txt2", "dir/dir/file.txt", NONE),
    ("**/*.txt", "file.txt", EXACT), ("**/**/*.txt", "file.txt", EXACT), ("a**/*.txt", "a/file.txt", EXACT),
    ("a**/*.txt", "a/dir/file.txt", EXACT), ("a**/*.txt", "a/dir/dir/file.txt", EXACT),
    ("a/*.txt", "a/dir/file.txt", NONE), ("a/*.txt", "a/file.txt", EXACT), ("a/*.txt**", "a/file.txt", EXACT),
    ("a[b-d]e", "ae", NONE), ("a[b-d]e", "ace", EXACT), ("a[b-d]e", "aae", NONE), ("a[^b-d]e", "aze", EXACT),
    (".*", ".foo", EXACT), (".*", "foo", NONE), ("abc.def", "abcdef", NONE), ("abc.def", "abc.def", EXACT),
    ("abc.def", "abcZdef", NONE), ("abc?def", "abcZdef", EXACT), ("abc?def", "abcdef", NONE),
    ("**/foo/bar", "foo/bar", EXACT), ("**/foo/bar", "dir/foo/bar", EXACT), ("**/foo/bar", "dir/dir2/foo/bar", EXACT),
    ("abc/**", "abc", NONE), ("abc/**", "abc/def", EXACT), ("abc/**", "abc/def/ghi", EXACT),
    ("**/.foo", ".foo", EXACT), ("**/.foo", "bar.foo", NONE), ("a(b)c/def", "a(b)c/def", EXACT),
    ("a(b)c/def", "a(b)c/xyz", NONE), ("a.|)$(}+{bc", "a.|)$(}+{bc", EXACT),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", EXACT),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", EXACT),
    ("a\\\\", "a\\", EXACT), ("a\\*b", "a*b", EXACT),
    # the case: a plain glob's `*` crosses directories, Docker's does not
    ("*.md", "readme.md", EXACT), ("*.md", "docs/readme.md", NONE),
]

MULTI = [  # several patterns, the last match wins; an exception on a directory takes back all below it
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["*"], "fileutils.go", True), (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True), (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["docs", "!docs/README.md"], "docs/README.md", False), (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False), (["*.go"], ".", False), ([], "/any/path/there", False),
]

# Go's filepath.Match cases, which patternmatcher carries (TestMatch); None: the pattern is malformed
GO_MATCH = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True), ("a*", "abc", True),
    ("a*", "ab/c", True), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False), ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True), ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a\u263ab", True),
    ("a[^a]b", "a\u263ab", True), ("a???b", "a\u263ab", False), ("a[^a][^a][^a]b", "a\u263ab", False),
    ("[a-\u03b6]*", "\u03b1", True), ("*[a-\u03b6]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True),
    ("[x\\-]", "z", False), ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False),
    ("[]a]", "]", None), ("[-]", "-", None), ("[x-]", "x", None), ("[x-]", "-", None), ("[x-]", "z", None),
    ("[-x]", "x", None), ("[-x]", "-", None), ("[-x]", "a", None), ("\\", "a", None), ("[a-b-c]", "a", None),
    ("[", "a", None), ("[^", "a", None), ("[^bc", "a", None), ("a[", "a", None), ("a[", "ab", None),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "path", "how"), MATCHES)
def test_patternmatcher_cases(pattern: str, path: str, how: str) -> None:
    assert Matcher([pattern]).excludes(path) == (how != NONE)
    if how == PARENT:  # not the path itself (as Go's filepath.Dir cuts it): one of its directories
        assert Matcher([pattern]).excludes(path.rpartition("/")[0])


@pytest.mark.parametrize(("patterns", "path", "excluded"), MULTI)
def test_patternmatcher_multi_pattern_cases(patterns: list[str], path: str, excluded: bool) -> None:
    assert Matcher(patterns).excludes(path) == excluded


@pytest.mark.parametrize(("pattern", "path", "matched"), GO_MATCH)
def test_go_filepath_match_cases(pattern: str, path: str, matched: bool | None) -> None:
    if matched is None:
        with pytest.raises(DockerfileError, match="bad pattern"):
            Matcher([pattern])
    else:
        assert Matcher([pattern]).excludes(path) == matched


def test_a_lone_exclamation_mark_is_refused() -> None:
    with pytest.raises(DockerfileError, match="illegal exclusion pattern"):
        Matcher(["docs", "!"])


def test_the_file_is_read_as_dockers_ignorefile_reader_reads_it(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n"
                                            "! /inverted/abs/path\n!\n! ")
    assert read(tmp_path / ".dockerignore") == ["test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path",
                                                "!", "!"]


def test_a_build_copies_what_docker_would(tmp_path: Path, hello_wasm: Path) -> None:
    ctx = tmp_path / "ctx"
    for name in ("docs/guide/readme.md", "docs/api.md", "notes.md", "build/out.o", "build/keep.txt",
                 "src/cache/x", "src/main.c", "assets/logo.png"):
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(name)
    shutil.copy(hello_wasm, ctx / "app.wasm")
    (ctx / ".dockerignore").write_text("# Docker's rules\n*.md\nbuild\n!build/keep.txt\n**/cache\n/assets/\n")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nENTRYPOINT ["/app.wasm"]\n')
    wasmctr("build", str(ctx), "-t", "ignore:1")
    store = Store()
    manifest = api.inspect("ignore:1")["manifest"]
    with tarfile.open(store.blob_path(manifest["layers"][0]["digest"])) as tar:
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert files == [".dockerignore", "Dockerfile", "app.wasm", "build/keep.txt", "docs/api.md",
                     "docs/guide/readme.md", "src/main.c"]
    (ctx / ".dockerignore").write_text("docs\n[x-]\n")
    assert_one_line_error(wasmctr("build", str(ctx), "-t", "ignore:2", check=False), 1, ".dockerignore", "bad pattern")
