"""The lowest version of each dependency pyproject.toml allows, as pip constraints.

    python tests/lower_bounds.py constraints > constraints.txt    # NAME==LOWEST, one per line
    python tests/lower_bounds.py tests                             # the test files to run with them

`./run-tests` installs the package under these constraints into a second venv and runs the tests that
touch each dependency there (`LOWER_BOUND_TESTS`), so every declared lower bound is one CI has run.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# what each dependency is used for, run at its lowest version: typer (every command line, help, errors,
# pipes, interrupts), rich (the progress on a terminal), oras and docker (registry auth and credentials),
# zstandard (zstd layers), wasmtime (running guests), protobuf (the shim's protocol), cryptography, pynacl and
# pyyaml (signing keys, signatures, registries.d)
LOWER_BOUND_TESTS = ["tests/test_dependencies.py", "tests/test_store_archives.py", "tests/test_store_images.py",
                     "tests/test_store_integrity.py", "tests/test_registry.py", "tests/test_run_api.py",
                     "tests/test_run_cli.py", "tests/test_run_limits.py", "tests/test_run_sandbox.py",
                     "tests/test_lying_registry.py", "tests/test_signing.py"]


def lowest() -> dict[str, str]:
    """Each dependency's `>=` version, by name."""
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = {}
    for requirement in declared:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,<]+),<.+", requirement.replace(" ", ""))
        if not match:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no >=LOW,<HIGH range")
        found[match.group(1)] = match.group(2)
    return found


if __name__ == "__main__":
    if sys.argv[1:] == ["constraints"]:
        print(*(f"{name}=={version}" for name, version in lowest().items()), sep="\n")
    elif sys.argv[1:] == ["tests"]:
        print(*LOWER_BOUND_TESTS, sep="\n")
    else:
        raise SystemExit("usage: lower_bounds.py constraints|tests")
