"""The run spec: what one guest may reach (files, environment, arguments, network, memory, time), and
nothing else.

Its own module so that the executor and the worlds it runs (`worlds/`) share it, the worlds without
importing the executor. Imports the policy, the serve options, the engine settings and the record helper only.
"""

from __future__ import annotations

from pathlib import Path

from wasmctr.record import field, record
from wasmctr.running import policy as policies
from wasmctr.running.engine import DEFAULT as DEFAULT_ENGINE
from wasmctr.running.engine import EngineSettings
from wasmctr.running.http.serving import ServeOptions


@record(frozen=True)
class Mount:
    """A host directory granted to the guest at `guest` (read-only if `readonly`)."""

    host: Path
    guest: str
    readonly: bool = False


@record
class RunSpec:
    wasm: Path
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    rootfs: Path | None = None
    mounts: list[Mount] = field(default_factory=list)
    memory_limit: int | None = None
    timeout: float | None = None
    fuel: int | None = None
    policy: policies.Policy = field(default_factory=policies.Policy)
    stdin: bool | str = False  # closed, inherited, or a file/FIFO path
    stdout: str | None = None  # inherited, or a path (a file, or a pipe's /proc/self/fd path)
    stderr: str | None = None
    wasm_digest: str | None = None  # what names the wasm's content for the compile cache (else: its sha256)
    function: str | None = None  # an export to call instead of the command's entry (`path#func`)
    devices: Path | None = None  # a directory of default device nodes, preopened at /dev (`devices.py`)
    serve: ServeOptions | None = None  # where and how a server world listens (None: its defaults)
    engine: EngineSettings = DEFAULT_ENGINE  # wasm features and optimisation level (`engine.py`)
