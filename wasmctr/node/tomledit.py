"""Add runtime tables to a containerd config, and take them out again, by editing its text as little as can be.

An operator's config carries comments, an order and settings wasmctr knows nothing of; a TOML writer
would drop the first two. So the text is edited line by line: the tables we add go, as one block
between a start and an end comment, right after the config's last runtime table (at the end where it
names none), indented as its neighbours and quoted as its headers are; an entry that is there already
with other values has just those lines replaced. Uninstalling removes that block, so install then
uninstall gives the file back byte for byte. Every edit is checked by parsing the result with tomllib:
it must be the old config with exactly our change, or nothing is written and the edit is refused in one
line (a layout we do not follow, as runtimes written as inline tables, is to be edited by hand).
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from typing import Any

from wasmctr.errors import UsageError

START = "# >>> wasmctr node install: `wasmctr node uninstall` removes down to the end line >>>"
END = "# <<< wasmctr node install <<<"


class LayoutError(UsageError):
    """The edit would not give the config we meant (see the module's docstring)."""


def parse(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where} is not valid TOML: {exc}") from None


def dig(tree: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """The table at `path`, {} where there is none."""
    for key in path:
        tree = tree.get(key) if isinstance(tree, dict) else None  # type: ignore[assignment]
    return tree if isinstance(tree, dict) else {}


def add_tables(text: str, parent: list[str], tables: dict[str, dict[str, Any]], where: str,
               root_keys: dict[str, Any] | None = None) -> str:
    """`text` with table `parent.NAME` holding the keys given for each NAME (other keys kept); `root_keys`
    (`version`) open our block, which only a config with no table yet can take."""
    old = parse(text, where)
    present = dig(old, parent)
    lines = text.splitlines(keepends=True)
    headers = _headers(lines)
    missing = {}
    for name, keys in tables.items():
        if name not in present:
            missing[name] = keys
        elif any(present[name].get(k) != v for k, v in keys.items()):
            lines = _set_keys(lines, _find(headers, [*parent, name], where), keys)
            headers = _headers(lines)
    if missing or root_keys:
        lines = _insert_block(lines, headers, parent, missing, root_keys or {})
    new = "".join(lines)
    expected = {**copy.deepcopy(old), **(root_keys or {})}
    target = expected
    for key in parent:
        target = target.setdefault(key, {})
    for name, keys in tables.items():
        target.setdefault(name, {}).update(keys)
    _check(new, expected, where)
    return new


def remove_tables(text: str, parent: list[str], names: list[str], where: str) -> str:
    """`text` without tables `parent.NAME` (and their sub-tables): our block goes whole, with what it
    held; a table written by hand goes from its header to the next table not below it."""
    old = parse(text, where)
    lines = text.splitlines(keepends=True)
    removed = set(names)
    marks = [i for i, line in enumerate(lines) if line.strip() in (START, END)]
    if len(marks) == 2 and lines[marks[0]].strip() == START:
        first, last = marks
        block = parse("".join(lines[first:last + 1]), where)
        removed |= set(dig(block, parent))
        old = {k: v for k, v in old.items() if k not in block or isinstance(v, dict)}  # its `version`
        if first and not lines[first - 1].strip():
            first -= 1  # the blank line install put before the block
        lines = lines[:first] + lines[last + 1:]
    for name in names:
        if name in dig(parse("".join(lines), where), parent):
            lines = _cut_table(lines, [*parent, name], where)
    expected = copy.deepcopy(old)
    for name in removed:
        dig(expected, parent).pop(name, None)
    new = "".join(lines)
    _check(new, expected, where)
    return new


def _headers(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(line index, key path) of every table header (`[a."b".c]`, `[[a.b]]`), read by tomllib itself."""
    found = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("["):
            continue
        try:
            tree: Any = tomllib.loads(stripped)
        except tomllib.TOMLDecodeError:
            continue  # a line of a multi-line array
        path = []
        while isinstance(tree, dict) and len(tree) == 1:
            key, tree = next(iter(tree.items()))
            path.append(key)
        found.append((i, path))
    return found


def _find(headers: list[tuple[int, list[str]]], path: list[str], where: str) -> int:
    for i, found in headers:
        if found == path:
            return i
    raise LayoutError(f"{where}: table {'.'.join(path)} is not written as a [table] of its own (an inline "
                      "table or dotted keys): edit it by hand")


def _block_end(lines: list[str], headers: list[tuple[int, list[str]]], start: int) -> int:
    """The index of the first header after line `start`, or the end."""
    return next((i for i, _ in headers if i > start), len(lines))


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _set_keys(lines: list[str], header: int, keys: dict[str, Any]) -> list[str]:
    """The table at line `header` with each of `keys` set: its `key = ...` line replaced, or one added
    under the header."""
    lines = list(lines)
    end = _block_end(lines, _headers(lines), header)
    indent = _indent(lines[header]) + "  "
    for key, value in keys.items():
        assignment = f"{indent}{key} = {_value(value)}\n"
        at = next((i for i in range(header + 1, end) if re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), None)
        if at is None:
            lines.insert(header + 1, assignment)
            end += 1
        else:
            lines[at] = _indent(lines[at]) + assignment.lstrip()
    return lines


def _insert_block(lines: list[str], headers: list[tuple[int, list[str]]], parent: list[str],
                  tables: dict[str, dict[str, Any]], root_keys: dict[str, Any]) -> list[str]:
    """Our block of new tables, after the last table below `parent`, else at the end."""
    below = [(i, path) for i, path in headers if path[:len(parent)] == parent]
    quote = "'" if any(f"'{parent[1]}'" in lines[i] for i, _ in headers) else '"'
    indent = ""
    at = len(lines)
    if below:
        end = _block_end(lines, headers, below[-1][0])
        at = end
        while at > below[-1][0] + 1 and (not lines[at - 1].strip() or lines[at - 1].lstrip().startswith("#")):
            at -= 1  # blank lines, and the comments that introduce the next table, stay with it
        siblings = [i for i, path in below if len(path) == len(parent) + 1]
        indent = _indent(lines[siblings[-1]]) if siblings else _indent(lines[below[0][0]]) + "  "
    if at == len(lines) and lines and not lines[-1].endswith("\n"):
        lines = [*lines[:-1], lines[-1] + "\n"]
    block = ["\n", f"{indent}{START}\n", *(f"{key} = {_value(value)}\n" for key, value in root_keys.items())]
    for n, (name, keys) in enumerate(tables.items()):
        block += ["\n"] if n else []
        block.append(f"{indent}[{'.'.join(_key(k, quote) for k in [*parent, name])}]\n")
        block += [f"{indent}  {key} = {_value(value)}\n" for key, value in keys.items()]
    block.append(f"{indent}{END}\n")
    return lines[:at] + block + lines[at:]


def _cut_table(lines: list[str], path: list[str], where: str) -> list[str]:
    """Without the table at `path` and its sub-tables (and the blank lines before it)."""
    headers = _headers(lines)
    start = _find(headers, path, where)
    end = next((i for i, found in headers if i > start and found[:len(path)] != path), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    while start and not lines[start - 1].strip():
        start -= 1
    return lines[:start] + lines[end:]


def _key(key: str, quote: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return f"'{key}'" if quote == "'" and "'" not in key else json.dumps(key)


def _value(value: Any) -> str:
    """A TOML value of an integer, a string or a list of strings (JSON's escapes are TOML's)."""
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def _pruned(tree: Any) -> Any:
    """`tree` without empty tables: a table our block alone made leaves none behind when it goes."""
    if not isinstance(tree, dict):
        return tree
    kept = {k: _pruned(v) for k, v in tree.items()}
    return {k: v for k, v in kept.items() if v != {}}


def _check(new: str, expected: dict[str, Any], where: str) -> None:
    try:
        got = tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"{where}: the edit would not be valid TOML ({exc}): edit it by hand") from None
    if _pruned(got) != _pruned(expected):
        raise LayoutError(f"{where}: its layout is not one this edit follows (runtimes written as inline tables "
                          "or dotted keys?): edit it by hand")
