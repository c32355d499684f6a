"""The Python API: what the CLI does, callable from Python (`wasmctr.build(...)`, `wasmctr.images()`).

Each function takes an optional `store` (default: the local store at `$WASMCTR_HOME`) and returns plain
data. The CLI is a thin layer over these; nothing here prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmctr.errors import ImageInUse, ImageNotFound, SigningError, UsageError, WasmctrError
from wasmctr.errors import parameter as _p
from wasmctr.image import digest as digests
from wasmctr.image import mediatypes as mt
from wasmctr.image import reference as references
from wasmctr.image import stored
from wasmctr.image.model import Descriptor, Platform
from wasmctr.image.store import Store, Tagged
from wasmctr.record import record

if TYPE_CHECKING:  # building, archives, the registry stack (requests, oras) and wasmtime: imported where used
    from collections.abc import Mapping

    from wasmctr.building.builder import Format
    from wasmctr.registry.client import Registry
    from wasmctr.registry.distribution import Progress
    from wasmctr.running.executor import Executor, Outcome
    from wasmctr.running.http.local import ProxyClient
    from wasmctr.running.launch import RunOptions
    from wasmctr.running.spec import RunSpec
    from wasmctr.signing.attach import Signature
    from wasmctr.signing.policy import Policy


@record(frozen=True)
class BuildResult:
    name: str
    digest: str
    format: str
    platforms: list[str]
    program: str
    kind: str


@record(frozen=True)
class ImageSummary:
    name: str | None  # the full reference, as docker's RepoTags spell it (`hello:1`); None for a dangling image
    repository: str
    tag: str
    digest: str
    platforms: list[str]
    format: str
    size: int
    created: str


def _store(store: Store | None) -> Store:
    return store if store is not None else Store()


_PUMP_WAIT_SECONDS = 10  # for a guest's last output, once it has ended

_BUILD_OS = ("wasi", "wasip1", "wasip2", "linux")
_BUILD_ARCHITECTURES = ("wasm", "wasm32", "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")


def _platforms(text: str, name: str = "platform") -> list[Platform]:
    """The platforms in `text`, the value of parameter `name` (its errors name it)."""
    try:
        found = [Platform.parse(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not found or len(set(found)) != len(found):
        raise UsageError(f"{_p(name)} {text!r}: give one or more distinct OS/ARCH pairs")
    return found


def build(source: str | os.PathLike[str], tag: str, *, dockerfile_path: str | os.PathLike[str] | None = None,
          build_args: dict[str, str] | None = None, format: Format = "compat",
          platforms: str = "wasi/wasm", author: str | None = None, precompile: bool = False,
          labels: dict[str, str] | None = None, store: Store | None = None) -> BuildResult:
    """Build an image from a `.wasm` file, or from a directory holding a Dockerfile, and tag it. `labels`
    go over the Dockerfile's LABELs; the `io.wasmctr.*` ones (a run's settings: `running/launch.py`) are
    checked now, and `precompile` compiles with the engine settings they name."""
    from wasmctr.building import builder, dockerfile
    from wasmctr.running import launch

    ref = references.parse(tag)
    if format not in builder.FORMATS:
        raise UsageError(f"{_p('format')} {format!r}: expected compat or artifact")
    wanted = _platforms(platforms, "platforms")
    for platform in wanted:
        if platform.os not in _BUILD_OS or platform.architecture not in _BUILD_ARCHITECTURES:
            raise UsageError(f"{_p('platforms')} {platform}: wasm images are built for {', '.join(_BUILD_OS)} on "
                             f"{', '.join(_BUILD_ARCHITECTURES)} (e.g. wasi/wasm, or linux/amd64 for engines that "
                             "ask for their own platform)")
    path = Path(source)
    if path.is_dir():
        dfile = Path(dockerfile_path) if dockerfile_path else path / "Dockerfile"
        if not dfile.is_file():
            raise UsageError(f"no Dockerfile at {dfile}; give one with {_p('dockerfile_path')}")
        plan = dockerfile.parse(dfile, path, build_args or {})
    elif path.is_file():
        if dockerfile_path:
            raise UsageError(f"{_p('dockerfile_path')} needs a build context directory, not a single file")
        plan = dockerfile.plan_for_wasm(path)
    else:
        raise UsageError(f"{source}: no such file or directory")
    plan.labels.update(labels or {})
    settings = launch.labelled(plan.labels)
    target = _store(store)
    with target.writing():  # tagged before the lock goes, so no garbage collection sees it untagged
        built = builder.build(target, plan, format, wanted, author)
        target.set_tag(ref, built.descriptor)
    if precompile:
        source_file = plan.files[built.program].source
        assert source_file is not None
        identity = None if built.format == "artifact" else stored.program_key(stored.load(target, built.descriptor),
                                                                              built.program)
        _executor(target).precompile(source_file, identity, settings.fuel is not None, settings.engine)
    return BuildResult(ref.familiar(), built.descriptor.digest, built.format, [str(p) for p in built.platforms],
                       built.program, built.wasm.kind)


def images(pattern: str | None = None, store: Store | None = None) -> list[ImageSummary]:
    """Every image, sorted by name, dangling ones (`<none>`) last; with `pattern`, those whose name or
    name:tag matches it, as `docker images REPOSITORY[:TAG]` filters (`*` and `?` within a path component).
    The signatures kept with images (`repo:sha256-<hex>.sig` entries) are not images, and not listed."""
    st = _store(store)
    out = []
    for tagged in sorted(st.tags(), key=lambda t: (t.dangling, t.name)):
        if tagged.dangling:
            if pattern is not None:
                continue
            name, repository, tag = None, "<none>", "<none>"
        else:
            ref = references.parse(tagged.name)
            if references.signed_digest(ref) is not None:
                continue
            name, repository, tag = tagged.name, ref.familiar_name, ref.tag or "<none>"
            if pattern is not None and not references.matches(pattern, ref):
                continue
        image = stored.load(st, tagged.descriptor)
        size = sum(st.blob_path(d).stat().st_size for d in st.referenced(tagged.descriptor))
        out.append(ImageSummary(name, repository, tag, tagged.descriptor.digest,
                                [str(p) for p in stored.platforms(st, tagged.descriptor)], image.format, size,
                                str(image.config.get("created", ""))))
    return out


def inspect(ref: str, platform: str | None = None, store: Store | None = None) -> dict[str, Any]:
    """Manifest, config and the program's WASI imports (its syscall surface) for one image."""
    from wasmctr.layers.program import describe_program  # the layers part: `images` and help never load it

    st = _store(store)
    desc, parsed = st.lookup(ref)
    wanted = _platforms(platform)[0] if platform else None
    image = stored.load(st, desc, wanted)
    program = describe_program(st, image)
    out: dict[str, Any] = {
        "name": parsed.familiar() if parsed else "",
        "id": desc.digest,
        "names": [t.name for t in st.tags() if t.descriptor.digest == desc.digest and not t.dangling],
        "digest": desc.digest,
        "mediaType": desc.media_type,
        "format": image.format,
        "platform": str(image.platform),
        "platforms": [str(p) for p in stored.platforms(st, desc)],
        "manifestDigest": image.descriptor.digest,
        "manifest": json.loads(image.manifest.raw),
        "config": image.config,
    }
    if program is not None:
        out["wasm"] = {"kind": program.kind, "path": program.path, "imports": program.imports}
        if program.world:
            out["wasm"]["world"] = program.world
    return out


