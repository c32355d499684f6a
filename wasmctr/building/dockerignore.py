""".dockerignore, as Docker reads and matches it (moby/patternmatcher and its ignorefile reader).

Reading: a line starting with `#` is a comment; lines are trimmed; `!` marks an exception; each
pattern is cleaned as a path, and a leading `/` dropped (`/foo/bar` is `foo/bar`). Matching: `*` and `?`
never cross `/`, `**` crosses any number of directories (`**/x` also matches `x`, a trailing `**`
everything below), `[...]` are Go character classes (`[^...]` negated); the last pattern that matches
wins. A path is excluded when it or one of its parent directories matches, so `*.md` excludes `a.md`
but not `docs/a.md`, and `docs` with `!docs/README.md` keeps that one file (the walk has to enter
excluded directories while exceptions exist). Like all of building, it imports only the parts below it
(pyproject.toml's `parts` import contract).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from wasmctr.errors import DockerfileError
from wasmctr.record import record

# regexp metacharacters that are not filepath.Match syntax: escaped, as patternmatcher does
_ESCAPED = set(".+()|{}$")


def read(path: Path) -> list[str]:
    """The patterns of a .dockerignore file, as Docker's ignorefile reader returns them."""
    patterns = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        if line:
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line.lstrip("/") or "/"
        patterns.append("!" + line if exception else line)
    return patterns


@record(frozen=True)
class _Pattern:
    text: str
    exception: bool
    kind: str  # exact, prefix, suffix or regexp
    regexp: re.Pattern[str] | None

    def matches(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.match(path) is not None


class Matcher:
    """A .dockerignore's patterns, compiled; `excludes(path)` for a path relative to the context."""

    def __init__(self, patterns: list[str], source: str = ".dockerignore") -> None:
        self.patterns: list[_Pattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = posixpath.normpath(text)
            exception = text.startswith("!")
            if exception:
                if text == "!":
                    raise DockerfileError(f'{source}: illegal exclusion pattern: "!"')
                text = text[1:]
            _check_syntax(text, source)
            try:
                self.patterns.append(_compile(text, exception))
            except re.error as exc:  # an escape Go's regexp refuses too, such as `\\q`
                raise DockerfileError(f"{source}: bad pattern {text!r}: {exc}") from None
        self.has_exceptions = any(p.exception for p in self.patterns)

    @classmethod
    def for_context(cls, context: Path) -> Matcher:
        path = context / ".dockerignore"
        return cls(read(path), str(path)) if path.is_file() else cls([])

    def excludes(self, path: str) -> bool:
        """Whether `path` (slash-separated, relative to the context) is left out: patternmatcher's
        MatchesOrParentMatches."""
        path = posixpath.normpath(path)
        if path == ".":
            return False
        parent = posixpath.dirname(path)
        parents = parent.split("/") if parent else []
        matched = False
        for pattern in self.patterns:
            if pattern.exception != matched:  # an inclusion already matched, or an exception with nothing to undo
                continue
            match = pattern.matches(path) or any(pattern.matches("/".join(parents[: i + 1]))
                                                 for i in range(len(parents)))
            if match:
                matched = not pattern.exception
        return matched


def _compile(text: str, exception: bool) -> _Pattern:
    """patternmatcher's compile: an exact, prefix (`dir/**`) or suffix (`**/x`) match where one will do,
    else a regexp."""
    regexp = "^"
    kind = "exact"
    i = 0
    while i < len(text):
        start, ch = i, text[i]
        i += 1
        if ch == "*" and i < len(text) and text[i] == "*":
            i += 1
            if i < len(text) and text[i] == "/":  # `**/` is `**`
                i += 1
            if i < len(text):
                regexp += "(.*/)?"
                kind = "regexp"
            elif kind == "exact":  # a trailing `**`: everything below
                kind = "prefix"
            else:
                regexp += ".*"
                kind = "regexp"
            if start == 0:
                kind = "suffix"
        elif ch in "*?":
            regexp += "[^/]*" if ch == "*" else "[^/]"
            kind = "regexp"
        elif ch in _ESCAPED:
            regexp += "\\" + ch
        elif ch == "\\":  # escapes the next character (`_check_syntax` saw that there is one)
            regexp += "\\" + text[i]
            i += 1
            kind = "regexp"
        elif ch in "[]":
            regexp += ch
            kind = "regexp"
        else:
            regexp += ch
    return _Pattern(text, exception, kind, re.compile(regexp + "$") if kind == "regexp" else None)


def _check_syntax(text: str, source: str) -> None:
    """Refuse what Go's filepath.Match calls a bad pattern: an unclosed or empty `[...]`, a class with
    an unescaped `-` or `]` where a character belongs, a trailing `\\`."""
    i = 0

    def char(j: int) -> int:  # one class character, escaped or not; the index after it
        if j >= len(text) or text[j] in "-]":
            raise DockerfileError(f"{source}: bad pattern {text!r}")
        if text[j] == "\\":
            j += 1
        if j + 1 >= len(text):  # the class, or the escape, never closes
            raise DockerfileError(f"{source}: bad pattern {text!r}")
        return j + 1

    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise DockerfileError(f"{source}: bad pattern {text!r} (a trailing \\)")
            i += 2
        elif ch == "[":
            i += 1
            if i < len(text) and text[i] == "^":
                i += 1
            first = True
            while True:
                if i < len(text) and text[i] == "]" and not first:
                    i += 1
                    break
                i = char(i)
                if i < len(text) and text[i] == "-":
                    i = char(i + 1)
                first = False
        else:
            i += 1
