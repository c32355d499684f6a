"""How a wasi:http/proxy component is served: where to listen (Docker's `-p`), the limits, the workers,
the hosts its outgoing requests may reach.

A run spec carries these (`RunSpec.serve`) to the proxy world (`worlds/http_proxy.py`), from `wasmctr run`'s
flags or, in a container, from `WASMTIME_HTTP_PROXY_SOCKET_ADDR` and the pod's annotations. Light: the
spec imports it for every run; the server and wasmtime are the world's imports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from wasmctr.errors import UsageError, parameter
from wasmctr.record import field, record

from .hosts import ANY, Allowed, split_host_port
from .limits import Limits

DEFAULT_ADDRESS = ("127.0.0.1", 8080)  # without -p: loopback only, as Docker publishes nothing by default


@record(frozen=True)
class ServeOptions:
    publish: str | None = None  # [IP:]HOSTPORT[:PORT]
    workers: int | None = None  # None: one per CPU this process may run on
    access_log: bool = False
    limits: Limits = field(default_factory=Limits)
    allow_hosts: tuple[str, ...] = ()  # HOST[:PORT] or `*`, each maybe a comma-separated list; needs the network
    reuse: int = 1  # requests one instance may serve in turn (1: a fresh instance per request)


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


def options(publish: str | None = None, workers: int | str | None = None, access_log: bool = False,
            max_body: str = "16m", max_headers: int | str = 100, max_header_bytes: str = "64k",
            max_concurrent: int | str = 64, header_timeout: str = "10s", reuse: int | str = 1,
            allow_hosts: tuple[str, ...] | list[str] = ()) -> ServeOptions:
    """Serve options from their spelling as flags or annotations take them (sizes `16m`, durations `10s`),
    each checked, so a bad one fails before anything is pulled, loaded or started."""
    from wasmctr.running.units import parse_duration, parse_size

    parse_publish(publish)
    limits = Limits(max_body=_checked("max_body", max_body, parse_size),
                    max_headers=_checked("max_headers", max_headers, _count),
                    max_header_bytes=_checked("max_header_bytes", max_header_bytes, parse_size),
                    max_concurrent=_checked("max_concurrent", max_concurrent, _count),
                    head_timeout=_checked("header_timeout", header_timeout, parse_duration))
    parse_allow_hosts(allow_hosts)
    return ServeOptions(publish=publish, workers=None if workers is None else _checked("workers", workers, _count),
                        access_log=access_log, limits=limits, allow_hosts=tuple(allow_hosts),
                        reuse=_checked("reuse", reuse, _count))


def parse_allow_hosts(values: tuple[str, ...] | list[str]) -> list[Allowed]:
    """The hosts outgoing requests may reach, from `--allow-host` values or the annotation
    `wasmctr.io/allow-hosts` (`a.example:80,b.example`): each HOST (any port), HOST:PORT, [IPv6]:PORT, or
    `*` (any host, any port)."""
    allowed: list[Allowed] = []
    for item in (part.strip() for value in values for part in value.split(",")):
        try:
            allowed.append((ANY, None) if item == ANY else split_host_port(item))
        except ValueError:
            raise UsageError(f"{parameter('allow_hosts')} {item!r}: expected HOST, HOST:PORT or *") from None
    return allowed


def check_grant(options: ServeOptions, network: bool) -> list[Allowed]:
    """The allowlist, which only a granted network makes anything of (else a UsageError)."""
    allowed = parse_allow_hosts(options.allow_hosts)
    if allowed and not network:
        raise UsageError(f"{parameter('allow_hosts')} needs {parameter('network=True')}: without the network "
                         "no outgoing request is made")
    return allowed


def _count(value: int | str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _checked(name: str, value: Any, parse: Callable[[Any], Any]) -> Any:
    try:
        return parse(value)
    except (ValueError, UsageError) as exc:
        why = str(exc) if isinstance(exc, UsageError) else f"{value!r}: expected a whole number from 1"
        raise UsageError(f"{parameter(name)}: {why}") from None
