"""The C proxy guest (tests/guests/http/tiny.c) built into a component per wasi:http WIT version; for the
HTTP tests and bench/http.py (which is why it imports no `http`: the bench's own name shadows it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

GUESTS = Path(__file__).resolve().parent / "guests" / "http"

TINY_WITS = {"0.2.0": GUESTS / "wit", "0.2.3": GUESTS / "wit-0.2.3", "0.2.8": GUESTS / "wit-0.2.8"}
NEWER = "0.2.99"  # past the host's 0.2.9: the 0.2.8 WIT with its packages renumbered


def build_tiny(out: Path) -> dict[str, Path]:
    """tiny.c as one core module (no libc: zig's freestanding wasm32, well under a second), then a component
    for each WIT version through `wasm-tools component embed` and `component new`; with NEWER too."""
    core = out / "tiny-core.wasm"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=wasm32-freestanding", "-O2", "-s", "-nostdlib",
                    "-mbulk-memory", "-Wl,--no-entry", "-o", str(core), str(GUESTS / "tiny.c")], check=True)
    newer = out / f"wit-{NEWER}"
    shutil.copytree(TINY_WITS["0.2.8"], newer)
    for wit in newer.rglob("*.wit"):
        wit.write_text(wit.read_text().replace("@0.2.8", f"@{NEWER}"))
    tool = str(Path(sys.executable).parent / "wasm-tools")
    built = {}
    for version, wit in {**TINY_WITS, NEWER: newer}.items():
        embedded, built[version] = out / f"tiny-{version}.core.wasm", out / f"tiny-{version}.wasm"
        subprocess.run([tool, "component", "embed", str(wit), "-w", "proxy", str(core), "-o", str(embedded)],
                       check=True)
        subprocess.run([tool, "component", "new", str(embedded), "-o", str(built[version])], check=True)
    return built
