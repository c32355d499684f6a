"""Where the local store lives, and its compile cache within it.

A module of its own so that a process that needs only the compile cache (wasmctr-runtime's `create`,
a new interpreter for every container) finds it without importing the store.
"""

from __future__ import annotations

import os
from pathlib import Path


def store_root() -> Path:
    """`$WASMCTR_HOME`, else `$XDG_DATA_HOME/wasmctr`, else `~/.local/share/wasmctr`."""
    if home := os.environ.get("WASMCTR_HOME"):
        return Path(home)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "wasmctr"


def compile_cache_dir(root: Path) -> Path:
    """The compile cache of the store at `root`."""
    return root / "cache" / "compiled"
