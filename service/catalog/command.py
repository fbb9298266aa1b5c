"""The command template: a descriptor's ``command`` argv and its placeholders.

An argv element may hold ``{here}``, ``{inputs}``, ``{outputs}`` and ``{params.NAME}``; ``{{`` and
``}}`` are literal braces. ``check_command`` checks a template when a descriptor is parsed;
``command_argv`` fills one in for a run, each value staying inside its one argv element.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from service.errors import InvalidParams

if TYPE_CHECKING:  # descriptor.py imports this module: a runtime import back would be a cycle
    from service.catalog.descriptor import AlgorithmDescriptor

__all__ = ["check_command", "command_argv"]

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_FIXED = ("here", "inputs", "outputs")
_KNOWN = "{here}, {inputs}, {outputs}, {params.NAME}"


def _pieces(element: str) -> list[tuple[bool, str]]:
    """``(is a placeholder, text)`` pieces of one argv element; ValueError for a lone brace."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    for m in _TOKEN.finditer(element):
        pieces.append((False, element[pos:m.start()]))
        if m.group(1) is not None:
            pieces.append((True, m.group(1)))
        elif m.group(0) in ("{{", "}}"):
            pieces.append((False, m.group(0)[0]))
        else:
            raise ValueError(f"unmatched '{m.group(0)}'; write {m.group(0) * 2} for a literal one")
        pos = m.end()
    pieces.append((False, element[pos:]))
    return [(is_placeholder, text) for is_placeholder, text in pieces if is_placeholder or text]


def check_command(command: Any, declared: Mapping[str, Any] | None, errors: list[str]) -> None:
    """Check a descriptor's ``command`` field, appending each problem to ``errors`` prefixed by its
    path (``command`` or ``command[i]``).

    ``declared``: the parameters, None when that section is itself broken (its names unknown).
    """
    if isinstance(command, str):
        errors.append('command: expected a list of strings (the argv), e.g. ["python", "{here}/run.py", "{inputs}", '
                      '"{outputs}"]')
        return
    if not isinstance(command, list) or not command:
        errors.append("command: expected a non-empty list of strings (the argv)")
        return
    for i, element in enumerate(command):
        path = f"command[{i}]"
        if not isinstance(element, str) or not element:
            errors.append(f"{path}: expected a {'non-empty ' if element == '' else ''}string")
            continue
        try:
            pieces = _pieces(element)
        except ValueError as e:
            errors.append(f"{path}: {e}")
            continue
        for name in (text for is_placeholder, text in pieces if is_placeholder and text not in _FIXED):
            if not name.startswith("params."):
                errors.append(f"{path}: unknown placeholder {{{name}}}; known: {_KNOWN}")
            elif declared is not None and name[len("params."):] not in declared:
                errors.append(f"{path}: unknown placeholder {{{name}}}: declare parameter {name[len('params.'):]}")


def _render(value: Any) -> str | None:
    """A parameter value as argv text: true/false, str(int), the shortest repr of a float; None: not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def command_argv(descriptor: AlgorithmDescriptor, *, here: str, inputs: str, outputs: str,
                 params: Mapping[str, Any]) -> list[str]:
    """The descriptor's ``command`` with its placeholders filled in; raises ``InvalidParams``.

    Each value stays inside its one argv element: nothing is split, and no shell ever reads the
    result. ``here``: the algorithm's folder; ``inputs``/``outputs``: the scan's input and output
    folders; ``params``: checked task params (one missing takes its declared default). A string
    parameter that is a whole element may not start with "-" (the program would read it as an option)
    or "/", and none may hold a ".." segment or NUL: a value cannot name a path outside the run's folders.
    """
    values: dict[str, Any] = {"here": here, "inputs": inputs, "outputs": outputs}
    for name, schema in descriptor.parameters.items():
        if name in params or "default" in schema:
            values[f"params.{name}"] = params[name] if name in params else schema["default"]
    argv: list[str] = []
    problems: list[str] = []
    for i, element in enumerate(descriptor.command):
        pieces = _pieces(element)
        parts: list[str] = []
        for is_placeholder, text in pieces:
            if not is_placeholder:
                parts.append(text)
                continue
            value = values.get(text)
            rendered = _render(value)
            if rendered is None:
                problems.append(f"{text}: no value for {{{text}}} in command[{i}]" if value is None
                                else f"{text}: expected a string, number or boolean")
                continue
            if "\0" in rendered:
                problems.append(f"{text}: contains a NUL character")
            if len(pieces) == 1 and text.startswith("params.") and isinstance(value, str) and value.startswith("-"):
                problems.append(f"{text}: {value!r} would be read as an option in command[{i}]; a value that makes "
                                "up a whole argument may not start with '-'")
            if text.startswith("params.") and isinstance(value, str) and (
                    ".." in value.split("/") or (len(pieces) == 1 and value.startswith("/"))):
                problems.append(f"{text}: {value!r} could name a path outside the run's folders in command[{i}]; a "
                                "value may not hold a '..' segment, nor start with '/' as a whole argument")
            parts.append(rendered)
        argv.append("".join(parts))
    if problems:
        raise InvalidParams("; ".join(dict.fromkeys(problems)))
    return argv
