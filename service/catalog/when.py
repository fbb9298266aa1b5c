"""A pipeline step's ``when``: a small expression language, checked once and never ``eval``-ed.

``steps.stats.result.duration_s >= 2 and steps.stats.result.mean_brightness > 20``. Literals: numbers, strings
in single or double quotes, ``true``/``false``/``null``. Paths: ``steps.<step>.result[.<key>...]``,
``steps.<step>.state``, ``scan.metadata[.<key>...]``, ``scan.scan_id``; a missing key is ``null``, not an error.
``==``/``!=`` compare values (``true != 1``); ``<``, ``<=``, ``>``, ``>=`` hold only between two numbers or two
strings, so ``null`` or mixed types make them false. ``and``/``or``/``not`` short-circuit; ``null``, ``false``,
``0``, ``""`` and empty lists/objects are false, and ``and``/``or`` give the deciding operand (``(x or 0) > 1``).
The text goes through ``ast.parse`` and a whitelist of node kinds; everything else is refused with a ``WhenError``.
"""

from __future__ import annotations

import ast
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "When", "WhenError", "parse_when"]

MAX_LENGTH = 2000
MAX_DEPTH = 32
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}
_ORDER: dict[type, Callable[[Any, Any], bool]] = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
                                                  ast.GtE: operator.ge}
_EQUALITY = (ast.Eq, ast.NotEq)
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
        ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&"}
_IN, _IS = "membership tests (in) are not allowed", "'is' is not allowed; use == or !="
_REFUSED_TESTS = {ast.In: (_IN, "in"), ast.NotIn: (_IN, "not in"), ast.Is: (_IS, "is"), ast.IsNot: (_IS, "is not")}
_INFIX = {ast.Call: ("func", "(", "function calls are not allowed"),  # reported at a token after a part
          ast.Subscript: ("value", "[", "subscripts ([...]) are not allowed"),
          ast.NamedExpr: ("target", ":=", "assignments (:=) are not allowed"),
          ast.IfExp: ("body", "if", "'if ... else' is not allowed")}
_WHY = {ast.Lambda: "lambdas are not allowed", ast.JoinedStr: "f-strings are not allowed",
        ast.UnaryOp: "a sign is only allowed before a number; arithmetic is not allowed",
        **dict.fromkeys((ast.List, ast.Tuple, ast.Set, ast.Dict, ast.ListComp, ast.SetComp, ast.DictComp,
                         ast.GeneratorExp), "lists, tuples, sets, dicts and comprehensions are not allowed")}
_SHAPES = {"steps": "steps.<step>.result[.<key>...] or steps.<step>.state",
           "scan": "scan.metadata[.<key>...] or scan.scan_id"}
_PATH = re.compile(r"steps\.\w+\.(result(\.\w+)*|state)|scan\.(metadata(\.\w+)*|scan_id)")
_WORD = re.compile(r"\w+|\.\.\.|\S")

Tree = tuple[Any, ...]  # ("const", v) | ("path", parts) | ("and"|"or", *trees) | ("not", t) | ("cmp", t, (op, t)...)


class WhenError(ValueError):
    """A ``when`` expression that cannot be used; the message says what and where."""


@dataclass(frozen=True)
class When:
    """A checked ``when`` expression: ``evaluate`` it against a run's steps and scan."""

    text: str
    _tree: Tree
    _steps: frozenset[str]

    def steps(self) -> frozenset[str]:
        """The names of the steps the expression reads (each must be upstream of the step)."""
        return self._steps

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """``context``: ``{"steps": {name: {"state", "result"}}, "scan": {"scan_id", "metadata"}}``."""
        return bool(_value(self._tree, context))


