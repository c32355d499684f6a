"""A module run under bare wasmtime (wasmtime-py, in process): the peer `wasmctr run` is compared with."""

from __future__ import annotations

from pathlib import Path

import wasmtime


def run_bare(module: Path, args: list[str], env: dict[str, str], root: Path | None, stdout: Path) -> int:
    """Run `module` with `args`, `env` and `root` granted at `/`, as the WASI test suite's wasmtime
    adapter maps a test; its stdout goes to `stdout`. Returns its exit code (134 for a trap)."""
    config = wasmtime.WasiConfig()
    config.argv = [module.name, *args]
    config.env = list(env.items())
    if root is not None:
        config.preopen_dir(str(root), "/")
    config.stdout_file = str(stdout)
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    try:
        instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(module)))
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exc:
        return exc.code
    except (wasmtime.Trap, wasmtime.WasmtimeError):
        return 134
    return 0
