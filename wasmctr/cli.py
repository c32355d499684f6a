"""The `wasmctr` command line: a thin typer layer over `wasmctr.api`.

Each command parses its flags, calls one API function and prints the result. Every failure becomes one
line on stderr (`wasmctr: error: ...`) and an exit code: 2 for usage errors, 1 otherwise; no traceback.

Annotations are real objects here, not strings (no `from __future__ import annotations`): typer reads
every command's signature at each start, and evaluating string annotations costs ~10 ms.
"""

import contextlib
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand

from wasmctr import __version__, api, console, diagnostics
from wasmctr.errors import UsageError, WasmctrError
from wasmctr.image import atomic

# each parameter of the Python API an error can name, as a CLI user types it (`WasmctrError.spelled`)
_FLAGS = {
    "format": "--format", "dockerfile_path": "-f", "platform": "--platform", "platforms": "--platform",
    "tag": "--tag", "output": "-o", "oci_dir": "--oci-dir", "ca_cert": "--ca-cert", "insecure=True": "--insecure",
    "all_platforms=True": "--all-platforms", "devices": "--device", "user": "--user", "memory": "-m",
    "fuel": "--fuel", "env_files": "--env-file", "volumes": "-v", "tmpfs": "--tmpfs",
    "syscall_policy": "--syscall-policy", "deny_wasi": "--deny-wasi", "allow_wasi": "--allow-wasi",
    "network=True": "--network host", "publish": "-p", "bin_dir": "--bin-dir",
    "containerd_version": "--containerd-version", "workers": "--workers",
    "max_body": "--max-body", "max_headers": "--max-headers", "max_header_bytes": "--max-header-bytes",
    "max_concurrent": "--max-concurrent", "header_timeout": "--header-timeout", "reuse": "--reuse",
    "signature_policy": "--signature-policy", "registries_d": "--registries.d", "prefix": "--output-key-prefix",
    "allow_hosts": "--allow-host", "timeout": "--timeout",
    "wasm_features": "--wasm-features", "opt_level": "--opt-level", "labels": "--label",
}

# `run` exits with the guest's code, so its own failures, bad flags included, use docker run's 125 rather
# than 2, which a guest may well return
_EXIT_RUN_FAILED = 125

Insecure = Annotated[bool, typer.Option("--insecure", help="Allow plain HTTP and unverified TLS (loopback "
                                                           "registries are always allowed plain HTTP).")]
