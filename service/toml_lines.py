"""Where a key sits in a TOML file, for error messages that name the line.

``tomllib`` gives values but no positions, so ``key_lines`` reads the text once more, line by line,
and maps each table and key to the line that defines it, under the path a validator reports:
``("pools", 0, "options", 1, "price_per_hour")``, array-of-tables entries counted from 0. It reads
headers (``[a.b]``, ``[[a.b]]``), ``key = value`` lines (dotted keys too) and skips the inside of
multi-line strings and arrays; keys inside an inline table resolve to the line of the table's key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Loc = tuple[str | int, ...]

_KEY = r'(?:[A-Za-z0-9_-]+|"[^"\\]*"|\'[^\']*\')'
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=(.*)$")
_PART = re.compile(_KEY)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def key_lines(text: str) -> dict[Loc, int]:
    """Each table's and key's path → its 1-based line (the first, if written twice)."""
    found: dict[Loc, int] = {}
    arrays: dict[Loc, int] = {}  # array of tables → index of its latest entry
    table: Loc = ()
    depth = 0  # open brackets and braces of a value that spans lines
    in_string: str | None = None  # the quotes of an open multi-line string

    def resolve(parts: list[str]) -> Loc:
        path: Loc = ()
        for part in parts:
            path += (part,)
            if path in arrays:
                path += (arrays[path],)
        return path

    for number, line in enumerate(text.splitlines(), start=1):
        if in_string or depth:
            in_string, depth = _scan(line, in_string, depth)
            continue
        if header := _HEADER.match(line):
            parts = _parts(header.group(2))
            if header.group(1) == "[[":
                array = resolve(parts[:-1]) + (parts[-1],)
                arrays[array] = arrays.get(array, -1) + 1
                found.setdefault(array, number)
                table = array + (arrays[array],)
            else:
                table = resolve(parts)
            found.setdefault(table, number)
        elif assign := _ASSIGN.match(line):
            found.setdefault(table + tuple(_parts(assign.group(1))), number)
            in_string, depth = _scan(assign.group(2), None, 0)
    return found


def line_of(lines: dict[Loc, int], loc: Sequence[str | int]) -> int | None:
    """The line of ``loc`` or, when it has none (a key inside an inline table, a table's own
    check), of its nearest enclosing key or table."""
    for end in range(len(loc), 0, -1):
        if (line := lines.get(tuple(loc[:end]))) is not None:
            return line
    return None


def dotted(loc: Sequence[str | int]) -> str:
    """``("pools", 0, "boot_timeout_s")`` → ``pools[0].boot_timeout_s``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _parts(dotted_key: str) -> list[str]:
    return [p.strip("\"'") for p in _PART.findall(dotted_key)]


def _scan(text: str, in_string: str | None, depth: int) -> tuple[str | None, int]:
    """Carry the open multi-line string and bracket depth across ``text``."""
    i = 0
    while i < len(text):
        if in_string:
            end = text.find(in_string, i)
            if end < 0:
                return in_string, depth
            in_string, i = None, end + 3
            continue
        char = text[i]
        if text.startswith(('"""', "'''"), i):
            in_string, i = text[i:i + 3], i + 3
        elif char in "\"'":
            quoted = _QUOTED.match(text, i)
            i = quoted.end() if quoted else len(text)
        elif char == "#":
            break
        else:
            depth += (char in "[{") - (char in "]}")
            i += 1
    return in_string, depth