def tag(source: str, target: str, store: Store | None = None) -> str:
    st = _store(store)
    dst = references.parse(target)
    if dst.digest:
        raise UsageError(f"cannot tag with a digest: {target}")
    with st.writing():  # a concurrent rmi cannot collect the image between resolving and tagging it
        st.set_tag(dst, st.lookup(source)[0])
    return dst.familiar()


@record(frozen=True)
class Removed:
    untagged: list[str]  # names taken off
    deleted: list[str]  # IDs of the images that went with them (no name or entry left)
    blobs: int
    bytes: int
    compiled: int = 0  # compile cache entries removed (`prune(cache=True)`)
    compiled_bytes: int = 0


def rmi(ref: str, *, force: bool = False, store: Store | None = None) -> Removed:
    """Untag an image (for an ID or digest: every name of it, and itself if dangling), then delete the
    blobs nothing else uses. As `docker rmi`, an ID of an image with several names is refused unless
    `force`: one ID would silently take names someone else set."""
    st = _store(store)
    desc, parsed = st.lookup(ref)
    if parsed is None or parsed.digest:
        names = sorted(t.name for t in st.tags() if t.descriptor.digest == desc.digest and not t.dangling)
        if len(names) > 1 and not force:
            raise ImageInUse(f"{ref} is the image of {len(names)} names ({', '.join(names)}): remove them "
                             "by name, or force removing them all")
        untagged = st.remove(lambda t: t.descriptor.digest == desc.digest)
    else:
        untagged = st.remove(lambda t: t.name == parsed.familiar())
    return _collect(st, untagged)