CaCert = Annotated[str | None, typer.Option("--ca-cert", metavar="FILE",
                                            help="CA bundle to verify the registry's TLS certificate (default: "
                                                 "SSL_CERT_FILE or the system's).")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress output; only the digest.")]
RunQuiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress output while pulling a missing image.")]
SignaturePolicy = Annotated[str | None, typer.Option(
    "--signature-policy", metavar="FILE", help="containers-policy.json(5) to check signatures by (default: "
    "$WASMCTR_SIGNATURE_POLICY, ~/.config/containers/policy.json, /etc/containers/policy.json).")]
RegistriesD = Annotated[str | None, typer.Option(
    "--registries.d", metavar="DIR", help="containers-registries.d(5) directory: where sigstore attachments "
    "are read (default ~/.config/containers/registries.d, /etc/containers/registries.d).")]

class _Command(TyperCommand):
    """Usage lines as Docker's read (`wasmctr run [OPTIONS] IMAGE|FILE.wasm [ARG...]`): each argument by
    its metavar, where typer would write `{target}`."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [p.metavar or (p.name or "").upper() for p in self.get_params(ctx)
                         if p.param_type_name == "argument"]


# the base of the errors typer raises for a bad command line: click's ClickException, which typer exports
# under no name stable across the versions we take (typer.TyperException from 0.28; click's before)
_COMMAND_LINE_ERROR: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    name="wasmctr",
    help="WebAssembly containers: build, push, pull and run wasm as OCI images, with no daemon.\n\n"
         "Example: wasmctr build app.wasm -t hello:1 && wasmctr images",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            engine = version("wasmtime")
        except PackageNotFoundError:
            engine = "not installed"
        _echo(f"wasmctr {__version__} (wasmtime {engine}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """WebAssembly containers: build, push, pull and run wasm as OCI images, with no daemon."""


@app.command(cls=_Command, short_help="Build an image from wasm or a Dockerfile")
def build(
    source: Annotated[str, typer.Argument(metavar="PATH",
                                          help="A .wasm file, or a build context directory with a Dockerfile.")],
    tag: Annotated[str, typer.Option("-t", "--tag", metavar="NAME[:TAG]", help="Name of the image, e.g. hello:1.")],
    file: Annotated[str | None, typer.Option("-f", "--file", metavar="FILE",
                                             help="Dockerfile (default CONTEXT/Dockerfile).")] = None,
    build_arg: Annotated[list[str] | None, typer.Option("--build-arg", metavar="KEY=VALUE",
                                                        help="ARG value, K=V.")] = None,
    format: Annotated[str, typer.Option("--format", metavar="compat|artifact", show_default=False,
                                        help="compat (OCI image, rootfs layer) or artifact "
                                             "(CNCF wasm artifact).")] = "compat",
    platform: Annotated[str, typer.Option("--platform", metavar="OS/ARCH[,...]", show_default=False,
                                          help="wasi/wasm (default), linux/amd64, linux/arm64, "
                                               "or a comma-separated list for an index.")] = "wasi/wasm",
    author: Annotated[str | None, typer.Option("--author", metavar="NAME",
                                               help="Author recorded in an artifact's config.")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the image to its registry after building.")] = False,
    precompile: Annotated[bool, typer.Option("--precompile", help="Compile the program into the cache now, so "
                                                                  "the first run starts warm.")] = False,
    sign: Annotated[str | None, typer.Option("--sign", metavar="KEY", help="Sign the pushed image with this cosign "
                                                                           "private key (needs --push).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", metavar="KEY=VALUE",
                                                    help="Set a label (over the Dockerfile's LABEL), e.g. "
                                                         "io.wasmctr.wasm-features=simd,-threads.")] = None,
    insecure: Insecure = False,
    ca_cert: CaCert = None,
    quiet: Quiet = False,
) -> None:
    """Build an image from a .wasm file or a Dockerfile, daemonless and reproducibly.

    Example: wasmctr build examples/hello -t hello:1 --platform wasi/wasm,linux/amd64
    """
    if sign is not None and not push:
        raise UsageError("--sign needs --push: the signature is attached to the image on its registry")
    password = _password(confirm=False) if sign is not None else ""
    args = {}
    for item in build_arg or []:
        key, eq, value = item.partition("=")
        if not key:
            raise UsageError(f"--build-arg {item!r}: expected KEY=VALUE")
        args[key] = value if eq else os.environ.get(key, "")
    labels = {}
    for item in label or []:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    result = api.build(source, tag, dockerfile_path=file, build_args=args, format=format,  # type: ignore[arg-type]
                       platforms=platform, author=author, precompile=precompile, labels=labels)
    if not quiet:
        _echo(f"built {result.name} ({result.format}, {', '.join(result.platforms)}, "
              f"{result.kind} {result.program})", err=push)
    if push:
        with console.progress(quiet) as progress:
            api.push(result.name, insecure=insecure, ca_cert=ca_cert, progress=progress)
    if sign is not None:
        for digest in api.sign(result.name, sign, password, insecure=insecure, ca_cert=ca_cert):
            _echo(f"signed {result.name} ({digest})", err=True)
    _echo(result.digest)


@app.command(cls=_Command, short_help="Run a wasm image or file in the WASI sandbox",
             context_settings={"allow_interspersed_args": False})
def run(
    target: Annotated[str, typer.Argument(metavar="IMAGE|FILE.wasm",
                                          help="Image (pulled if missing) or a .wasm file.")],
    args: Annotated[list[str] | None, typer.Argument(metavar="[ARG...]", show_default=False,
                                                     help="Arguments; they replace the image's Cmd.")] = None,
    interactive: Annotated[bool, typer.Option("-i", "--interactive", help="Pass our stdin to the guest "
                                                                          "(closed otherwise).")] = False,
    tty: Annotated[bool, typer.Option("-t", "--tty", help="Accepted as docker's: the guest's output is "
                                                          "wasmctr's own, a terminal if wasmctr runs on one.")] = False,
    remove: Annotated[bool, typer.Option("--rm", help="Accepted as docker's: a run never leaves a container "
                                                      "behind.")] = False,
    env: Annotated[list[str] | None, typer.Option("-e", "--env", metavar="KEY=VALUE",
                                                  help="Set a variable in the guest (KEY alone copies ours).")] = None,
    env_file: Annotated[list[str] | None, typer.Option("--env-file", metavar="FILE", help="File of K=V lines.")] = None,
    volume: Annotated[list[str] | None, typer.Option("-v", "--volume", metavar="HOST:GUEST[:ro|:rw]",
                                                     help="Grant a host directory at a guest path (:ro: read-only; "
                                                          ":rw, the default: writable).")] = None,
    tmpfs: Annotated[list[str] | None, typer.Option("--tmpfs", metavar="PATH",
                                                    help="An empty writable scratch directory at "
                                                         "this guest path.")] = None,
    workdir: Annotated[str | None, typer.Option("-w", "--workdir", metavar="DIR",
                                                help="Working directory in the guest.")] = None,
    entrypoint: Annotated[str | None, typer.Option("--entrypoint", metavar="PATH[#FUNC]",
                                                   help="Replace the image's entrypoint; #FUNC calls that "
                                                        "export.")] = None,
    network: Annotated[str, typer.Option("--network", metavar="none|host", show_default=False,
                                         help="none (default) or host (components only).")] = "none",
    deny_wasi: Annotated[list[str] | None, typer.Option(
        "--deny-wasi", metavar="CALLS", help="Deny WASI imports, e.g. path_open,fd_write or wasi:sockets/*.")] = None,
    allow_wasi: Annotated[list[str] | None, typer.Option(
        "--allow-wasi", metavar="CALLS", help="Allow WASI imports the default denies.")] = None,
    syscall_policy: Annotated[str, typer.Option("--syscall-policy", metavar="refuse|trap", show_default=False,
                                                help="refuse (default): do not start a "
                                                "guest importing a denied call; trap: start it, denied calls "
                                                "trap.")] = "refuse",
    memory: Annotated[str | None, typer.Option("-m", "--memory", metavar="SIZE",
                                               help="Linear memory cap, e.g. 64m.")] = None,
    timeout: Annotated[str | None, typer.Option("--timeout", metavar="DURATION",
                                                help="Wall-clock limit, e.g. 10s.")] = None,
    fuel: Annotated[int | None, typer.Option("--fuel", metavar="UNITS",
                                             help="Instruction budget (slows execution).")] = None,
    wasm_features: Annotated[str | None, typer.Option("--wasm-features", metavar="FEATURES",
                                                      help="wasmtime's wasm features on, -NAME off, e.g. "
                                                           "simd,-threads (over the image's label).")] = None,
    opt_level: Annotated[str | None, typer.Option("--opt-level", metavar="none|speed|speed_and_size",
                                                  help="The compiler's optimisation level (default speed).")] = None,
    platform: Annotated[str | None, typer.Option("--platform", metavar="OS/ARCH", help="Platform of an index.")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", metavar="NAME",
                                                     help="Grant a default device at /dev: null, zero, "
                                                          "full, random, urandom, tty (as root).")] = None,
    user: Annotated[str | None, typer.Option("-u", "--user", metavar="UID[:GID]",
                                             help="Run the guest as UID[:GID] (numbers; as root), "
                                                  "with no capabilities, seccomp and Landlock.")] = None,
    publish: Annotated[str | None, typer.Option("-p", "--publish", metavar="[IP:]HOSTPORT[:PORT]",
                                                help="Serve a wasi:http proxy component there (default "
                                                     "127.0.0.1:8080).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", metavar="N", min=1,
                                                help="HTTP worker processes (default: one per CPU).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="One line per HTTP request on stderr.")] = False,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", metavar="HOST[:PORT]",
                                                         help="A host the proxy's outgoing requests may reach "
                                                              "(* any; needs --network host).")] = None,
    max_body: Annotated[str, typer.Option("--max-body", metavar="SIZE", help="HTTP request body limit.")] = "16m",
    max_headers: Annotated[int, typer.Option("--max-headers", metavar="N", min=1,
                                             help="HTTP request header fields limit.")] = 100,
    max_header_bytes: Annotated[str, typer.Option("--max-header-bytes", metavar="SIZE",
                                                  help="HTTP request head size limit.")] = "64k",
    max_concurrent: Annotated[int, typer.Option("--max-concurrent", metavar="N", min=1,
                                                help="HTTP connections at once per worker.")] = 64,
    header_timeout: Annotated[str, typer.Option("--header-timeout", metavar="DURATION",
                                                help="Time a client has to send a request head.")] = "10s",
    signature_policy: SignaturePolicy = None,
    registries_d: RegistriesD = None,
    reuse: Annotated[int, typer.Option("--reuse", metavar="N", min=1,
                                       help="Requests one HTTP guest instance may serve in turn (default 1: a "
                                            "fresh instance per request).")] = 1,
    insecure: Insecure = False,
    ca_cert: CaCert = None,
    quiet: RunQuiet = False,
) -> None:
    """Run a wasm image or file under WASI, with only what you grant; exits with the guest's code.
    A wasi:http proxy component is served over HTTP instead (-p; --timeout and -m then apply per request).

    Example: wasmctr run -v "$PWD/data:/data:ro" --memory 64m --timeout 10s hello:1 world
    """
    if network not in ("none", "host"):
        _fail(f"--network {network!r}: expected none or host", _EXIT_RUN_FAILED)
    try:
        from wasmctr.running.http import serving

        serve: dict[str, Any] = dict(publish=publish, workers=workers, access_log=access_log, max_body=max_body,
                                     max_headers=max_headers, max_header_bytes=max_header_bytes,
                                     max_concurrent=max_concurrent, header_timeout=header_timeout, reuse=reuse,
                                     allow_hosts=tuple(allow_host or ()))
        # checked before a pull, which run would do after
        serving.check_grant(serving.options(**serve), network == "host")
        # the progress display ends (and the terminal is restored) before the guest's first byte: it
        # redraws its lines, and would erase a partial line or a prompt the guest printed
        with console.progress(quiet) as progress:
            api.pull_if_missing(target, platform=platform, insecure=insecure, ca_cert=ca_cert, progress=progress,
                                signature_policy=signature_policy, registries_d=registries_d)
        outcome = api.run(target, args, entrypoint=entrypoint, workdir=workdir, env=env, env_files=env_file,
                          volumes=volume, tmpfs=tmpfs, memory=memory, timeout=timeout, fuel=fuel,
                          wasm_features=wasm_features, opt_level=opt_level, network=network == "host",
                          deny_wasi=deny_wasi, allow_wasi=allow_wasi,
                          syscall_policy=syscall_policy, stdin=interactive, platform=platform, user=user,
                          devices=device, pull_missing=False, hard_stop=True,
                          signature_policy=signature_policy, **serve)
    except api.GuestTimeout as stopped:
        outcome = stopped.result
    except WasmctrError as exc:
        _fail(exc.spelled(_FLAGS), _EXIT_RUN_FAILED)
    if outcome.message:
        diagnostics.emit(f"wasmctr: {outcome.message}")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # the process existed for its guest, which is done and whose temporary directories are gone: ending
    # here skips the interpreter's teardown of the engine and its code, ~65 ms (bench/startup.py)
    os._exit(outcome.exit_code)


@app.command(cls=_Command, short_help="Push an image to a registry")
def push(
    ref: Annotated[str, typer.Argument(metavar="NAME[:TAG]", help="Image in the store, named for its registry.")],
    insecure: Insecure = False,
    ca_cert: CaCert = None,
    quiet: Quiet = False,
) -> None:
    """Push an image to the registry its name points at; prints the manifest digest.

    Example: wasmctr tag hello:1 127.0.0.1:5000/hello:1 && wasmctr push 127.0.0.1:5000/hello:1
    """
    with console.progress(quiet) as progress:
        desc = api.push(ref, insecure=insecure, ca_cert=ca_cert, progress=progress)
    _echo(desc.digest)


@app.command(cls=_Command, short_help="Pull an image from a registry")
def pull(
    ref: Annotated[str, typer.Argument(metavar="NAME[:TAG|@DIGEST]",
                                       help="Image to fetch, e.g. 127.0.0.1:5000/hello:1.")],
    platform: Annotated[str | None, typer.Option("--platform", metavar="OS/ARCH", help="Platform of an index to fetch "
                                                                                       "(default wasi/wasm).")] = None,
    all_platforms: Annotated[bool, typer.Option("--all-platforms", help="Fetch the layers of every "
                                                                        "platform of an index.")] = False,
    signature_policy: SignaturePolicy = None,
    registries_d: RegistriesD = None,
    insecure: Insecure = False,
    ca_cert: CaCert = None,
    quiet: Quiet = False,
) -> None:
    """Pull an image from a registry into the local store, verifying every blob and, before anything is stored,
    its signatures as the signature policy asks; prints its digest.

    Example: wasmctr pull 127.0.0.1:5000/hello:1
    """
    with console.progress(quiet) as progress:
        desc = api.pull(ref, platform=platform, all_platforms=all_platforms, insecure=insecure, ca_cert=ca_cert,
                        progress=progress, signature_policy=signature_policy, registries_d=registries_d)
    _echo(desc.digest)


@app.command("sign", cls=_Command, short_help="Sign an image on its registry")
def sign_command(
    ref: Annotated[str, typer.Argument(metavar="NAME[:TAG|@DIGEST]", help="Image on a registry.")],
    key: Annotated[str, typer.Option("--key", metavar="FILE", help="cosign private key (cosign.key); its password "
                                                                   "from COSIGN_PASSWORD or a prompt.")],
    insecure: Insecure = False,
    ca_cert: CaCert = None,
) -> None:
    """Sign an image's manifest digest (an index: and each of its manifests) and attach the signature as cosign
    and skopeo do, under the tag sha256-<hex>.sig; prints each digest signed.

    Example: wasmctr sign --key cosign.key 127.0.0.1:5000/hello:1
    """
    for digest in api.sign(ref, key, _password(confirm=False), insecure=insecure, ca_cert=ca_cert):
        _echo(digest)


@app.command("verify", cls=_Command, short_help="Check an image's signature on its registry")
def verify_command(
    ref: Annotated[str, typer.Argument(metavar="NAME[:TAG|@DIGEST]", help="Image on a registry.")],
    key: Annotated[str, typer.Option("--key", metavar="FILE", help="cosign public key (cosign.pub).")],
    insecure: Insecure = False,
    ca_cert: CaCert = None,
) -> None:
    """Check that an image on its registry carries a signature of this key for its digest and repository;
    prints the digest, or fails with the reason.

    Example: wasmctr verify --key cosign.pub 127.0.0.1:5000/hello:1
    """
    digest = api.verify(ref, key, insecure=insecure, ca_cert=ca_cert)
    _echo(f"Verified OK: {ref} ({digest}) is signed by {key}", err=True)
    _echo(digest)


key_app = typer.Typer(name="key", help="Manage signing keys.", short_help="Manage signing keys",
                      no_args_is_help=True)
app.add_typer(key_app)


@key_app.command("generate", cls=_Command, short_help="Make a cosign key pair")
def key_generate(
    prefix: Annotated[str, typer.Option("--output-key-prefix", metavar="PREFIX",
                                        help="Write PREFIX.key and PREFIX.pub.")] = "cosign",
) -> None:
    """Make an ECDSA P-256 key pair in cosign's format: PREFIX.key (encrypted with COSIGN_PASSWORD or a
    password asked for twice; mode 0600) and PREFIX.pub.

    Example: COSIGN_PASSWORD=... wasmctr key generate && wasmctr sign --key cosign.key 127.0.0.1:5000/hello:1
    """
    for path in api.generate_key(_password(confirm=True), prefix):
        _echo(f"Wrote {path}")


def _password(confirm: bool) -> str:
    """A key's password, as cosign takes it: COSIGN_PASSWORD (even empty), else asked on the terminal."""
    if "COSIGN_PASSWORD" in os.environ:
        return os.environ["COSIGN_PASSWORD"]
    if not sys.stdin.isatty():
        raise UsageError("no password: set COSIGN_PASSWORD, or run on a terminal to be asked")
    return str(typer.prompt("Password for the key", hide_input=True, confirmation_prompt=confirm))


