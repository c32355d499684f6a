"""`wasmctr run` of a wasi:http/proxy component: where to listen (Docker's `-p`), the limits, the workers.

The one entry from the rest of wasmctr: `api.run` hands a prepared run spec here when the guest exports
`wasi:http/incoming-handler`. Imports the server (and so wasmtime) only when a component is served.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from wasmctr.errors import ExecutorError, UsageError, WasmctrError, parameter
from wasmctr.image import wasm
from wasmctr.record import field, record

from .limits import Limits

DEFAULT_ADDRESS = ("127.0.0.1", 8080)  # without -p: loopback only, as Docker publishes nothing by default


@record(frozen=True)
class ServeOptions:
    publish: str | None = None  # [IP:]HOSTPORT[:PORT]
    workers: int | None = None  # None: one per CPU this process may run on
    access_log: bool = False
    limits: Limits = field(default_factory=Limits)


def is_proxy(runner: Any, spec: Any) -> bool:
    """Whether the guest is a component exporting wasi:http/incoming-handler. A module is told by its first
    bytes; a component's exports are read from its loaded code (cached, and loaded for the run anyway),
    not by validating the file again at every run (~120 ms for an 18 MB component). A guest that cannot
    be loaded is not a proxy: the run then says why it cannot be loaded."""
    try:
        with open(spec.wasm, "rb") as f:
            if wasm.sniff(f.read(8)) != "component":
                return False
        engine, code = runner.load(spec.wasm, spec.wasm_digest)
    except (OSError, WasmctrError):
        return False
    return any(name.startswith("wasi:http/incoming-handler@") for name in code.type.exports(engine))


def parse_publish(text: str | None) -> tuple[str, int]:
    """`8080`, `127.0.0.1:8080`, `8080:80`, `0.0.0.0:8080:80`, `[::1]:8080`: the host side to listen on.
    The container side (PORT), which Docker's syntax has, names nothing for a component: it is checked
    for a port number and otherwise unused."""
    if text is None:
        return DEFAULT_ADDRESS
    host = "0.0.0.0"
    rest = text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise UsageError(f"{parameter('publish')} {text!r}: expected [IP:]HOSTPORT[:PORT]")
        host, rest = text[1:end], text[end + 2:]
    else:
        parts = text.split(":")
        if len(parts) == 3 or (len(parts) == 2 and "." in parts[0]):
            host, rest = parts[0], ":".join(parts[1:])
    ports = rest.split(":")
    try:
        ipaddress.ip_address(host)
        numbers = [int(p) for p in ports]
    except ValueError:
        raise UsageError(f"{parameter('publish')} {text!r}: expected [IP:]HOSTPORT[:PORT] with an IP address and "
                         "port numbers") from None
    if not 1 <= len(numbers) <= 2 or not all(0 <= n <= 65535 for n in numbers):
        raise UsageError(f"{parameter('publish')} {text!r}: expected [IP:]HOSTPORT[:PORT] with ports from 0 to 65535")
    return host, numbers[0]


def serve(runner: Any, spec: Any, options: ServeOptions) -> Any:
    """Serve the spec's component until SIGINT (exit 0) or SIGTERM (143); returns the executor's Outcome."""
    from wasmctr.running.executor import Outcome

    from . import server
    from .guest import Guest, handler_export, log, versions_of

    if spec.mounts or spec.policy.network:
        raise ExecutorError("a wasi:http proxy component gets no files and no network of its own: "
                            "drop -v, --tmpfs and --network")
    base = options.limits
    limits = Limits(max_body=base.max_body, max_headers=base.max_headers, max_header_bytes=base.max_header_bytes,
                    max_concurrent=base.max_concurrent, head_timeout=base.head_timeout,
                    idle_timeout=base.idle_timeout, request_timeout=spec.timeout or base.request_timeout,
                    memory=spec.memory_limit or base.memory)
    engine, code = runner.load(spec.wasm, spec.wasm_digest)
    try:
        handler_export(engine, code)
        versions_of(engine, code)
    except ValueError as exc:
        raise ExecutorError(str(exc)) from None
    env = [(k, v) for k, _, v in (item.partition("=") for item in spec.env)]
    host, port = parse_publish(options.publish)
    try:
        sock = server.listen(host, port)
    except OSError as exc:
        raise ExecutorError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    workers = options.workers or len(os.sched_getaffinity(0))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    log(f"serving http://{shown}:{bound[1]}/ ({workers} worker{'s' if workers > 1 else ''})")
    code_ = server.serve(sock, lambda: Guest(engine, code, limits, env), workers, options.access_log)
    return Outcome(code_, "exit" if code_ == 0 else "signal")
