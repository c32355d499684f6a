"""Layering: the import contracts in pyproject.toml hold on the source tree, and each one can fail.

`lint-imports` runs on a copy of the repository's two packages laid out under their import names
(`shim/` as `wasmctr_node`, as it installs), so it reads this tree, not whatever site-packages holds. Each
contract is then broken on purpose, one import added to a copy, and must be reported broken by name: a
contract that nothing could break would guard nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = {c["id"]: c["name"] for c in
             tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}

# contract id -> (file of the copied tree, an import that crosses the contract's line and no other's)
BREAKS = {
    "parts": ("wasmctr/image/store.py", "from wasmctr.running import executor"),  # the image model runs guests
    "library": ("wasmctr/image/store.py", "import wasmctr_node.layout"),
    "standalone": ("wasmctr/image/atomic.py", "from wasmctr.image import home"),
    "node-light": ("wasmctr_node/layout.py", "import wasmtime"),
    "node-entry-points": ("wasmctr_node/containerd.py", "from wasmctr_node import runtime"),
    "runtime-cli": ("wasmctr_node/runtime.py", "from wasmctr_node.api import task_pb2"),
}


def source_tree(into: Path) -> Path:
    """The packages as Python imports them, copied from the repository, with the import contracts."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "wasmctr", into / "wasmctr", ignore=ignore)
    shutil.copytree(REPO / "shim", into / "wasmctr_node", ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", into / "pyproject.toml")
    return into


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on `tree` alone: its packages first on the path, its pyproject.toml the config."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "500"}  # one line per contract
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_contract_holds_on_the_source_tree(tmp_path: Path) -> None:
    proc = lint_imports(source_tree(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in proc.stdout, proc.stdout


def test_every_contract_has_an_import_here_that_breaks_it() -> None:
    assert set(BREAKS) == set(CONTRACTS), "a contract added to pyproject.toml needs its break in BREAKS"


@pytest.mark.parametrize("contract", sorted(BREAKS))
def test_an_import_across_a_line_fails_naming_its_contract(tmp_path: Path, contract: str) -> None:
    tree = source_tree(tmp_path)
    module, statement = BREAKS[contract]
    with (tree / module).open("a") as f:
        f.write(f"\n{statement}  # broken on purpose\n")
    proc = lint_imports(tree)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{CONTRACTS[contract]} BROKEN" in proc.stdout, proc.stdout
    assert f"Contracts: {len(CONTRACTS) - 1} kept, 1 broken." in proc.stdout, proc.stdout