@app.command(cls=_Command, short_help="Log in to a registry")
def login(
    registry: Annotated[str, typer.Argument(metavar="SERVER", help="Registry host, e.g. ghcr.io or 127.0.0.1:5000.")],
    username: Annotated[str | None, typer.Option("-u", "--username", metavar="NAME", help="User name.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from "
                                                                          "stdin.")] = False,
    insecure: Insecure = False,
    ca_cert: CaCert = None,
) -> None:
    """Log in to a registry; credentials go where `docker login` keeps them.

    Example: echo "$TOKEN" | wasmctr login ghcr.io -u me --password-stdin
    """
    interactive = sys.stdin.isatty()
    if username is None:
        if not interactive:
            raise UsageError("no user name: give one with -u")
        username = typer.prompt("Username")
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif interactive:
        password = typer.prompt("Password", hide_input=True)
    else:
        raise UsageError("no password: pipe it in with --password-stdin")
    if not password:
        raise UsageError("empty password")
    where = api.login(registry, username, password, insecure=insecure, ca_cert=ca_cert)
    _echo(f"Login Succeeded (credentials saved in {where})")


@app.command(cls=_Command, short_help="Log out from a registry")
def logout(registry: Annotated[str, typer.Argument(metavar="SERVER", help="Registry host.")]) -> None:
    """Forget the credentials of a registry.

    Example: wasmctr logout 127.0.0.1:5000
    """
    if api.logout(registry):
        _echo(f"Removing login credentials for {registry}")
    else:
        _echo(f"Not logged in to {registry}")


