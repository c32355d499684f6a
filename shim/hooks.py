"""OCI hooks for wasmctr-runtime's wasm containers, at the runtime spec's points and with its rules.

Each hook (`path`, `args`, `env`, `timeout` in seconds) runs with the container's state JSON on its
stdin and exactly the environment it lists. `prestart`, `createRuntime` and `createContainer` run
at `create` once the container process exists, `startContainer` at `start` before the guest is
released; if one fails or times out, the operation fails and the container is stopped, as the spec
requires. `poststart` (after `start`) and `poststop` (at `delete`, once the process is gone) failing
only warns. A wasm container has no namespaces of its own, so every hook runs in the runtime's.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: wasmctr-runtime runs per container
if TYPE_CHECKING:
    from typing import Any

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


class HookError(Exception):
    pass


def run(config: dict[str, Any], kind: str, state: dict[str, Any]) -> None:
    """Run the spec's hooks of `kind` in order; HookError at the first that fails."""
    hooks = config.get("hooks") or {}
    entries = (hooks.get(kind) if isinstance(hooks, dict) else None) or []
    if not isinstance(entries, list) or not all(isinstance(hook, dict) for hook in entries):
        raise HookError(f"{kind} hooks must be a list of JSON objects")
    for hook in entries:
        _run_one(hook, kind, state)


def run_warning(config: dict[str, Any], kind: str, state: dict[str, Any]) -> None:
    """For poststart and poststop: a failure is reported on stderr, and the operation goes on."""
    try:
        run(config, kind, state)
    except HookError as exc:
        print(f"wasmctr-runtime: warning: {exc}", file=sys.stderr)


def _run_one(hook: dict[str, Any], kind: str, state: dict[str, Any]) -> None:
    import json  # here, not above: most containers have no hooks, and every verb imports this module
    import subprocess

    path = hook.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise HookError(f"{kind} hook: path {path!r} must be absolute")
    args = [str(a) for a in hook.get("args") or [path]]
    env = dict(str(item).partition("=")[::2] for item in hook.get("env") or [])
    timeout = hook.get("timeout")
    try:
        proc = subprocess.Popen(args, executable=path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/", start_new_session=True)
    except OSError as exc:
        raise HookError(f"{kind} hook {path}: {exc.strerror}") from None
    try:
        _, err = proc.communicate(json.dumps(state).encode(), timeout=timeout if timeout and timeout > 0 else None)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise HookError(f"{kind} hook {path} timed out after {timeout}s") from None
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise HookError(f"{kind} hook {path} exited with status {proc.returncode}"
                        + (f": {detail[-1]}" if detail else ""))
