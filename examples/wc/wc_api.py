"""Calling a wasm tool from Python in place of `subprocess.run(["wc", ...])`.

The tool gets only the directory it is granted, read-only; its output comes back in a file.

    python examples/wc/wc_api.py DIR FILE...
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import wasmctr


def wc(directory: str, *names: str) -> tuple[int, str]:
    """Run the wc image over files of `directory`; returns (exit code, what it printed)."""
    with tempfile.NamedTemporaryFile("r", suffix=".out") as out:
        outcome = wasmctr.run("wc:1", [f"/data/{name}" for name in names], volumes=[f"{directory}:/data:ro"],
                              memory="32m", timeout="10s", stdout=out.name)
        return outcome.exit_code, Path(out.name).read_text()


if __name__ == "__main__":
    code, text = wc(sys.argv[1], *sys.argv[2:])
    print(text, end="")
    sys.exit(code)
