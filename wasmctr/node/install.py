"""`wasmctr node install` and `uninstall`: the shim binaries where containerd finds them, and our runtimes in
containerd's config, in the schema of the containerd that reads it.

The binaries are symbolic links in a directory on containerd's PATH (`/usr/local/bin`) to the scripts
pip installed beside this interpreter, so an upgrade of wasmctr needs no new install; the config names
them by `runtime_path` too. The schema is the config's own (its `version`); a config that has none yet
(empty, or comments only) gets the version the node's containerd writes (`containerd --version`, or
`--containerd-version` for a template of a containerd not on PATH, as k3s's and rke2's). A change is
written atomically after a copy of the old file is kept beside it (`CONFIG.wasmctr.bak`); a config that
already says what we would write is not touched, so a second install changes no byte.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from wasmctr.errors import UsageError, WasmctrError, parameter
from wasmctr.image import atomic
from wasmctr.node import runtimes, tomledit


@dataclass
class Change:
    """What an install or uninstall did (or, dry, would do) to the node."""

    config: Path
    before: str
    after: str
    version: int  # the config's schema
    backup: Path | None = None
    notes: list[str] = field(default_factory=list)  # one line each: links made or removed

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        return "".join(difflib.unified_diff(self.before.splitlines(keepends=True), self.after.splitlines(keepends=True),
                                            f"{self.config}", f"{self.config} (wasmctr node)"))


def install(config: Path, bin_dir: Path, containerd_version: str | None = None, dry_run: bool = False) -> Change:
    before = _read(config)
    parsed = tomledit.parse(before, str(config))
    version = _schema(config, parsed, containerd_version)
    tables = {r.name: runtimes.entry(r, bin_dir) for r in runtimes.RUNTIMES}
    parent = runtimes.runtimes_path(version)
    if not tomledit.dig(parsed, parent):
        tables = {"runc": runtimes.RUNC, **tables}  # entries of our own would replace the built-in runc
    after = tomledit.add_tables(before, parent, tables, str(config), {} if parsed else {"version": version})
    change = Change(config, before, after, version)
    for runtime in runtimes.RUNTIMES:
        change.notes += _link(runtimes.installed_binary(runtime), bin_dir / runtime.binary, dry_run)
    if not dry_run:
        _write(change)
    return change


def uninstall(config: Path, bin_dir: Path, dry_run: bool = False) -> Change:
    before = _read(config)
    parsed = tomledit.parse(before, str(config))
    version = parsed.get("version")
    if version not in runtimes.CRI_PLUGIN:
        raise UsageError(f"{config}: config version {version!r}: wasmctr node install writes versions 2 and 3")
    names = [r.name for r in runtimes.RUNTIMES]
    after = tomledit.remove_tables(before, runtimes.runtimes_path(version), names, str(config))
    change = Change(config, before, after, version)
    for runtime in runtimes.RUNTIMES:
        change.notes += _unlink(runtimes.installed_binary(runtime), bin_dir / runtime.binary, dry_run)
    if not dry_run:
        _write(change)
    return change


def restart_containerd() -> str:
    """Restart containerd where systemd runs it; the line to print. WasmctrError where it does not."""
    systemctl = shutil.which("systemctl")
    if not (Path("/run/systemd/system").is_dir() and systemctl and subprocess.run(
            [systemctl, "is-active", "--quiet", "containerd"], capture_output=True).returncode == 0):
        raise WasmctrError("containerd is not run by systemd here (no active containerd.service): restart it "
                           "yourself for it to read its new config")
    done = subprocess.run([systemctl, "restart", "containerd"], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise WasmctrError(f"systemctl restart containerd: {done.stderr.strip() or done.returncode}")
    return "restarted containerd (systemctl restart containerd)"


def _read(config: Path) -> str:
    try:
        return config.read_text()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{config}: {getattr(exc, 'strerror', None) or exc}") from None


def _schema(config: Path, parsed: dict[str, object], containerd_version: str | None) -> int:
    """The config version to write in: the config's own, checked against the containerd that reads it."""
    containerd = containerd_version or runtimes.containerd_version()
    version = parsed.get("version")
    if version is None and parsed:
        raise UsageError(f"{config} has no `version`: containerd reads it as version 1, which wasmctr does not "
                         "write; convert it with `containerd config migrate` (2.x) or start from "
                         "`containerd config default`")
    if version is None:
        if containerd is None:
            raise UsageError("no containerd on PATH to say which config version to write: give "
                             f"{parameter('containerd_version')}")
        return runtimes.config_version_for(containerd)
    if version not in runtimes.CRI_PLUGIN:
        raise UsageError(f"{config}: config version {version!r}: wasmctr node install writes versions 2 and 3")
    if version == 3 and containerd is not None and runtimes.major(containerd) < 2:
        raise UsageError(f"{config} is config version 3, which containerd {containerd} cannot read (2.0 and later "
                         f"do); for a template of another containerd, give its "
                         f"{parameter('containerd_version')}")
    return int(version)  # type: ignore[call-overload]


def _write(change: Change) -> None:
    if not change.changed:
        return
    mode = 0o644
    if change.config.exists():
        mode = change.config.stat().st_mode & 0o7777
        change.backup = change.config.with_name(change.config.name + ".wasmctr.bak")
        with atomic.open_output(change.backup, mode) as f:
            f.write(change.before.encode())
    change.config.parent.mkdir(parents=True, exist_ok=True)
    with atomic.open_output(change.config, mode) as f:
        f.write(change.after.encode())


def _link(source: Path, link: Path, dry_run: bool) -> list[str]:
    """`link` -> `source`, unless it is that file already; a file there that is not a link is refused."""
    if not source.is_file():
        raise WasmctrError(f"{source} is missing: the shim binaries are installed with wasmctr "
                           "(pip install wasmctr)")
    if link.exists() and link.resolve() == source.resolve():
        return []
    if link.exists() and not link.is_symlink():
        raise WasmctrError(f"{link} is there and is not a link to wasmctr's shim: remove it, or give another "
                           f"{parameter('bin_dir')}")
    if not dry_run:
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{link.name}.wasmctr-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(source)
        temporary.replace(link)  # over an older install's link in one step
    return [f"linked {link} -> {source}"]


def _unlink(source: Path, link: Path, dry_run: bool) -> list[str]:
    """Remove `link` if it is a link to `source` (another file of that name is not ours)."""
    if not link.is_symlink() or link.resolve() != source.resolve():
        return []
    if not dry_run:
        link.unlink()
    return [f"removed {link}"]