def prune(cache: bool = False, store: Store | None = None) -> Removed:
    """Delete the dangling images (those a rebuild, pull, load or tag took the name of), then every blob
    no image reaches (what interrupted pulls left in `ingest/` included) and the rootfs `run` unpacked from
    them. Returns the IDs of the images deleted. `cache`: empty the compile cache too (every entry, each
    compiled again at its image's next run)."""
    st = _store(store)
    removed = _collect(st, st.remove(lambda t: t.dangling))
    if not cache:
        return removed
    from wasmctr.image import home
    from wasmctr.running.compile_cache import CompileCache

    compiled, compiled_bytes = CompileCache(home.compile_cache_dir(st.root)).clear()
    return Removed(removed.untagged, removed.deleted, removed.blobs, removed.bytes, compiled, compiled_bytes)


def _collect(st: Store, removed: list[Tagged]) -> Removed:
    """After entries were removed: what went, once the blobs (and unpacked rootfs) nothing reaches are gone,
    with the signatures of images that went."""
    from wasmctr.signing import attach

    attach.drop_orphans(st)
    blobs, freed = st.gc()
    st.prune_rootfs()
    # an image is deleted when its manifest or index is gone: one still named, or in another image's
    # index, stays
    gone = {t.descriptor.digest for t in removed if not st.has_blob(t.descriptor.digest)}
    return Removed(sorted(t.name for t in removed if not t.dangling), sorted(gone), blobs, freed)


def save(ref: str, output: str | os.PathLike[str] | None = None, oci_dir: str | os.PathLike[str] | None = None,
         store: Store | None = None) -> Descriptor:
    """Write an image as an OCI archive (`output`) or into an OCI layout directory (`oci_dir`)."""
    from wasmctr.image import atomic
    from wasmctr.layers import archive

    if (output is None) == (oci_dir is None):
        raise UsageError(f"give exactly one of {_p('output')} (an OCI archive) and {_p('oci_dir')} "
                         "(a layout directory)")
    from wasmctr.signing import attach

    st = _store(store)
    desc, parsed = st.lookup(ref)
    signed = {desc.digest} | ({m.digest for m in st.read_index_blob(desc).manifests}
                              if desc.media_type in mt.INDEXES else set())
    signatures = attach.entries(st, signed)  # they travel with the image: a node that loads it can verify
    if oci_dir is not None:
        archive.save_layout(st, desc, parsed, Path(oci_dir), signatures)
        return desc
    assert output is not None
    with atomic.open_output(output) as f:
        archive.save_archive(st, desc, parsed, f, signatures)
    return desc


def load(source: str | os.PathLike[str], tag: str | None = None, store: Store | None = None) -> list[str]:
    """Import the images of an OCI archive or layout directory; returns the names tagged."""
    from wasmctr.layers import archive

    path = Path(source)
    if not path.exists():
        raise UsageError(f"{source}: no such file or directory")
    loaded = archive.load(_store(store), path, references.parse(tag) if tag else None)
    return [item.name for item in loaded]


def _is_file_target(target: str) -> bool:
    """Whether `run` takes `target` as a `.wasm` (or `.wat`) file rather than an image name."""
    return target.endswith((".wasm", ".wat")) or Path(target).is_file()


def pull_if_missing(target: str, *, platform: str | None = None, insecure: bool = False,
                    ca_cert: str | None = None, progress: Progress | None = None,
                    signature_policy: str | os.PathLike[str] | None = None,
                    registries_d: str | os.PathLike[str] | None = None,
                    store: Store | None = None) -> Descriptor | None:
    """Pull the image `run(target)` would pull: None when `target` is a file or an image already in the
    store. A failed pull says both, as `docker run` does. The CLI calls it first, so that its progress
    display is gone before a guest writes to the same terminal."""
    st = _store(store)
    if _is_file_target(target):
        return None
    try:
        st.lookup(target)
        return None
    except ImageNotFound:
        pass
    name = references.parse(target).familiar()
    try:
        return pull(target, platform=platform, insecure=insecure, ca_cert=ca_cert, progress=progress,
                    signature_policy=signature_policy, registries_d=registries_d, store=st)
    except WasmctrError as exc:
        raise type(exc)(f"no image {name} in the local store, and pulling it failed: {exc.args[0]}") from None


def _client(registry: str, insecure: bool, ca_cert: str | None) -> Registry:
    from wasmctr.registry.client import Registry

    if ca_cert is not None and not Path(ca_cert).is_file():
        raise UsageError(f"{_p('ca_cert')} {ca_cert}: no such file")
    return Registry(registry, insecure=insecure, ca_cert=ca_cert)


