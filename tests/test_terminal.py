"""`wasmctr run` on a terminal, as a user sees it: a pseudo-terminal is its stdin, stdout and stderr and
its controlling terminal, so Ctrl-C typed there reaches it as it would from a shell. What was written to
the screen, escapes included, is what the tests read."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wasmctr
from liar import LyingRegistry, image

EXE = str(Path(sys.executable).parent / "wasmctr")
HIDE_CURSOR, SHOW_CURSOR, ERASE_LINE = "\x1b[?25l", "\x1b[?25h", "\x1b[2K"


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def on_terminal(args: list[str], env: dict[str, str], when: tuple[str, Callable[[int, int], None]] | None = None,
                ) -> tuple[int, str]:
    """Run wasmctr with a new pseudo-terminal as its terminal; once the screen shows `when[0]`, call
    `when[1]` with the terminal's controller (to type at it) and wasmctr's pid. Returns the exit code and
    the screen."""
    controller, terminal = os.openpty()
    proc = subprocess.Popen([EXE, *args], stdin=terminal, stdout=terminal, stderr=terminal,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm", **env},
                            preexec_fn=_controlling_terminal)
    os.close(terminal)
    screen = b""
    with contextlib.suppress(OSError):  # EIO once every holder of the terminal has closed it
        while True:
            ready, _, _ = select.select([controller], [], [], 60)
            if not ready:
                proc.kill()
                break
            chunk = os.read(controller, 65536)
            if not chunk:
                break
            screen += chunk
            if when is not None and when[0].encode() in screen:
                when[1](controller, proc.pid)
                when = None
    os.close(controller)
    return proc.wait(timeout=60), screen.decode(errors="replace")


def assert_terminal_restored(screen: str) -> None:
    """Whatever was drawn, the cursor is visible again at the end."""
    if HIDE_CURSOR in screen:
        assert screen.rindex(SHOW_CURSOR) > screen.rindex(HIDE_CURSOR), screen


@pytest.fixture
def prompt_image(hostile_wasm: Path, wasmctr_home: Path) -> str:
    wasmctr("build", str(hostile_wasm), "-t", "prompt:1")
    return "prompt:1"


def test_a_partial_line_the_guest_prints_survives_on_the_terminal(prompt_image: str, wasmctr_home: Path) -> None:
    code, screen = on_terminal(["run", prompt_image, "prompt", "1"], {"WASMCTR_HOME": str(wasmctr_home)})
    assert code == 0, screen
    assert "Working... done" in screen, repr(screen)
    assert ERASE_LINE not in screen and HIDE_CURSOR not in screen, repr(screen)  # nothing to draw: no display


def test_the_pull_display_ends_before_the_guest_writes(plain_registry, hostile_wasm: Path, tmp_path: Path) -> None:
    ref = f"{plain_registry.host}/prompt:1"
    wasmctr("build", str(hostile_wasm), "-t", ref, "--push", "-q", env={"WASMCTR_HOME": str(tmp_path / "src")})
    code, screen = on_terminal(["run", ref, "prompt", "1"], {"WASMCTR_HOME": str(tmp_path / "fresh")})
    assert code == 0, screen
    assert " pulled" in screen and HIDE_CURSOR in screen  # the bars were drawn, by rich
    guest = screen.index("Working... ")
    assert screen[guest:].replace("\r\n", "\n").startswith("Working... done\n"), repr(screen[guest:])
    assert screen.rindex(SHOW_CURSOR) < guest and ERASE_LINE not in screen[guest:], repr(screen)


def test_ctrl_c_typed_at_the_terminal_stops_the_guest_and_leaves_the_terminal_usable(
        prompt_image: str, wasmctr_home: Path) -> None:
    code, screen = on_terminal(["run", prompt_image, "prompt", "60"], {"WASMCTR_HOME": str(wasmctr_home)},
                               when=("Working... ", lambda controller, _pid: os.write(controller, b"\x03")))
    assert code == 130, screen
    assert_terminal_restored(screen)


def test_sigterm_while_the_bars_are_drawn_ends_the_pull_and_restores_the_cursor(tmp_path: Path) -> None:
    server = LyingRegistry(*image(tmp_path, os.urandom(4 << 20)))
    server.behaviour = "stall-blob"  # half of the layer, then nothing: the bars stay up
    try:
        code, screen = on_terminal(["pull", f"{server.host}/img:1"], {"WASMCTR_HOME": str(tmp_path / "store")},
                                   when=(HIDE_CURSOR, lambda _controller, pid: os.kill(pid, 15)))
    finally:
        server.stop()
    assert code == 143 and "terminated" in screen, screen
    assert_terminal_restored(screen)


def test_a_timeout_and_an_error_leave_the_terminal_usable(prompt_image: str, wasmctr_home: Path) -> None:
    env = {"WASMCTR_HOME": str(wasmctr_home)}
    code, screen = on_terminal(["run", "--timeout", "1s", prompt_image, "prompt", "60"], env)
    assert code != 0 and "Working... " in screen and "timeout" in screen, screen
    assert_terminal_restored(screen)
    code, screen = on_terminal(["run", "127.0.0.1:1/nothing:1"], env)
    assert code == 125 and "pulling it failed" in screen, screen
    assert_terminal_restored(screen)
    assert "Traceback" not in screen
