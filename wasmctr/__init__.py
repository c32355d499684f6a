"""wasmctr: WebAssembly containers — build, push, pull and run wasm as OCI images, with no daemon.

The public API (`wasmctr.build`, `wasmctr.run`, ...; see `wasmctr.api`) and `wasmctr.errors` are loaded
on first use, so that the runtime-facing entry points, which import single modules of this package,
do not pay for all of it at every container start.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms): the shims' verbs import this package

__version__ = "0.1.0"

_API = ("BuildResult", "Completed", "GuestFailed", "GuestTimeout", "ImageSummary", "Removed", "build",
        "generate_key", "http_proxy", "images", "inspect", "load", "login", "logout", "prune", "pull",
        "pull_if_missing", "push", "rmi", "run", "save", "sign", "tag", "verify")
_ELSEWHERE = {"Descriptor": "image.model", "Store": "image.store", "WasmctrError": "errors",
              "HttpResponse": "running.http.local", "ProxyClient": "running.http.local"}

__all__ = ["BuildResult", "Completed", "Descriptor", "GuestFailed", "GuestTimeout", "HttpResponse", "ImageSummary",
           "ProxyClient", "Removed", "Store", "WasmctrError", "__version__", "build", "generate_key", "http_proxy",
           "images", "inspect", "load", "login", "logout", "prune", "pull", "pull_if_missing", "push", "rmi", "run",
           "save", "sign", "tag", "verify"]

if TYPE_CHECKING:
    from typing import Any

    from wasmctr.api import (
        BuildResult,
        Completed,
        GuestFailed,
        GuestTimeout,
        ImageSummary,
        Removed,
        build,
        generate_key,
        http_proxy,
        images,
        inspect,
        load,
        login,
        logout,
        prune,
        pull,
        pull_if_missing,
        push,
        rmi,
        run,
        save,
        sign,
        tag,
        verify,
    )
    from wasmctr.errors import WasmctrError
    from wasmctr.image.model import Descriptor
    from wasmctr.image.store import Store
    from wasmctr.running.http.local import HttpResponse, ProxyClient


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(f".{_ELSEWHERE[name]}", __name__), name)
    try:
        return importlib.import_module(f".{name}", __name__)  # submodules: wasmctr.api, wasmctr.wasm...
    except ModuleNotFoundError:
        raise AttributeError(f"module 'wasmctr' has no attribute {name!r}") from None
