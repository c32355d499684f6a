"""The errors a wasmctr user can act on.

Every failure that reaches the CLI is one of these: it carries a one-line message that says what went
wrong and where, and the exit code the CLI returns (2 for a usage error, 1 otherwise). Nothing here
imports the rest of wasmctr (pyproject.toml's `standalone` import contract).

A message that names a setting the caller chose names it through `parameter`, so that each caller reads
it as they wrote it: `str(error)` gives the Python API's parameter name (`format`, `ca_cert`), the CLI
prints `error.spelled(its flags)` (`--format`, `--ca-cert`), and the container path can name its
annotations the same way.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: the container process imports this
if TYPE_CHECKING:
    from collections.abc import Mapping

_MARK = "\0"  # what a parameter is wrapped in: no command-line argument, path or environment variable holds one


def parameter(name: str) -> str:
    """`name` (a parameter of the public API, or `name=value` for a setting such as `network=True`),
    marked in a message for `WasmctrError.spelled`."""
    return f"{_MARK}{name}{_MARK}"


class WasmctrError(Exception):
    """Base of every error wasmctr raises on purpose. Its `args[0]` is the message as raised, its parameters
    still marked (a message passed on to another error, or to another process, keeps them)."""

    exit_code = 1

    def __str__(self) -> str:
        return self.spelled({})

    def spelled(self, spelling: Mapping[str, str]) -> str:
        """The message, each parameter it names as `spelling` maps it (one it does not map: its Python name)."""
        parts = super().__str__().split(_MARK)
        parts[1::2] = [spelling.get(name, name) for name in parts[1::2]]
        return "".join(parts)


class UsageError(WasmctrError):
    """The request itself is wrong: a bad parameter (flag) value, a bad reference."""

    exit_code = 2


class InvalidReference(UsageError):
    """A string that does not follow Docker's `[registry/]repo[:tag|@digest]` grammar."""


class InvalidWasm(WasmctrError):
    """A file that should be WebAssembly is not, or does not validate."""


class DockerfileError(WasmctrError):
    """A Dockerfile uses something wasmctr cannot build (RUN, FROM an image, a missing source...)."""


class BuildError(WasmctrError):
    """The inputs are readable but do not make a valid image (say, a non-wasm entrypoint)."""


class ImageNotFound(WasmctrError):
    """No image in the store answers to the reference."""


class ImageInUse(WasmctrError):
    """An image cannot be removed as asked without taking names the request did not name."""


class StoreError(WasmctrError):
    """The local store cannot be read or written, or its content is damaged."""


class DigestMismatch(StoreError):
    """Content did not hash to the digest it was announced with; it was not stored."""


class LayerError(WasmctrError):
    """A layer is corrupt, or holds what no image may (a device node, a link out of the image)."""


class ArchiveError(WasmctrError):
    """An OCI archive or layout to load is malformed or incomplete."""


class RegistryError(WasmctrError):
    """A registry could not be reached or refused a request; the message names the registry."""


class AuthError(RegistryError):
    """The registry wants credentials we do not have, or rejected the ones we sent."""


class SigningError(WasmctrError):
    """A key, signature policy or registries.d file that cannot be used: unreadable, malformed, of a kind
    wasmctr does not take, or a wrong password."""


class SignatureRefused(WasmctrError):
    """The signature policy does not accept an image: no signature, another key, another digest or identity,
    signatures that could not be read. The message names the image, the requirement and why."""


class ExecutorError(WasmctrError):
    """wasmctr could not start the guest (bad spec, denied import, missing file): `run` exits 125."""

    exit_code = 125