def pull(ref: str, *, platform: str | None = None, all_platforms: bool = False, insecure: bool = False,
         ca_cert: str | None = None, progress: Progress | None = None,
         signature_policy: str | os.PathLike[str] | None = None, registries_d: str | os.PathLike[str] | None = None,
         store: Store | None = None) -> Descriptor:
    """Fetch an image from its registry into the store (verified, resumable) and tag it `ref`. The signature
    policy (`signature_policy`, else $WASMCTR_SIGNATURE_POLICY, else containers' policy.json) is checked
    against the manifest digest before anything is stored; the signatures read for it are stored with the
    image, as are those registries.d asks to read (`registries_d`: its directory)."""
    from wasmctr.registry import distribution
    from wasmctr.signing import policy, referrers, registries, verify

    parsed = references.parse(ref)
    wanted = _platforms(platform)[0] if platform else None
    client = _client(parsed.registry, insecure, ca_cert)
    rules = policy.load(signature_policy)
    use = registries.load(registries_d).use_attachments(parsed)
    fetched: dict[str, referrers.Found] = {}

    def signatures(digest: str) -> list[Signature]:
        if use is False:
            raise SigningError(f"registries.d turns sigstore attachments off for {parsed.name}")
        found = fetched[digest] = referrers.read(client, parsed.repository, digest)
        return found.signatures

    def admit(top: Descriptor) -> None:
        verify.check(parsed, top.digest, lambda: signatures(top.digest), rules)
        if use and top.digest not in fetched:
            signatures(top.digest)

    st = _store(store)
    top = distribution.pull(st, parsed, client, wanted, all_platforms, progress, admit)
    for digest, found in fetched.items():
        referrers.keep(st, parsed, digest, found)
    return top


def _admit_stored(st: Store, desc: Descriptor, parsed: references.Reference | None, rules: Policy) -> None:
    """Check the policy for an image of the store, against the signatures stored with it, under the name it
    is run by (by ID: every name the store has for it)."""
    from wasmctr.signing import attach, verify

    names = [parsed] if parsed is not None else [references.parse(t.name) for t in st.tags()
                                                 if t.descriptor.digest == desc.digest and not t.dangling]
    if not names:
        verify.unnamed(desc.digest[:19], rules)
    for name in names:
        verify.check(name, desc.digest, lambda: attach.stored(st, desc.digest), rules)


def push(ref: str, *, insecure: bool = False, ca_cert: str | None = None,
         progress: Progress | None = None, store: Store | None = None) -> Descriptor:
    """Send the store's image named `ref` to the registry the name points at."""
    parsed = references.parse(ref)
    if parsed.digest:
        raise UsageError(f"push takes a tag, not a digest: {ref}")
    client = _client(parsed.registry, insecure, ca_cert)
    from wasmctr.registry import distribution

    return distribution.push(_store(store), parsed, parsed, client, progress)


def generate_key(password: str, prefix: str | os.PathLike[str] = "cosign") -> list[str]:
    """Write a new key pair in cosign's format, `PREFIX.key` (encrypted under `password`, mode 0600) and
    `PREFIX.pub`; neither may exist yet. Returns their paths."""
    from wasmctr.image import atomic
    from wasmctr.signing import keys

    private_path, public_path = Path(f"{os.fspath(prefix)}.key"), Path(f"{os.fspath(prefix)}.pub")
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise UsageError(f"{path} exists: remove it, or choose another {_p('prefix')}")
    private, public = keys.generate(password.encode())
    atomic.write_bytes(private_path, private, 0o600, devices=False)
    atomic.write_bytes(public_path, public)
    return [str(private_path), str(public_path)]


