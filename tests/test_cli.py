"""The command line as a Docker user meets it: the habits it accepts, the commands it answers with why
they do not apply, its suggestions for a typo, and help that agrees with the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, assert_one_line_error, wasmctr

import wasmctr as api


def test_docker_run_flags_rm_and_it_are_accepted(hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "habits:1")
    for flags in (["--rm"], ["-it"], ["-t"], ["--rm", "-i", "--tty"]):
        proc = wasmctr("run", *flags, "habits:1")
        assert proc.stdout == "hello from wat\n", (flags, proc.stderr)


def test_image_ls_and_image_rm_are_images_and_rmi(hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "mgmt:1")
    assert wasmctr("image", "ls").stdout == wasmctr("images").stdout
    assert "Untagged: mgmt:1" in wasmctr("image", "rm", "mgmt:1").stdout
    assert wasmctr("images", "-q").stdout == ""


def test_rmi_of_an_id_with_several_names_needs_force(hello_wasm: Path) -> None:
    wasmctr("build", str(hello_wasm), "-t", "one:1")
    wasmctr("tag", "one:1", "two:1")
    image_id = wasmctr("images", "-q").stdout.strip()
    refused = wasmctr("rmi", image_id, check=False)
    assert_one_line_error(refused, 1, image_id, "2 names", "one:1", "two:1")
    assert sorted(i.name for i in api.images()) == ["one:1", "two:1"]  # nothing went
    forced = wasmctr("rmi", "-f", image_id).stdout
    assert "Untagged: one:1" in forced and "Untagged: two:1" in forced and api.images() == []


def test_the_python_api_lists_images_by_their_full_name(hello_wasm: Path) -> None:
    for name in ("hello:1", "hello:2", "127.0.0.1:5000/hello:1"):
        wasmctr("build", str(hello_wasm), "-t", name) if name == "hello:1" else wasmctr("tag", "hello:1", name)
    assert sorted(i.name for i in api.images()) == ["127.0.0.1:5000/hello:1", "hello:1", "hello:2"]
    wasmctr("build", str(hello_wasm), "-t", "hello:3", "--format", "artifact")
    wasmctr("build", str(hello_wasm), "-t", "hello:3")  # the artifact, named by nothing else now, dangles
    assert [i.name for i in api.images() if i.repository == "<none>"] == [None]


@pytest.mark.parametrize("command", ["ps", "logs", "stop", "kill", "exec", "attach", "start", "create", "rm",
                                     "container"])
def test_docker_commands_about_containers_say_why_they_do_not_apply(command: str) -> None:
    proc = wasmctr(command, "something", "-a", check=False)
    assert_one_line_error(proc, 2, f"wasmctr {command}")
    assert "no daemon" in proc.stderr or "no shell" in proc.stderr
    assert command not in wasmctr("--help").stdout.split("Commands")[1].split()  # not offered as commands


@pytest.mark.parametrize(("args", "suggestion"), [
    (["run", "--netwrok", "host", "x.wasm"], "--network"),
    (["run", "--envfile", "f", "x.wasm"], "--env-file"),
    (["run", "--rmm", "x.wasm"], "--rm"),
    (["run", "--frobnicate", "x.wasm"], None),
    (["run", "--us", "x.wasm"], None),
    (["imagse"], "'images'"),
    (["pul", "x"], "'pull'"),
    (["frobnicate"], None),
])
def test_did_you_mean_is_only_a_near_miss(args: list[str], suggestion: str | None) -> None:
    proc = wasmctr(*args, check=False)
    # docker run's 125 for `run`, which exits with its guest's code; a usage error's 2 otherwise
    assert proc.returncode == (125 if args[0] == "run" else 2) and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip()
    if suggestion is None:
        assert "Did you mean" not in line and "(Possible options" not in line, line
    else:
        assert suggestion in line, line


def _readme_commands() -> set[str]:
    table = (REPO / "README.md").read_text().split("## Commands", 1)[1].lstrip().split("\n\n", 1)[0]
    found = set()
    for row in table.splitlines()[2:]:
        for cell in re.findall(r"`wasmctr ([a-z]+(?: [a-z]+)?)", row.split(" | ")[0]):
            words = cell.split()
            found.add(" ".join(words[:2]) if words[0] == "image" else words[0])
    return found


def test_help_lists_exactly_the_commands_of_the_readme_table() -> None:
    listed = wasmctr("--help").stdout.split("Commands", 1)[1]
    commands = {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split()}
    image = wasmctr("image", "--help").stdout.split("Commands", 1)[1]
    commands |= {"image " + line.split()[0] for line in image.splitlines() if line.startswith("  ") and line.split()}
    commands.discard("image")
    assert commands == _readme_commands()


def test_run_help_agrees_with_the_readme_and_with_run() -> None:
    shown = " ".join(wasmctr("run", "--help").stdout.split())
    assert "HOST:GUEST[:ro|:rw]" in shown
    assert "HOST:GUEST[:ro|:rw]" in (REPO / "docs" / "running.md").read_text().replace("\\|", "|")
    assert "only the digest" not in shown  # run prints no digest
    for flag in ("--rm", "-t, --tty", "-i, --interactive"):
        assert flag in shown


def test_rmi_says_deleted_only_for_an_image_that_is_gone(hello_wasm: Path) -> None:
    single = api.build(hello_wasm, "single:1").digest
    api.build(hello_wasm, "multi:1", platforms="wasi/wasm,linux/amd64")  # its wasi/wasm manifest is single:1's
    assert api.inspect("multi:1", "wasi/wasm")["manifestDigest"] == single
    out = wasmctr("rmi", "single:1").stdout
    assert "Untagged: single:1" in out and f"Deleted: {single}" not in out
    assert wasmctr("run", "multi:1").stdout == "hello from wat\n"
    assert f"Deleted: {api.inspect('multi:1')['digest']}" in wasmctr("rmi", "multi:1").stdout
