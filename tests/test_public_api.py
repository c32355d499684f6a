"""The Python API as a Python caller meets it: everything it returns can be imported from `wasmctr`, and its
errors name the parameter the caller passed (`format`, `ca_cert`), while the CLI's one-line error names
the flag its user typed (`--format`, `--ca-cert`) for the same mistake."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line_error, wasmctr

import wasmctr as api
from wasmctr.errors import WasmctrError


def test_everything_in_all_is_importable_and_everything_a_public_function_returns_is_in_all() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    for name in api.__all__:
        function = getattr(api, name)
        if not inspect.isfunction(function):
            continue
        returned = set(re.findall(r"[A-Za-z_]\w*", str(inspect.signature(function).return_annotation)))
        public = returned - {"None", "str", "bool", "int", "list", "dict", "Any"}
        assert public <= set(api.__all__), (name, public - set(api.__all__))


# (function, args, keyword arguments, the same on the command line, its exit code, what Python's message
# says, what the CLI's says); {wasm} is a module that writes with fd_write, {tmp} a scratch directory
CASES = [
    ("build", ("{wasm}", "x:1"), {"format": "nope"}, ["build", "{wasm}", "-t", "x:1", "--format", "nope"], 2,
     "format 'nope': expected compat or artifact", "--format 'nope': expected compat or artifact"),
    ("build", ("{wasm}", "x:1"), {"dockerfile_path": "{tmp}/Dockerfile"},
     ["build", "{wasm}", "-t", "x:1", "-f", "{tmp}/Dockerfile"], 2,
     "dockerfile_path needs a build context directory", "-f needs a build context directory"),
    ("build", ("{wasm}", "x:1"), {"platforms": "foo/bar"}, ["build", "{wasm}", "-t", "x:1", "--platform", "foo/bar"],
     2, "platforms foo/bar: wasm images are built for", "--platform foo/bar: wasm images are built for"),
    ("build", ("{wasm}", "x:1"), {"format": "artifact", "platforms": "linux/amd64"},
     ["build", "{wasm}", "-t", "x:1", "--format", "artifact", "--platform", "linux/amd64"], 2,
     "format artifact is platform-neutral (wasm/wasip1 or wasip2); drop platforms or use format compat",
     "--format artifact is platform-neutral (wasm/wasip1 or wasip2); drop --platform or use --format compat"),
    ("pull", ("127.0.0.1:1/x:1",), {"ca_cert": "{tmp}/none.pem"},
     ["pull", "127.0.0.1:1/x:1", "--ca-cert", "{tmp}/none.pem"], 2,
     "ca_cert {tmp}/none.pem: no such file", "--ca-cert {tmp}/none.pem: no such file"),
    ("save", ("x:1",), {}, ["save", "x:1"], 2,
     "give exactly one of output (an OCI archive) and oci_dir (a layout directory)",
     "give exactly one of -o (an OCI archive) and --oci-dir (a layout directory)"),
    ("run", ("{wasm}",), {"memory": "64"}, ["run", "-m", "64", "{wasm}"], 125,
     "memory 64: the memory limit must be at least 6 MiB", "-m 64: the memory limit must be at least 6 MiB"),
    ("run", ("{wasm}",), {"fuel": 0}, ["run", "--fuel", "0", "{wasm}"], 125,
     "fuel must be a positive number", "--fuel must be a positive number"),
    ("run", ("{wasm}",), {"volumes": ["nocolon"]}, ["run", "-v", "nocolon", "{wasm}"], 125,
     "volumes nocolon: expected HOST_DIR:/GUEST/PATH", "-v nocolon: expected HOST_DIR:/GUEST/PATH"),
    ("run", ("{wasm}",), {"tmpfs": ["scratch"]}, ["run", "--tmpfs", "scratch", "{wasm}"], 125,
     "tmpfs scratch: the path in the guest must be absolute", "--tmpfs scratch: the path in the guest must be"),
    ("run", ("{wasm}",), {"env_files": ["{tmp}/none.env"]}, ["run", "--env-file", "{tmp}/none.env", "{wasm}"], 125,
     "env_files {tmp}/none.env: No such file", "--env-file {tmp}/none.env: No such file"),
    ("run", ("{wasm}",), {"user": "nobody"}, ["run", "--user", "nobody", "{wasm}"], 125,
     "user 'nobody': expected UID[:GID] as numbers", "--user 'nobody': expected UID[:GID] as numbers"),
    ("run", ("{wasm}",), {"devices": ["nosuch"]}, ["run", "--device", "nosuch", "{wasm}"], 125,
     "devices: no such default device: nosuch", "--device: no such default device: nosuch"),
    ("run", ("{wasm}",), {"syscall_policy": "x"}, ["run", "--syscall-policy", "x", "{wasm}"], 125,
     "syscall_policy 'x': expected refuse or trap", "--syscall-policy 'x': expected refuse or trap"),
    ("run", ("{wasm}",), {"deny_wasi": ["nosuchcall"]}, ["run", "--deny-wasi", "nosuchcall", "{wasm}"], 125,
     "deny_wasi 'nosuchcall': names no WASI call", "--deny-wasi 'nosuchcall': names no WASI call"),
    ("run", ("{wasm}",), {"allow_wasi": ["nosuchcall"]}, ["run", "--allow-wasi", "nosuchcall", "{wasm}"], 125,
     "allow_wasi 'nosuchcall': names no WASI call", "--allow-wasi 'nosuchcall': names no WASI call"),
    # raised by the executor, about the policy the caller asked for
    ("run", ("{wasm}",), {"deny_wasi": ["fd_write"]}, ["run", "--deny-wasi", "fd_write", "{wasm}"], 125,
     "fd_write (denied by deny_wasi)", "fd_write (denied by --deny-wasi)"),
    ("run", ("{wasm}",), {"network": True}, ["run", "--network", "host", "{wasm}"], 125,
     "network=True: WASI preview 1 modules have no call that creates a socket",
     "--network host: WASI preview 1 modules have no call that creates a socket"),
]


def _fill(value: Any, wasm: Path, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.format(wasm=wasm, tmp=tmp)
    if isinstance(value, list | tuple):
        return type(value)(_fill(v, wasm, tmp) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, wasm, tmp) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("function", "args", "kwargs", "argv", "code", "python_says", "cli_says"), CASES,
                         ids=[f"{c[0]}-{'-'.join(c[2]) or 'none'}" for c in CASES])
def test_an_error_names_the_parameter_to_python_and_the_flag_on_the_command_line(
        function: str, args: tuple[str, ...], kwargs: dict[str, Any], argv: list[str], code: int,
        python_says: str, cli_says: str, hello_wasm: Path, tmp_path: Path) -> None:
    with pytest.raises(WasmctrError) as raised:
        getattr(api, function)(*_fill(args, hello_wasm, tmp_path), **_fill(kwargs, hello_wasm, tmp_path))
    message = str(raised.value)
    assert _fill(python_says, hello_wasm, tmp_path) in message, message
    assert "--" not in message and "\0" not in message, message
    proc = wasmctr(*_fill(argv, hello_wasm, tmp_path), check=False)
    assert_one_line_error(proc, code, _fill(cli_says, hello_wasm, tmp_path))
    assert "\0" not in proc.stderr


def test_a_guest_refused_in_a_child_interpreter_is_named_for_the_python_caller(hello_wasm: Path) -> None:
    """With a timeout the guest is prepared in a child interpreter (`isolated.py`): the refusal crosses
    the process boundary with its parameters still marked, and reaches the caller in the caller's words."""
    with pytest.raises(WasmctrError) as raised:
        api.run(str(hello_wasm), deny_wasi=["fd_write"], timeout=30)
    assert "fd_write (denied by deny_wasi)" in str(raised.value)
    assert raised.value.spelled({"deny_wasi": "--deny-wasi"}).endswith("(denied by --deny-wasi)")