def sign(ref: str, key: str | os.PathLike[str], password: str, *, insecure: bool = False,
         ca_cert: str | None = None, store: Store | None = None) -> list[str]:
    """Sign the image `ref` names on its registry with a cosign private key, as cosign and skopeo attach
    signatures (the `sha256-<hex>.sig` tag) and as an OCI 1.1 referrer (listed by the registry's referrers
    API, else under the referrers tag `sha256-<hex>`); an index is signed with each of its manifests. The
    store keeps a copy of each signature of an image it holds. Returns the digests signed."""
    from wasmctr import __version__
    from wasmctr.image.model import Index
    from wasmctr.signing import attach, keys, referrers
    from wasmctr.signing import payload as payloads

    parsed = references.parse(ref)
    private = keys.load_private(_read_key(key), password.encode(), os.fspath(key))
    client = _client(parsed.registry, insecure, ca_cert)
    raw, media_type = client.get_manifest_raw(parsed.repository, parsed.locator)
    top = Descriptor(_declared_type(raw, media_type), digests.of_bytes(raw), len(raw))
    subjects = [top]
    if top.media_type in mt.INDEXES:
        subjects += Index.parse(raw, top.media_type).manifests
    st = _store(store)
    for subject in subjects:
        document = payloads.build(str(parsed), subject.digest, f"wasmctr {__version__}")
        signature = attach.new(document, keys.sign(private, document))
        attached = attach.sign(client, parsed.repository, subject.digest, signature)
        referrer = referrers.push(client, parsed.repository, subject, signature)
        if st.has_blob(subject.digest):
            referrers.keep(st, parsed, subject.digest, referrers.Found(attached, [referrer]))
    return [s.digest for s in subjects]


def verify(ref: str, key: str | os.PathLike[str], *, insecure: bool = False, ca_cert: str | None = None) -> str:
    """Check that the image `ref` names on its registry has a signature of `key` (a PEM public key) for its
    digest, claiming its repository (cosign's and skopeo's payloads both do), under its `.sig` tag or as a
    referrer; returns the digest, else `SignatureRefused`."""
    from wasmctr.signing import policy, referrers, verify

    parsed = references.parse(ref)
    requirement = policy.Requirement("sigstoreSigned", ((os.fspath(key), _read_key(key)),),
                                     policy.Identity("matchRepository"))
    client = _client(parsed.registry, insecure, ca_cert)
    raw, _ = client.get_manifest_raw(parsed.repository, parsed.locator)
    digest = digests.of_bytes(raw)

    verify.check(parsed, digest, lambda: referrers.read(client, parsed.repository, digest).signatures,
                 policy.Policy(f"of key {os.fspath(key)}", (requirement,), {}))
    return digest


