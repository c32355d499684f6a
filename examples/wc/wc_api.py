"""Calling a wasm tool from Python in place of `subprocess.run(["wc", ...])`.

The tool gets only the directory it is granted, read-only; its output comes back as `subprocess.run`
returns it.

    python examples/wc/wc_api.py DIR FILE...
"""

from __future__ import annotations

import sys

import wasmctr


def wc(directory: str, *names: str) -> tuple[int, str]:
    """Run the wc image over files of `directory`; returns (exit code, what it printed)."""
    done = wasmctr.run("wc:1", [f"/data/{name}" for name in names], volumes=[f"{directory}:/data:ro"],
                       memory="32m", timeout=10, capture_output=True, text=True)
    return done.returncode, done.stdout


if __name__ == "__main__":
    code, text = wc(sys.argv[1], *sys.argv[2:])
    print(text, end="")
    sys.exit(code)