def test_a_failed_pull_before_a_run_keeps_naming_the_parameter(tmp_path: Path) -> None:
    """`pull_if_missing` passes a pull's error on inside its own: the parameter stays a parameter."""
    with pytest.raises(WasmctrError) as raised:
        api.pull_if_missing("127.0.0.1:1/x:1", ca_cert=str(tmp_path / "none.pem"))
    assert str(raised.value) == (f"no image 127.0.0.1:1/x:1 in the local store, and pulling it failed: "
                                 f"ca_cert {tmp_path / 'none.pem'}: no such file")
    assert "--ca-cert " in raised.value.spelled({"ca_cert": "--ca-cert"})


def test_a_bad_annotation_is_named_by_its_annotation(hello_wasm: Path, tmp_path: Path) -> None:
    """The container path reads the same settings from `wasmctr.io/*` annotations, and names those."""
    from wasmctr.running.ocispec import spec_from_bundle

    (tmp_path / "rootfs").mkdir()
    shutil.copy(hello_wasm, tmp_path / "rootfs" / "app.wasm")
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["/app.wasm"], "cwd": "/"},
              "annotations": {"wasmctr.io/deny-wasi": "nosuchcall"}}
    with pytest.raises(WasmctrError) as raised:
        spec_from_bundle(tmp_path, config)
    assert str(raised.value).startswith("bad wasmctr annotation: wasmctr.io/deny-wasi 'nosuchcall': names no WASI")
