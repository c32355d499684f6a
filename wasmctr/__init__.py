"""wasmctr: WebAssembly containers — build, push, pull and run wasm as OCI images, with no daemon.

The public API is re-exported here; see `wasmctr.api` for the functions and `wasmctr.errors` for the
exceptions they raise.
"""

from .api import BuildResult, ImageSummary, build, images, inspect, load, login, logout, pull, push, rmi, run, save, tag
from .errors import WasmctrError
from .store import Store

__version__ = "0.1.0"

__all__ = ["BuildResult", "ImageSummary", "Store", "WasmctrError", "build", "images", "inspect", "load",
           "login", "logout", "pull", "push", "rmi", "run", "save", "tag", "__version__"]
