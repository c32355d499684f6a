"""The HTTP server world (`wasi:http/proxy`): a component exporting `wasi:http/incoming-handler` is served,
not run once.

The executor loads, caches and checks the component as it does any other; this world then listens where
the spec's serve options say (`wasmctr run -p`, or `WASMTIME_HTTP_PROXY_SOCKET_ADDR` in a container),
links the guest to the Python host of `wasi:http` (`running/http/`), and runs a fresh instance per
request (or, with `reuse`, an instance per so many requests) until it is stopped; `wasmctr.http_proxy`
links the same host (`http_host`) to call the guest in process. What differs from a command, and so what
this world answers differently:

- the host listens, so a container process needs the socket calls (`listens`) even when the guest was
  granted no network of its own; with the network granted, the guest's outgoing requests may reach the
  hosts the serve options allow (`--allow-host`, `wasmctr.io/allow-hosts`), and no others;
- `--timeout` bounds each request and the memory limit each instance, not the whole run (`lifetime`);
- a signal drains: the requests in flight finish, then the run ends 0 after SIGINT and 143 after SIGTERM,
  as runwasi's tests expect of a served component (`stop`).

A proxy reaches no files: its host defines `wasi:filesystem/preopens` with none (a container's mounts
are left unreachable, as under `wasmtime serve`). Imports the policy denies among those the host defines
are refused, or with `--syscall-policy trap` left undefined, so that the guest traps if it calls them.
Imports the HTTP host (and so wasmtime's component model) only when a proxy is served.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from wasmctr.errors import ExecutorError
from wasmctr.running.http.limits import Limits
from wasmctr.running.http.serving import ServeOptions, check_grant, parse_publish
from wasmctr.running.spec import RunSpec
from wasmctr.running.worlds.program import Component, Program
from wasmctr.running.worlds.world import Guest, World, refused

HANDLER = "wasi:http/incoming-handler@0.2."
# what the host defines; anything else a proxy imports (wasi:sockets, which toolchains import beside the
# proxy world) is left undefined, a trap if called, as a denied import with --syscall-policy trap
PROVIDED = ("wasi:io/", "wasi:cli/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/", "wasi:http/")
DRAIN_MARGIN = 1.0  # seconds past the longest a request in flight may take, before the hard stop


class HttpProxy(World):
    name = "HTTP proxy (wasi:http/proxy component)"
    listens = True

    def matches(self, program: Program, spec: RunSpec) -> bool:
        return isinstance(program, Component) and any(name.startswith(HANDLER) for name in program.exports())

    def check(self, program: Program, spec: RunSpec, denied: dict[str, str]) -> None:
        provided = {name: why for name, why in denied.items() if name.startswith(PROVIDED)}
        if provided and spec.policy.mode == "refuse":
            raise refused(provided)
        options = spec.serve or ServeOptions()
        parse_publish(options.publish)
        check_grant(options, spec.policy.network)
        # imported now, at prepare: a container process runs the guest under Landlock, which no longer
        # lets it read the modules
        from wasmctr.running.http import server  # noqa: F401
        from wasmctr.running.http.guest import versions_of

        try:
            versions_of(program.engine, program.code)  # a wasi:http newer than the host's fails now
        except ValueError as exc:
            raise ExecutorError(str(exc)) from None

    def lifetime(self, spec: RunSpec) -> float | None:
        return None  # the spec's timeout is each request's

    def run(self, guest: Guest) -> int:
        from wasmctr.running.http import server
        from wasmctr.running.http.guest import log

        spec = guest.spec
        options = spec.serve or ServeOptions()
        host, port = parse_publish(options.publish)
        try:
            sock = server.listen(host, port)
        except OSError as exc:
            raise ExecutorError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        workers = options.workers or len(os.sched_getaffinity(0))
        serving = server.Server(sock, lambda: http_host(guest.program, spec, guest.denied), workers,
                                options.access_log)
        guest.state = serving
        for signum in list(guest.signals):  # a signal that came before the server was there
            serving.stop(signum)
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        log(f"serving http://{shown}:{bound[1]}/ ({workers} worker{'s' if workers > 1 else ''})")
        return serving.run()

    def stop(self, guest: Guest, signum: int) -> float | None:
        serving = guest.state
        if serving is not None:
            serving.stop(signum)
        limits = _limits((guest.spec.serve or ServeOptions()).limits, guest.spec)
        return limits.request_timeout + limits.head_timeout + DRAIN_MARGIN


def http_host(program: Program, spec: RunSpec, denied: Iterable[str]) -> Any:
    """The Python host of wasi:http (`running.http.guest.Guest`) linked to the program, with the spec's
    environment, fuel, reuse, outgoing hosts and limits (its timeout and memory limit per request): one per worker
    process, and one per in-process client (`wasmctr.http_proxy`). `denied` is left undefined."""
    from wasmctr.running.http.guest import Guest as HttpGuest

    options = spec.serve or ServeOptions()
    env = [(k, v) for k, _, v in (item.partition("=") for item in spec.env)]
    return HttpGuest(program.engine, program.code, _limits(options.limits, spec), env, set(denied), spec.fuel,
                     check_grant(options, spec.policy.network), options.reuse)


def _limits(base: Limits, spec: RunSpec) -> Limits:
    """The serve options' limits, with the run's timeout and memory limit (if given) per request."""
    return Limits(max_body=base.max_body, max_headers=base.max_headers, max_header_bytes=base.max_header_bytes,
                  max_concurrent=base.max_concurrent, head_timeout=base.head_timeout, idle_timeout=base.idle_timeout,
                  request_timeout=spec.timeout or base.request_timeout, memory=spec.memory_limit or base.memory)