def parse_when(text: str) -> When:
    """Check ``text`` and return its ``When``; raises ``WhenError`` saying what is wrong and where."""
    if not isinstance(text, str):
        raise WhenError(f"when: expected a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise WhenError(f"when: the expression is {len(text)} characters long; at most {MAX_LENGTH} are allowed")
    if not text.strip():
        raise WhenError("when: the expression is empty")
    src = text.replace("\r\n", "\n").replace("\r", "\n")
    body = src.lstrip()  # ast.parse refuses leading blanks; positions are reported in ``src``
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like: not for the server's stderr
            warnings.simplefilter("ignore", SyntaxWarning)
            node = ast.parse(body, mode="eval").body
    except SyntaxError as e:
        before = sum(len(s) + 1 for s in body.split("\n")[:(e.lineno or 1) - 1])  # the lines above e's
        at = len(src) - len(body) + before + (e.offset or 0) - 1
        where = "the end of the expression" if not e.offset or at >= len(src.rstrip()) else _where(src, at)
        raise WhenError(f"when: syntax error at {where}: {e.msg}" if e.offset is not None else f"when: {e.msg}") \
            from None
    except (ValueError, RecursionError, MemoryError) as e:  # NUL characters; nesting the parser cannot take
        raise WhenError(f"when: {e or 'the expression is nested too deeply'}") from None
    steps: set[str] = set()
    return When(text, _Checker(src, len(src) - len(body), steps).check(node, 1), frozenset(steps))


def _where(src: str, at: int) -> str:
    """``at`` (an offset into ``src``) in words: 1-based column, and line when there are several."""
    col = at - (src.rfind("\n", 0, at) + 1) + 1
    return f"column {col}" if "\n" not in src else f"line {src.count(chr(10), 0, at) + 1}, column {col}"


class _Checker:
    """Walks the parsed tree against the whitelist, building the tree ``_value`` evaluates."""

    def __init__(self, src: str, pad: int, steps: set[str]) -> None:
        self.src, self.pad, self.steps, self.lines = src, pad, steps, src[pad:].split("\n")

    def refuse(self, node: Any, why: str, token: str | None = None, after: bool = False) -> WhenError:
        """At ``node``'s start, or at ``token``'s first place after ``node`` when ``after``."""
        line, col = (node.end_lineno, node.end_col_offset) if after else (node.lineno, node.col_offset)
        head = self.lines[line - 1].encode()[:col].decode(errors="ignore")  # col: UTF-8 bytes
        at = self.pad + sum(len(s) + 1 for s in self.lines[:line - 1]) + len(head)
        if after and token is not None and self.src.find(token.split()[0], at) >= 0:
            at = self.src.find(token.split()[0], at)
        found = _WORD.match(self.src, at)
        token = token or (found.group() if found else self.src[at:at + 1])
        return WhenError(f"when: unexpected {token!r} at {_where(self.src, at)}: {why}")

    def check(self, node: ast.expr, depth: int) -> Tree:
        if depth > MAX_DEPTH:
            raise self.refuse(node, f"nesting deeper than {MAX_DEPTH} levels is not allowed")
        if isinstance(node, ast.BoolOp):
            return ("and" if isinstance(node.op, ast.And) else "or", *(self.check(v, depth + 1) for v in node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ("not", self.check(node.operand, depth + 1))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
                and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
            return ("const", -node.operand.value)
        if isinstance(node, ast.Compare):
            pairs, left = [], node.left
            for op, right in zip(node.ops, node.comparators):
                if type(op) in _REFUSED_TESTS:
                    raise self.refuse(left, *_REFUSED_TESTS[type(op)], after=True)
                pairs.append((type(op), self.check(right, depth + 1)))
                left = right
            return ("cmp", self.check(node.left, depth + 1), *pairs)
        if isinstance(node, ast.Constant):
            if node.value is None or type(node.value) in (bool, int, float, str):
                return ("const", node.value)
            why = {bytes: "bytes literals are not allowed", complex: "complex numbers are not allowed"}
            raise self.refuse(node, why.get(type(node.value), "'...' is not allowed"))
        if isinstance(node, (ast.Name, ast.Attribute)):
            return self.path(node)
        if isinstance(node, ast.BinOp):
            raise self.refuse(node.left, "arithmetic and bitwise operators are not allowed", _OPS[type(node.op)], True)
        if type(node) in _INFIX:
            part, token, why = _INFIX[type(node)]
            raise self.refuse(getattr(node, part), why, token, after=True)
        raise self.refuse(node, _WHY.get(type(node), "this is not allowed"))

    def path(self, node: ast.expr) -> Tree:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            if not isinstance(node.value, (ast.Attribute, ast.Name)):
                raise self.refuse(node.value, "attributes are only allowed on steps and scan paths", ".", after=True)
            node = node.value
        assert isinstance(node, ast.Name)
        root, dotted = node.id, ".".join([node.id, *parts])
        if any(p.startswith("__") for p in [root, *parts]):
            raise self.refuse(node, "names starting with '__' are not allowed", dotted)
        if not parts and root in _LITERALS:
            return ("const", _LITERALS[root])
        if root not in _SHAPES:
            raise self.refuse(node, "a path starts with steps or scan; the literals are true, false and null", root)
        if not _PATH.fullmatch(dotted):
            raise self.refuse(node, f"a {root} path is {_SHAPES[root]}", dotted)
        if root == "steps":
            self.steps.add(parts[0])
        return ("path", (root, *parts))


def _equal(a: Any, b: Any) -> bool:
    """By value; a boolean equals only a boolean (``true != 1``), also inside lists and objects."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _value(tree: Tree, context: Mapping[str, Any]) -> Any:
    kind, value = tree[0], None
    if kind == "const":
        return tree[1]
    if kind == "path":
        value = context
        for part in tree[1]:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value
    if kind == "not":
        return not _value(tree[1], context)
    if kind in ("and", "or"):
        for sub in tree[1:]:
            value = _value(sub, context)
            if bool(value) == (kind == "or"):
                break
        return value
    left = _value(tree[1], context)
    for op, sub in tree[2:]:  # a chain stops at its first false link
        right = _value(sub, context)
        if op in _EQUALITY:
            holds = _equal(left, right) == (op is ast.Eq)
        else:  # only two numbers (not booleans) or two strings are ordered: null or mixed types give false
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
            holds = (numbers or isinstance(left, str) and isinstance(right, str)) and _ORDER[op](left, right)
        if not holds:
            return False
        left = right
    return True
