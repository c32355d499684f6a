"""The Dockerfile subset a wasm image needs, turned into a build plan.

Supported: `FROM scratch` (once), `COPY`/`ADD` of local files (files, directories, globs, `--chmod`,
numeric `--chown`), `ENTRYPOINT`, `CMD` (exec form), `ENV`, `WORKDIR`, `LABEL`, `ARG`, `USER`, comments,
line continuations, the `escape` directive, variable substitution as Docker does it, and
`.dockerignore`. Everything else (`RUN`, `FROM <image>`, multi-stage, `ADD <url>`) needs a Linux base
image or a shell that a wasm image does not have, and is refused with `FILE:LINE: INSTRUCTION: why`.
This module reads the build context; it writes nothing.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import stat
from pathlib import Path

from wasmctr.building import dockerignore
from wasmctr.errors import DockerfileError, parameter
from wasmctr.layers.layer import LayerEntry
from wasmctr.record import field, record

DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
NEEDS_BASE = {
    "RUN": "RUN needs a shell and an OS; compile your program to wasm beforehand and COPY the .wasm",
    "SHELL": "a wasm image has no shell",
    "HEALTHCHECK": "health checks run a command inside the container, which a wasm image cannot",
    "ONBUILD": "ONBUILD triggers are not supported",
    "EXPOSE": "not supported by wasmctr yet; publish ports in your runtime configuration",
    "VOLUME": f"not supported by wasmctr; grant directories at run time with {parameter('volumes')}",
    "STOPSIGNAL": "not supported by wasmctr",
    "MAINTAINER": "deprecated; use LABEL org.opencontainers.image.authors=...",
}


@record
class BuildPlan:
    """What a Dockerfile asks for: the files of the image and its runtime configuration."""

    files: dict[str, LayerEntry] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)
    user: str = ""
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def env_list(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.env.items()]


def plan_for_wasm(path: Path) -> BuildPlan:
    """The plan `wasmctr build app.wasm` uses: the module at `/app.wasm`, which is the entrypoint."""
    guest = "/" + path.name
    return BuildPlan(files={guest: LayerEntry(guest, path, 0o755)}, entrypoint=[guest])


def parse(dockerfile: Path, context: Path, build_args: dict[str, str]) -> BuildPlan:
    try:
        text = dockerfile.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DockerfileError(f"{dockerfile}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return _Parser(dockerfile, context, build_args).run(text)


class _Parser:
    def __init__(self, dockerfile: Path, context: Path, build_args: dict[str, str]) -> None:
        self.dockerfile = dockerfile
        self.context = context.resolve()
        self.build_args = build_args
        self.plan = BuildPlan()
        self.args: dict[str, str] = {}
        self.seen_from = False
        self.line = 0
        self.instruction = ""
        self.ignore = dockerignore.Matcher.for_context(self.context)

    def fail(self, message: str) -> DockerfileError:
        return DockerfileError(f"{self.dockerfile}:{self.line}: {self.instruction}: {message}")

    def run(self, text: str) -> BuildPlan:
        for self.line, self.instruction, rest in _logical_lines(text):
            handler = getattr(self, "_" + self.instruction.lower(), None)
            if self.instruction in NEEDS_BASE:
                raise self.fail(NEEDS_BASE[self.instruction])
            if handler is None:
                raise self.fail("unknown instruction")
            if not self.seen_from and self.instruction not in ("FROM", "ARG"):
                raise self.fail("the first instruction must be FROM scratch (ARG may precede it)")
            handler(rest)
        if not self.seen_from:
            self.line, self.instruction = 1, "FROM"
            raise self.fail("no FROM instruction; a wasm Dockerfile starts with FROM scratch")
        return self.plan

    # -- instructions ------------------------------------------------------------------------------

    def _from(self, rest: str) -> None:
        if self.seen_from:
            raise self.fail("multi-stage builds are not supported; use one FROM scratch stage")
        words = self.words(rest)
        words = [w for w in words if not w.startswith("--platform=")]
        if len(words) == 3 and words[1].lower() == "as":
            words = words[:1]
        if words != ["scratch"]:
            raise self.fail(f"only FROM scratch is supported, not {' '.join(words)!r}: a wasm image needs no base")
        self.seen_from = True

    def _arg(self, rest: str) -> None:
        for word in self.words(rest, substitute=self.seen_from):
            name, eq, default = word.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise self.fail(f"invalid argument name {name!r}")
            value = self.build_args.get(name, default if eq else None)
            if value is not None:
                self.args[name] = value
            else:
                self.args.pop(name, None)

    def _env(self, rest: str) -> None:
        self.plan.env.update(self.pairs(rest, legacy=True))
        self.plan.origins.setdefault("ENV", self.where)

    def _label(self, rest: str) -> None:
        self.plan.labels.update(self.pairs(rest, legacy=False))

    def _workdir(self, rest: str) -> None:
        words = self.words(rest)
        if len(words) != 1:
            raise self.fail("expects exactly one path")
        path = posixpath.normpath(posixpath.join(self.plan.workdir, words[0]))
        path = "/" + path.lstrip("/")
        self.plan.workdir = path
        if path != "/" and path not in self.plan.files:
            self.plan.files[path] = LayerEntry(path)
        self.plan.origins.setdefault("WORKDIR", self.where)

    def _user(self, rest: str) -> None:
        words = self.words(rest)
        if len(words) != 1:
            raise self.fail("expects one user[:group]")
        self.plan.user = words[0]
        self.plan.origins.setdefault("USER", self.where)

    def _entrypoint(self, rest: str) -> None:
        self.plan.entrypoint = self.exec_form(rest)

    def _cmd(self, rest: str) -> None:
        self.plan.cmd = self.exec_form(rest)
        self.plan.origins.setdefault("CMD", self.where)

    def _add(self, rest: str) -> None:
        self._copy(rest, add=True)

    def _copy(self, rest: str, add: bool = False) -> None:
        words = self.words(rest) if not rest.lstrip().startswith("[") else None
        flags: dict[str, str] = {}
        if words is None:
            flag_text, _, array = rest.partition("[")
            words = [w for w in self.words(flag_text)] + self.json_array("[" + array)
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        for name in flags:
            if name == "from":
                raise self.fail("--from needs another stage or image; multi-stage builds are not supported")
            if name not in ("chmod", "chown", "link"):
                raise self.fail(f"unsupported flag --{name}")
        if len(words) < 2:
            raise self.fail("expects at least one source and a destination")
        *sources, dest = words
        mode = self.chmod(flags["chmod"]) if "chmod" in flags else None
        uid, gid = self.chown(flags["chown"]) if "chown" in flags else (0, 0)
        matches: list[Path] = []
        for source in sources:
            if add and re.match(r"^[a-z][a-z0-9+.-]*://", source):
                raise self.fail(f"ADD {source}: remote URLs are not supported; download it and COPY the file")
            found = self.resolve_sources(source)
            if add and any(p.is_file() and _is_archive(p) for p in found):
                raise self.fail(f"ADD would unpack the archive {source}; wasmctr does not, so use COPY")
            matches.extend(found)
        dest_path = posixpath.normpath(posixpath.join(self.plan.workdir, dest))
        dest_path = "/" + dest_path.lstrip("/")
        into_dir = dest.endswith("/") or len(matches) > 1 or any(p.is_dir() for p in matches)
        for src in matches:
            if src.is_dir():
                self.copy_dir(src, dest_path, mode, uid, gid)
            else:
                target = posixpath.join(dest_path, src.name) if into_dir else dest_path
                self.add_file(src, target, mode, uid, gid)

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.dockerfile}:{self.line}"

    def words(self, text: str, substitute: bool = True) -> list[str]:
        try:
            return _split_words(text, {**self.args, **self.plan.env} if substitute else {})
        except ValueError as exc:
            raise self.fail(str(exc)) from None

    def pairs(self, rest: str, legacy: bool) -> dict[str, str]:
        words = self.words(rest)
        if legacy and words and "=" not in words[0]:
            key, _, value = rest.strip().partition(" ")
            return {key: " ".join(self.words(value)) if value.strip() else ""}
        out = {}
        for word in words:
            key, eq, value = word.partition("=")
            if not eq or not key:
                raise self.fail(f"expected KEY=VALUE, got {word!r}")
            out[key] = value
        return out

    def exec_form(self, rest: str) -> list[str]:
        if not rest.lstrip().startswith("["):
            raise self.fail(
                f"shell form {rest.strip()!r} needs /bin/sh, which a wasm image does not have; "
                f'use the exec form, e.g. ["/app.wasm", "arg"]'
            )
        return self.json_array(rest)

    def json_array(self, text: str) -> list[str]:
        try:
            value = json.loads(text)
        except ValueError:
            raise self.fail(f"not a JSON array of strings: {text.strip()}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"not a JSON array of strings: {text.strip()}")
        return value

    def chmod(self, value: str) -> int:
        if not re.fullmatch(r"[0-7]{3,4}", value):
            raise self.fail(f"--chmod={value}: expected an octal mode such as 755")
        if int(value, 8) & 0o6000:
            raise self.fail(f"--chmod={value}: setuid and setgid bits are not allowed in an image")
        return int(value, 8)

    def chown(self, value: str) -> tuple[int, int]:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", value)
        if not m:
            raise self.fail(f"--chown={value}: a scratch image has no /etc/passwd; use numeric uid[:gid]")
        return int(m.group(1)), int(m.group(2) or m.group(1))

    def resolve_sources(self, source: str) -> list[Path]:
        rel = posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."
        if rel == ".." or rel.startswith("../"):
            raise self.fail(f"{source}: outside the build context {self.context}")
        if glob.has_magic(rel):
            names = sorted(glob.glob(rel, root_dir=self.context, include_hidden=True))
        else:
            names = [rel] if os.path.lexists(self.context / rel) else []
        # an excluded directory may still hold files an exception (`!dir/file`) takes back: copy_dir decides
        found = [self.context / n for n in names if not self.ignore.excludes(n)
                 or (self.ignore.has_exceptions and (self.context / n).is_dir())]
        if not found:
            raise self.fail(f"{source}: not found in the build context {self.context}")
        for path in found:
            real = path.resolve()
            if real != self.context and self.context not in real.parents:
                raise self.fail(f"{source}: resolves outside the build context {self.context}")
        return found

    def copy_dir(self, src: Path, dest: str, mode: int | None, uid: int, gid: int) -> None:
        if dest != "/":
            self.plan.files[dest] = LayerEntry(dest, None, mode or _perm(src), uid, gid)
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(dirnames + filenames):
                path = base / name
                rel = path.relative_to(self.context).as_posix()
                if self.ignore.excludes(rel):
                    if name in dirnames and not self.ignore.has_exceptions:
                        dirnames.remove(name)
                    continue  # an excluded directory is entered while exceptions may take a file back
                target = posixpath.join(dest, path.relative_to(src).as_posix())
                if path.is_symlink():
                    self.plan.files[target] = LayerEntry(target, None, 0o777, uid, gid, os.readlink(path))
                    if name in dirnames:
                        dirnames.remove(name)
                elif path.is_dir():
                    self.plan.files[target] = LayerEntry(target, None, mode or _perm(path), uid, gid)
                else:
                    self.add_file(path, target, mode, uid, gid)

    def add_file(self, src: Path, target: str, mode: int | None, uid: int, gid: int) -> None:
        st = src.stat()
        if not stat.S_ISREG(st.st_mode):
            raise self.fail(f"{src}: not a regular file")
        self.plan.files[target] = LayerEntry(target, src, mode if mode is not None else _perm(src), uid, gid)


def _perm(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst"))


def _logical_lines(text: str) -> list[tuple[int, str, str]]:
    """(first line number, INSTRUCTION, rest) for each instruction, comments and continuations resolved."""
    lines = text.splitlines()
    escape = "\\"
    start = 0
    for i, line in enumerate(lines):
        m = DIRECTIVE.match(line.strip())
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
        start = i + 1
    out: list[tuple[int, str, str]] = []
    buffer, first = "", 0
    for number, line in enumerate(lines[start:], start + 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and buffer):
            continue
        if not buffer:
            first = number
        if stripped.endswith(escape):
            buffer += stripped[: -len(escape)] + " "
            continue
        buffer += stripped
        if buffer.strip():
            keyword, _, rest = buffer.strip().partition(" ")
            out.append((first, keyword.upper(), rest.strip()))
        buffer = ""
    if buffer.strip():
        keyword, _, rest = buffer.strip().partition(" ")
        out.append((first, keyword.upper(), rest.strip()))
    return out


def _split_words(text: str, env: dict[str, str]) -> list[str]:
    """Split on blanks, honour quotes and backslashes, and expand $VAR, ${VAR}, ${VAR:-w}, ${VAR:+w}."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    i, n = 0, len(text)
    quote = ""
    while i < n:
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                current.append(c)
            i += 1
            continue
        if c == "\\" and i + 1 < n:
            current.append(text[i + 1])
            in_word = True
            i += 2
            continue
        if c == "$":
            m = VARIABLE.match(text, i)
            if m:
                name = m.group(1) or m.group(4)
                value = env.get(name)
                if m.group(2) == "-":
                    value = value if value else _expand(m.group(3), env)
                elif m.group(2) == "+":
                    value = _expand(m.group(3), env) if value else ""
                current.append(value or "")
                in_word = True
                i = m.end()
                continue
        if quote == '"':
            if c == '"':
                quote = ""
            else:
                current.append(c)
        elif c in "'\"":
            quote = c
            in_word = True
        elif c.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(c)
            in_word = True
        i += 1
    if quote:
        raise ValueError(f"unterminated {quote} quote")
    if in_word:
        words.append("".join(current))
    return words


def _expand(text: str, env: dict[str, str]) -> str:
    return "".join(_split_words(text.replace(" ", "\\ "), env)) if text else ""