def _read_key(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{os.fspath(path)}: {exc.strerror}") from None


def _declared_type(raw: bytes, header_type: str) -> str:
    """A manifest's media type: its own `mediaType`, else the registry's Content-Type."""
    try:
        declared = json.loads(raw).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    return declared if isinstance(declared, str) and declared else header_type


def login(registry: str, username: str, password: str, *, insecure: bool = False,
          ca_cert: str | None = None) -> str:
    """Check the credentials against the registry, then save them as Docker does; returns where."""
    from wasmctr.registry import credentials
    from wasmctr.registry.client import Registry

    host = _registry_host(registry)
    who = credentials.Credentials(username, password)
    client = Registry(host, insecure=insecure, ca_cert=ca_cert, credentials=who)
    client.ping()
    return credentials.save(host, who)


def logout(registry: str) -> bool:
    from wasmctr.registry import credentials

    return credentials.remove(_registry_host(registry))


def _registry_host(registry: str) -> str:
    host = registry.removeprefix("https://").removeprefix("http://").rstrip("/")
    if not host or "/" in host:
        raise UsageError(f"{registry!r} is not a registry host (such as 127.0.0.1:5000 or ghcr.io)")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _executor(store: Store | None = None, map_cached_code: bool = False) -> Executor:
    """An executor whose compile cache lives in the store (`Executor` says when to map cached code)."""
    from wasmctr.running.executor import Executor

    return Executor.for_store(_store(store).root, map_cached_code)


def _device_dir(names: list[str], cleanup: list[Path]) -> Path:
    """A scratch /dev holding the granted default devices (`devices.populate`)."""
    from wasmctr.sandbox import devices

    if os.geteuid() != 0:
        raise UsageError(f"{_p('devices')} needs root: the device nodes are made with mknod")
    scratch = Path(tempfile.mkdtemp(prefix="wasmctr-dev-"))
    cleanup.append(scratch)
    try:
        return devices.populate(scratch / "dev", names)
    except ValueError as exc:
        raise UsageError(f"{_p('devices')}: {exc}") from None


class GuestFailed(subprocess.CalledProcessError, WasmctrError):
    """`wasmctr.run(..., check=True)`: the guest exited non-zero, trapped or was stopped. A
    `subprocess.CalledProcessError`, so code written for subprocess catches it; `result` is what `run`
    would have returned (`reason`, `message`, captured output)."""

    def __init__(self, result: Any) -> None:
        super().__init__(result.returncode, result.args, result.stdout, result.stderr)
        self.result = result

    def __str__(self) -> str:
        message = self.result.message
        return f"{super().__str__()}: {message}" if message else super().__str__()

    def spelled(self, spelling: Mapping[str, str]) -> str:
        return str(self)  # how a guest ended names no parameter


class GuestTimeout(subprocess.TimeoutExpired, WasmctrError):
    """`wasmctr.run(..., timeout=...)`: the guest was stopped at its deadline (a
    `subprocess.TimeoutExpired`, as `subprocess.run` raises); `result` holds its exit code (137) and
    what it wrote before."""

    def __init__(self, result: Any, timeout: float) -> None:
        super().__init__(result.args, timeout, result.stdout, result.stderr)
        self.result = result

    def spelled(self, spelling: Mapping[str, str]) -> str:
        return str(self)  # how a guest ended names no parameter


class Completed(subprocess.CompletedProcess[Any]):
    """What `run` returns: a `subprocess.CompletedProcess` (`args`, `returncode`, `stdout`, `stderr`,
    `check_returncode()`) that also says how the guest ended: `reason` (exit, trap, oom, timeout or
    signal) and `message`, the line `wasmctr run` prints for it."""

    def __init__(self, args: list[str], outcome: Outcome, stdout: bytes | str | None,
                 stderr: bytes | str | None) -> None:
        super().__init__(args, outcome.exit_code, stdout, stderr)
        self.reason = outcome.reason
        self.message = outcome.message

    @property
    def exit_code(self) -> int:
        """`returncode`, under the name `docker run` users know it by."""
        return self.returncode

    def check_returncode(self) -> None:
        if self.returncode:
            raise GuestFailed(self)


def run(target: str, args: list[str] | None = None, *, stdin: Any = None, input: bytes | str | None = None,
        stdout: Any = None, stderr: Any = None, capture_output: bool = False, text: bool = False,
        encoding: str | None = None, errors: str | None = None, check: bool = False,
        timeout: float | str | None = None, entrypoint: str | None = None, workdir: str | None = None,
        env: list[str] | None = None, env_files: list[str] | None = None, volumes: list[str] | None = None,
        tmpfs: list[str] | None = None, memory: str | None = None, fuel: int | None = None,
        wasm_features: str | None = None, opt_level: str | None = None, network: bool = False,
        deny_wasi: list[str] | None = None, allow_wasi: list[str] | None = None,
        syscall_policy: str = "refuse", platform: str | None = None, pull_missing: bool = True,
        user: str | None = None, devices: list[str] | None = None, insecure: bool = False,
        ca_cert: str | None = None, progress: Progress | None = None, hard_stop: bool = False,
        signature_policy: str | os.PathLike[str] | None = None, registries_d: str | os.PathLike[str] | None = None,
        store: Store | None = None, publish: str | None = None, workers: int | None = None,
        access_log: bool = False, max_body: str = "16m", max_headers: int = 100, max_header_bytes: str = "64k",
        max_concurrent: int = 64, header_timeout: str = "10s", reuse: int = 1,
        allow_hosts: list[str] | None = None) -> Completed:
    """Run an image (pulled first if it is not in the store) or a `.wasm` file under the WASI sandbox,
    as `subprocess.run` runs a program.

    stdio as `subprocess.run` takes it (`streams.py`): `stdout`/`stderr` as PIPE, DEVNULL, STDOUT, a
    file object, a descriptor or a path; `capture_output`, `input`, `text`/`encoding`/`errors`;
    `check=True` raises `GuestFailed` (a `subprocess.CalledProcessError`) for a non-zero exit, and
    `timeout` (seconds, or "10s") raises `GuestTimeout` (a `subprocess.TimeoutExpired`) once the guest
    is stopped. Unlike subprocess, stdin is closed unless given (True: ours), as `docker run` without -i.
    With a timeout the guest runs in a child interpreter (`isolated.py`), so that it ends even when
    blocked in a host call, and the caller's process goes on; otherwise on a thread of this one.
    `hard_stop` (for a process that exists for its guest, as `wasmctr run`) runs it on a thread even
    so, and ends this process if the guest cannot be stopped.

    Nothing is granted unless asked for: `volumes` ("HOST:GUEST[:ro]"), `env` ("K=V" or "K" to copy
    ours), `network`. `user` ("UID[:GID]", as root) runs the guest in a child process that becomes
    that user, with no capabilities, the container seccomp filter and Landlock (`wasmctr.sandbox.confined`).
    `devices` grants default device nodes at /dev ("/dev/null", "zero"...; as root: they are made with
    mknod).

    An image is run only if the signature policy accepts it (`pull`'s `signature_policy`), checked against the
    signatures stored with it, before anything of it is prepared: else `SignatureRefused`.

    `wasm_features` ("simd,-threads": wasmtime's names, -NAME off) and `opt_level` (none, speed,
    speed_and_size) set how the guest is compiled; they, `memory`, `timeout` and `fuel` replace what the
    image's `io.wasmctr.*` labels set (`wasmctr.running.launch`), a feature at a time.

    A wasi:http/proxy component is served instead, as `wasmctr run -p` serves it (docs/http.md): at `publish`
    (Docker's `[IP:]HOSTPORT[:PORT]`; default 127.0.0.1:8080) by `workers` forked processes, with the HTTP
    limits (`max_body`...), `timeout` and `memory` per request, an instance per request unless `reuse` > 1,
    outgoing requests (with `network`) only to `allow_hosts`,
    until SIGINT or SIGTERM (on the main thread; this call blocks till then): the result's returncode is
    then 0 or 143. `http_proxy` calls one in this process instead, without a socket.
    """
    from wasmctr.running import streams
    from wasmctr.running.executor import exit_process
    from wasmctr.running.http import serving

    serve = serving.options(publish, workers, access_log, max_body, max_headers, max_header_bytes, max_concurrent,
                            header_timeout, reuse, allow_hosts or [])
    ids = None
    if user is not None:
        from wasmctr.sandbox import confined

        ids = confined.parse_user(user)
    if capture_output:
        if stdout is not None or stderr is not None:
            raise UsageError("capture_output cannot be given with stdout or stderr")
        stdout = stderr = streams.PIPE
    out, err = streams.Output(stdout, "stdout"), streams.Output(stderr, "stderr")
    source = streams.Input(stdin, input, encoding)
    options = _run_options(list(args or []), entrypoint, workdir, env, env_files, volumes, tmpfs, memory, timeout,
                           fuel, network, deny_wasi, allow_wasi, syscall_policy, wasm_features, opt_level)
    st = _store(store)
    cleanup: list[Path] = []
    pumps = streams.Pumps()
    try:
        spec = _spec(target, options, platform, pull_missing, insecure, ca_cert, progress, st, cleanup,
                     signature_policy, registries_d)
        if devices:
            spec.devices = _device_dir([d.removeprefix("/dev/") for d in devices], cleanup)
        runner = _executor(st, map_cached_code=True)  # this process, or its forked --user child, closes nothing
        spec.serve = serve
        prepared = runner.prepare(spec)
        if prepared.world.listens:
            if spec.mounts:
                raise UsageError("a wasi:http proxy component reaches no files: drop -v and --tmpfs")
            outcome = (runner.start(prepared, exit_process if hard_stop else None) if ids is None
                       else confined.run(runner, prepared, *ids))
        elif publish is not None:
            raise UsageError(f"{_p('publish')}: {_NOT_A_PROXY}")
        elif spec.timeout is not None and not hard_stop and ids is None:
            from wasmctr.running import isolated

            spec.stdin, popen_stdin = source.popen()
            outcome, got_out, got_err = isolated.run(spec, st.root, popen_stdin, out.popen(), err.popen(),
                                                     source.data)
            out.deliver(got_out)
            err.deliver(got_err)
        else:
            spec.stdin = source.path(cleanup)
            spec.stdout, spec.stderr = streams.wasi_paths(out, err, pumps)
            if ids is None:
                outcome = runner.start(prepared, exit_process if hard_stop else None)
            else:
                for mount in spec.mounts:
                    if mount.host in cleanup:  # a --tmpfs directory: writable by any user, as Docker's (1777)
                        os.chmod(mount.host, 0o1777)
                outcome = confined.run(runner, prepared, *ids)
    finally:
        pumps.finish(_PUMP_WAIT_SECONDS)  # after the run: the guest's store, and its ends of the pipes, are gone
        out.close()
        err.close()
        for directory in cleanup:
            shutil.rmtree(directory, ignore_errors=True)
    decode = streams.decoder(text, encoding, errors)
    result = Completed([target, *(args or [])], outcome, out.result(decode), err.result(decode))
    if outcome.reason == "timeout":
        raise GuestTimeout(result, spec.timeout or 0)
    if check:
        result.check_returncode()
    return result


_NOT_A_PROXY = "the guest is not a wasi:http proxy component (it exports no incoming-handler)"


def _run_options(args: list[str], entrypoint: str | None, workdir: str | None, env: list[str] | None,
                 env_files: list[str] | None, volumes: list[str] | None, tmpfs: list[str] | None,
                 memory: str | None, timeout: float | str | None, fuel: int | None, network: bool,
                 deny_wasi: list[str] | None, allow_wasi: list[str] | None, syscall_policy: str,
                 wasm_features: str | None = None, opt_level: str | None = None) -> RunOptions:
    from wasmctr.running.launch import RunOptions
    from wasmctr.running.policy import Policy

    return RunOptions(args=args, entrypoint=entrypoint, workdir=workdir, env=list(env or []),
                      env_files=list(env_files or []), volumes=list(volumes or []), tmpfs=list(tmpfs or []),
                      memory=memory, timeout=None if timeout is None else str(timeout), fuel=fuel,
                      policy=Policy.from_flags(network, deny_wasi, allow_wasi, syscall_policy),
                      wasm_features=wasm_features, opt_level=opt_level)


def _spec(target: str, options: RunOptions, platform: str | None, pull_missing: bool, insecure: bool,
          ca_cert: str | None, progress: Progress | None, st: Store, cleanup: list[Path],
          signature_policy: str | os.PathLike[str] | None, registries_d: str | os.PathLike[str] | None) -> RunSpec:
    """The run spec of a `.wasm` file or of an image (pulled first if missing and `pull_missing`), which the
    signature policy must accept, checked against the signatures stored with it."""
    from wasmctr.running import launch
    from wasmctr.signing import policy

    if _is_file_target(target):
        if not Path(target).is_file():
            raise UsageError(f"{target}: no such file")
        return launch.spec_for_file(Path(target), options, cleanup)
    wanted = _platforms(platform)[0] if platform else None
    rules = policy.load(signature_policy)
    if pull_missing:
        pull_if_missing(target, platform=platform, insecure=insecure, ca_cert=ca_cert, progress=progress,
                        signature_policy=signature_policy, registries_d=registries_d, store=st)
    desc, parsed = st.lookup(target)
    _admit_stored(st, desc, parsed, rules)
    return launch.spec_for_image(st, stored.load(st, desc, wanted), options, cleanup)


def http_proxy(target: str, *, env: list[str] | None = None, env_files: list[str] | None = None,
               memory: str | None = None, timeout: float | str | None = None, fuel: int | None = None,
               deny_wasi: list[str] | None = None, allow_wasi: list[str] | None = None,
               syscall_policy: str = "refuse", max_body: str = "16m", max_headers: int = 100,
               max_header_bytes: str = "64k", reuse: int = 1, platform: str | None = None,
               pull_missing: bool = True, insecure: bool = False, ca_cert: str | None = None,
               progress: Progress | None = None, signature_policy: str | os.PathLike[str] | None = None,
               registries_d: str | os.PathLike[str] | None = None, store: Store | None = None) -> ProxyClient:
    """A wasi:http proxy component (an image, pulled first if missing, or a `.wasm` file) to call from this
    process, without a listening socket: for tests, as a web framework's test client.
    `with wasmctr.http_proxy("app.wasm") as proxy: proxy.request("GET", "/")` gives an `HttpResponse`
    (`status`, `headers`, `body`, `trailers`). Each request goes through the host code `run` serves with
    (the same HTTP parser and limits, `timeout` and `memory` per request, a fresh instance per request
    unless `reuse` > 1, 500 for an error-code, a trap or a deadline) over a socketpair of its own
    (`wasmctr.running.http.local`). The parameters are `run`'s; a guest that is not a proxy is refused."""
    from wasmctr.running.http import serving
    from wasmctr.running.http.local import ProxyClient
    from wasmctr.running.worlds.http_proxy import http_host

    serve = serving.options(max_body=max_body, max_headers=max_headers, max_header_bytes=max_header_bytes,
                            reuse=reuse)
    options = _run_options([], None, None, env, env_files, None, None, memory, timeout, fuel, False, deny_wasi,
                           allow_wasi, syscall_policy)
    st = _store(store)
    cleanup: list[Path] = []

    def remove() -> None:
        for directory in cleanup:
            shutil.rmtree(directory, ignore_errors=True)

    try:
        spec = _spec(target, options, platform, pull_missing, insecure, ca_cert, progress, st, cleanup,
                     signature_policy, registries_d)
        spec.serve = serve
        prepared = _executor(st, map_cached_code=True).prepare(spec)
        if not prepared.world.listens:
            raise UsageError(f"{target}: {_NOT_A_PROXY}")
        return ProxyClient(http_host(prepared.program, spec, prepared.denied), remove)
    except BaseException:
        remove()
        raise
