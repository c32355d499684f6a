"""Host names for outgoing requests: `HOST[:PORT]` as an allowlist entry and a guest's authority spell it,
and whether an allowlist names a host. Light (no wasmtime): the CLI parses `--allow-host` with it.

A host is matched by the name the guest gave, as Spin's `allowed_outbound_hosts` matches it, never by an
address it resolves to: `localhost` is not `127.0.0.1`.
"""

from __future__ import annotations

import ipaddress
import re

LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
ANY = "*"

Allowed = tuple[str, int | None]  # a host (or ANY), and its port (None: any port)


def split_host_port(text: str) -> Allowed:
    """`name`, `name:port`, `1.2.3.4:80`, `[::1]:80`: the host (lowercased, without a final dot or the
    brackets of an IPv6 address) and the port, or ValueError."""
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(text)
        port = rest[1:] if rest else ""
        ipaddress.IPv6Address(host)
    elif ":" in text:
        host, _, port = text.rpartition(":")
    host = host.lower().removesuffix(".")
    number = port.isascii() and port.isdigit() and 0 < int(port) <= 65535
    if not _is_host(host) or (port and not number) or text.endswith(":"):
        raise ValueError(text)
    return host, int(port) if port else None


def _is_host(host: str) -> bool:
    if "%" in host:  # an IPv6 zone: ipaddress takes any text after it, line breaks too
        return False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return 0 < len(host) <= 253 and all(LABEL.match(label) and len(label) <= 63 for label in host.split("."))


def allows(allowed: list[Allowed], host: str, port: int) -> bool:
    """Whether an entry names this host (as the guest spelled it) and port."""
    name = host.lower().removesuffix(".")
    return any(h in (ANY, name) and p in (None, port) for h, p in allowed)