@app.command("images", cls=_Command, short_help="List images")
def images_command(
    repository: Annotated[str | None, typer.Argument(metavar="[REPOSITORY[:TAG]]", show_default=False,
                                                     help="Only images whose name (or name:tag) matches; * and ? "
                                                          "match within a path component.")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only print image IDs.")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Print full image IDs.")] = False,
    format: Annotated[str, typer.Option("--format", metavar="table|json", show_default=False,
                                        help="table (default) or json (one object per line).")] = "table",
) -> None:
    """List the images in the local store; dangling ones (a rebuild took their tag) show as <none>.

    Example: wasmctr images hello
    """
    if format not in ("table", "json"):
        raise UsageError(f"--format {format!r}: expected table or json")
    rows = api.images(repository)
    if quiet:
        for image_id in dict.fromkeys(_image_id(r.digest, no_trunc) for r in rows):
            _echo(image_id)
        return
    if format == "json":
        for r in rows:
            _echo(json.dumps({"Repository": r.repository, "Tag": r.tag, "ID": r.digest,
                                   "Platforms": r.platforms, "Format": r.format, "Size": r.size,
                                   "CreatedAt": r.created}))
        return
    table = [("REPOSITORY", "TAG", "IMAGE ID", "PLATFORM", "FORMAT", "SIZE", "CREATED")]
    for r in rows:
        table.append((r.repository, r.tag, _image_id(r.digest, no_trunc), ",".join(r.platforms), r.format,
                      console.size(r.size), _ago(r.created)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for line in table:
        _echo("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _image_id(digest: str, full: bool) -> str:
    """An image's ID, as Docker's containerd store has it: its manifest or index digest (12 hex digits)."""
    return digest if full else console.short_id(digest)


@app.command(cls=_Command, short_help="Show an image's details and WASI imports")
def inspect(
    ref: Annotated[str, typer.Argument(metavar="IMAGE", help="Image: a name such as hello:1, or an ID.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
    platform: Annotated[str | None, typer.Option("--platform", metavar="OS/ARCH",
                                                 help="Which manifest of an index.")] = None,
) -> None:
    """Show an image's manifest, config and the WASI imports of its program (its syscall surface).

    Example: wasmctr inspect hello:1 --json
    """
    info = api.inspect(ref, platform)
    if as_json:
        _echo(json.dumps(info, indent=2))
        return
    rc = info["config"].get("config") or {}
    lines = [
        ("Name", info["name"]) if info["name"] else ("Names", ", ".join(info["names"]) or "<none>"),
        ("ID", info["id"]),
        ("Media type", info["mediaType"]),
        ("Format", info["format"]),
        ("Platforms", ", ".join(info["platforms"])),
        ("Created", info["config"].get("created", "")),
        ("Entrypoint", json.dumps(rc.get("Entrypoint"))) if rc.get("Entrypoint") else None,
        ("Cmd", json.dumps(rc.get("Cmd"))) if rc.get("Cmd") else None,
        ("Env", ", ".join(rc.get("Env") or [])) if rc.get("Env") else None,
        ("WorkingDir", rc.get("WorkingDir")) if rc.get("WorkingDir") else None,
    ]
    for line in lines:
        if line:
            _echo(f"{line[0] + ':':<12} {line[1]}")
    program = info.get("wasm")
    if program:
        _echo(f"{'Program:':<12} {program['path']} ({program['kind']})")
        if program.get("world"):
            _echo(f"{'World:':<12} {program['world']}")
        _echo(f"{'Imports:':<12} {len(program['imports'])}")
        for name in program["imports"]:
            _echo(f"  {name}")


@app.command(cls=_Command, short_help="Give an image another name")
def tag(
    source: Annotated[str, typer.Argument(metavar="SOURCE_IMAGE", help="Existing image: a name or an ID.")],
    target: Annotated[str, typer.Argument(metavar="TARGET_IMAGE", help="New name.")],
) -> None:
    """Give an image another name.

    Example: wasmctr tag hello:1 127.0.0.1:5000/hello:1
    """
    _echo(api.tag(source, target))


@app.command(cls=_Command, short_help="Remove one or more images")
def rmi(refs: Annotated[list[str], typer.Argument(metavar="IMAGE [IMAGE...]", help="Images to remove: names, or IDs "
                                                                           "as `wasmctr images` shows them.")],
        force: Annotated[bool, typer.Option("-f", "--force", help="Remove an image by ID even when several names "
                                                                  "point at it (every one of them goes).")] = False,
        ) -> None:
    """Untag images, then delete the blobs no other image uses; an ID of an image with several names needs -f,
    and removes every name.

    Example: wasmctr rmi hello:1 8a41258c080c
    """
    for ref in refs:
        removed = api.rmi(ref, force=force)
        for name in removed.untagged:
            _echo(f"Untagged: {name}")
        for image_id in removed.deleted:
            _echo(f"Deleted: {image_id}")
        _echo(f"Deleted {removed.blobs} blobs ({console.size(removed.bytes)})")


image_app = typer.Typer(name="image", help="Manage images.", short_help="Manage images", no_args_is_help=True)
app.add_typer(image_app)
# Docker's management commands: `image ls` and `image rm` are `images` and `rmi`, as in docker
image_app.command("ls", cls=_Command, short_help="List images (as `wasmctr images`)")(images_command)
image_app.command("rm", cls=_Command, short_help="Remove images (as `wasmctr rmi`)")(rmi)


@image_app.command("prune", cls=_Command, short_help="Remove dangling images and unused blobs")
def image_prune(
    force: Annotated[bool, typer.Option("-f", "--force", help="Accepted as docker's; wasmctr never prompts.")] = False,
    cache: Annotated[bool, typer.Option("--cache", help="Empty the compile cache too (code is compiled again "
                                                        "at each image's next run).")] = False,
) -> None:
    """Delete dangling images (<none>: a rebuild, pull or tag took their name) and blobs no image uses.

    Example: wasmctr image prune --cache
    """
    removed = api.prune(cache=cache)
    for image_id in removed.deleted:
        _echo(f"Deleted: {image_id}")
    _echo(f"Deleted {removed.blobs} blobs")
    if cache:
        _echo(f"Deleted {removed.compiled} compiled entries ({console.size(removed.compiled_bytes)})")
    _echo(f"Total reclaimed space: {console.size(removed.bytes + removed.compiled_bytes)}")


node_app = typer.Typer(name="node", help="Put wasmctr on a containerd node, and check it.",
                       short_help="Install the shim on a containerd node, and check it", no_args_is_help=True)
app.add_typer(node_app)
NodeConfig = Annotated[str, typer.Option("--config", metavar="FILE", help="containerd's config, or a k3s/rke2 "
                                                                         "template of it.")]
BinDir = Annotated[str, typer.Option("--bin-dir", metavar="DIR", help="Where containerd finds the shim "
                                                                      "binaries (on its PATH).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the config's diff and change nothing.")]


@node_app.command("install", cls=_Command, short_help="Add the wasmctr runtimes to containerd (as root)")
def node_install(
    config: NodeConfig = "/etc/containerd/config.toml",
    bin_dir: BinDir = "/usr/local/bin",
    containerd_version: Annotated[str | None, typer.Option(
        "--containerd-version", metavar="X.Y", help="The containerd that reads the config, when it is not the "
                                                    "one on PATH (say, k3s's).")] = None,
    dry_run: DryRun = False,
    restart: Annotated[bool, typer.Option("--restart", help="Restart containerd (where systemd runs it).")] = False,
) -> None:
    """Link the shim binaries where containerd finds them and add runtimes wasmctr and wasmctr-shared to its
    config, keeping every other setting (a backup goes beside it); prints the RuntimeClass manifests.

    Example: sudo wasmctr node install | kubectl apply -f -
    """
    from pathlib import Path

    from wasmctr.node import install, runtimes

    change = install.install(Path(config), Path(bin_dir), containerd_version, dry_run)
    _node_report(change, dry_run, restart)
    if not dry_run:
        _echo(runtimes.runtime_class_manifests(), err=False)


@node_app.command("uninstall", cls=_Command, short_help="Remove the wasmctr runtimes from containerd")
def node_uninstall(config: NodeConfig = "/etc/containerd/config.toml", bin_dir: BinDir = "/usr/local/bin",
                   dry_run: DryRun = False,
                   restart: Annotated[bool, typer.Option("--restart", help="Restart containerd (where systemd "
                                                                           "runs it).")] = False) -> None:
    """Take out what `wasmctr node install` added: the runtimes (the config as it was) and the links.

    Example: sudo wasmctr node uninstall --dry-run
    """
    from pathlib import Path

    from wasmctr.node import install

    _node_report(install.uninstall(Path(config), Path(bin_dir), dry_run), dry_run, restart)


def _node_report(change: Any, dry_run: bool, restart: bool) -> None:
    """What an install or uninstall did, on stderr (stdout is for the diff or the manifests), and the restart."""
    from wasmctr.node import install

    if dry_run:
        _echo(change.diff(), err=False)
    for note in change.notes:
        _echo(("would have " if dry_run else "") + note, err=True)
    if not change.changed:
        _echo(f"{change.config} already says so: nothing to change", err=True)
        return
    if dry_run:
        return
    backup = f"; backup: {change.backup}" if change.backup else ""
    _echo(f"wrote {change.config} (config version {change.version}){backup}", err=True)
    if restart:
        _echo(install.restart_containerd(), err=True)
    else:
        _echo("containerd must be restarted to read it (systemctl restart containerd, or --restart)", err=True)


@node_app.command("doctor", cls=_Command, short_help="Check that this node can run wasm pods")
def node_doctor(
    config: NodeConfig = "/etc/containerd/config.toml",
    address: Annotated[str, typer.Option("--address", metavar="SOCKET", help="containerd's socket.")] = (
        "/run/containerd/containerd.sock"),
    format: Annotated[str, typer.Option("--format", metavar="text|json", show_default=False,
                                        help="text (default: a line per check) or json.")] = "text",
) -> None:
    """Check the kernel features, containerd, its config and the shim (with a real container, removed
    after), the shim template and the compile cache; exit 0 only when the node can run a wasm pod.

    Example: sudo wasmctr node doctor --format json
    """
    from pathlib import Path

    from wasmctr.node import doctor

    if format not in ("text", "json"):
        raise UsageError(f"--format {format!r}: expected text or json")
    checks = doctor.examine(Path(config), Path(address))
    healthy = all(c.verdict != doctor.FAIL for c in checks)
    if format == "json":
        _echo(json.dumps({"ok": healthy, "checks": [vars(c) for c in checks]}, indent=2))
    else:
        for check in checks:
            _echo(check.line())
    if not healthy:
        sys.exit(1)


@app.command(cls=_Command, short_help="Save an image as an OCI archive or layout")
def save(
    ref: Annotated[str, typer.Argument(metavar="IMAGE", help="Image to save: a name or an ID.")],
    output: Annotated[str | None, typer.Option("-o", "--output", metavar="FILE",
                                               help="OCI archive to write (.tar).")] = None,
    oci_dir: Annotated[str | None, typer.Option("--oci-dir", metavar="DIR",
                                                help="OCI layout directory to write into.")] = None,
) -> None:
    """Write an image as an OCI archive, or into an OCI layout directory.

    Example: wasmctr save hello:1 -o hello.tar
    """
    desc = api.save(ref, output, oci_dir)
    if output is None or atomic.standard_stream(output) is not sys.stdout.buffer:  # else the archive went there
        _echo(desc.digest)


@app.command(cls=_Command, short_help="Load images from an OCI archive or layout")
def load(
    input: Annotated[str, typer.Option("-i", "--input", metavar="FILE|DIR",
                                       help="OCI archive (.tar, .tar.gz) or layout directory.")],
    tag: Annotated[str | None, typer.Option("-t", "--tag", metavar="NAME[:TAG]",
                                            help="Name for an image the archive leaves "
                                                 "unnamed.")] = None,
) -> None:
    """Import images from an OCI archive or layout directory.

    Example: wasmctr load -i hello.tar
    """
    for name in api.load(input, tag):
        _echo(f"Loaded image: {name}")


_NO_CONTAINERS = "wasmctr has no daemon and keeps no containers: a `wasmctr run` is a process that ends with its guest"
_DOCKER_ONLY = {  # docker commands about containers a daemon keeps, and why each has no wasmctr counterpart
    "ps": f"{_NO_CONTAINERS} (list running guests with ps(1); under containerd, `ctr tasks ls`)",
    "rm": f"{_NO_CONTAINERS}, so there is none to remove (images: `wasmctr rmi`)",
    "logs": f"{_NO_CONTAINERS}; its output goes to your terminal or pipe and is not kept",
    "stop": f"{_NO_CONTAINERS}; stop one with Ctrl-C or kill(1), which stop its guest",
    "kill": f"{_NO_CONTAINERS}; stop one with Ctrl-C or kill(1), which stop its guest",
    "exec": "a wasm guest is one program with no shell or process table to run another in",
    "attach": f"{_NO_CONTAINERS}; run it in the foreground (-i for stdin) instead",
    "start": f"{_NO_CONTAINERS}, so there is none to start: `wasmctr run IMAGE`",
    "create": f"{_NO_CONTAINERS}, so none is created ahead of time: `wasmctr run IMAGE`",
    "container": f"{_NO_CONTAINERS}, so there are none to manage",
}


def _docker_only(name: str, why: str) -> None:
    def refuse(words: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
        raise UsageError(f"`wasmctr {name}` does not exist: {why}")

    app.command(name, hidden=True, add_help_option=False,
                context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(refuse)


for _name, _why in _DOCKER_ONLY.items():
    _docker_only(_name, _why)


_NEAR_MISS_RATIO = 0.75  # `--netwrok`/`--network` 0.86, `--envfile`/`--env-file` 0.94; `--rm`/`--user` 0.33


def _near_misses(word: str, candidates: list[str]) -> list[str]:
    """What a mistyped flag or command was most likely meant to be: only near misses (a typo or two),
    not click's default of anything sharing a few letters (`--rm` → `--user`)."""
    import difflib

    bare = word.lstrip("-")
    return [c for c in candidates
            if difflib.SequenceMatcher(None, bare, c.lstrip("-")).ratio() >= _NEAR_MISS_RATIO][:3]



def _ago(created: str) -> str:
    """`docker images`' CREATED; `-` for a build stamped with the default SOURCE_DATE_EPOCH of 0, which says
    when nothing was built."""
    if created.startswith("1970-01-01T00:00:00"):
        return "-"
    try:
        when = datetime.strptime(created[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return created or "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("years", 31536000), ("months", 2592000), ("days", 86400), ("hours", 3600),
                       ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


class _Interrupted(BaseException):
    """Ctrl-C or SIGTERM (its number the argument), raised by our handler: a BaseException, as
    KeyboardInterrupt is, so that no `except Exception` swallows it, and not KeyboardInterrupt, which typer
    turns into a silent exit 130."""


class _OutputClosed(Exception):
    """Our stdout's reader went away (`wasmctr images | head -1`): stop, quietly and successfully, as
    Docker's CLI does. Not an OSError, which typer turns into exit 1."""


def _echo(text: str = "", err: bool = False) -> None:
    try:
        typer.echo(text, err=err)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2 if err else 1)  # nor may the flush at exit complain
        raise _OutputClosed from None


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def _fail(message: str, code: int) -> NoReturn:
    diagnostics.emit(f"wasmctr: error: {message}")
    sys.exit(code)


def _suggest_near_misses_only(exc: Any) -> None:
    """Replace click's and typer's "did you mean" (anything sharing a few letters) with near misses."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoSuchOption" and ctx is not None:
        names = [n for p in ctx.command.get_params(ctx) for n in (*p.opts, *p.secondary_opts) if n.startswith("--")]
        exc.possibilities = _near_misses(exc.option_name, names)
    elif str(getattr(exc, "message", "")).startswith("No such command") and ctx is not None:
        word = exc.message.split("'")[1]
        visible = [n for n, c in getattr(ctx.command, "commands", {}).items() if not c.hidden]
        exc.message = f"No such command {word!r}."
        if found := _near_misses(word, visible):
            exc.message += " Did you mean " + ", ".join(repr(m) for m in found) + "?"


def main() -> None:
    """Entry point of the `wasmctr` console script."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)  # so that a display open at the time is taken down
    try:
        result = app(standalone_mode=False)
    except _OutputClosed:
        sys.exit(0)
    except SystemExit as exc:  # typer's own output (--help) to a closed pipe: its exit 1 is ours to undo
        if isinstance(exc.__context__, BrokenPipeError):
            sys.exit(0)
        raise
    except (_Interrupted, KeyboardInterrupt) as exc:
        # after the progress display has been taken down; downloads in other threads are not waited
        # for (what they fetched stays in ingest/, and the next pull resumes it)
        signum = exc.args[0] if isinstance(exc, _Interrupted) else signal.SIGINT
        diagnostics.emit("wasmctr: error: " + ("terminated" if signum == signal.SIGTERM else "interrupted"))
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os._exit(128 + signum)
    except WasmctrError as exc:
        _fail(exc.spelled(_FLAGS), exc.exit_code)
    except _COMMAND_LINE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            _echo(exc.format_message())
            sys.exit(0)
        _suggest_near_misses_only(exc)
        command = getattr(getattr(exc, "ctx", None), "command", None)
        # an option missing its value is raised with no command's context: the command line names it
        named = getattr(command, "name", "") or next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
        _fail(exc.format_message(), _EXIT_RUN_FAILED if named == "run" else exc.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except OSError as exc:
        _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror or exc), 1)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
