"""The pipeline ``when`` language: what it evaluates to, what it reads, and what it refuses (and how it says so)."""

from __future__ import annotations

import ast
import builtins
from typing import Any

import pytest

from service.catalog.when import MAX_DEPTH, MAX_LENGTH, When, WhenError, parse_when

CONTEXT: dict[str, Any] = {
    "steps": {
        "stats": {"state": "completed", "result": {"duration_s": 3.5, "mean_brightness": 42, "label": "night",
                                                   "ok": True, "zero": 0, "empty": "", "nested": {"n": 1},
                                                   "none": None, "tags": ["a"]}},
        "detect": {"state": "skipped", "result": None},
        "a": {"state": "completed", "result": {"x": 1, "s": "b"}},
    },
    "scan": {"scan_id": "scan-1", "metadata": {"site": "north", "frames": 120, "camera": {"model": "X1"}}},
}


def holds(text: str, context: dict[str, Any] | None = None) -> bool:
    return parse_when(text).evaluate(CONTEXT if context is None else context)


def refusal(text: str) -> str:
    with pytest.raises(WhenError) as info:
        parse_when(text)
    return str(info.value)


@pytest.mark.parametrize("text", [
    "steps.stats.result.duration_s >= 2 and steps.stats.result.mean_brightness > 20",
    "steps.stats.state == 'completed'",
    "steps.detect.state == \"skipped\"",
    "scan.scan_id == 'scan-1'",
    "scan.metadata.site == 'north' and scan.metadata.frames >= 100",
    "scan.metadata.camera.model == 'X1'",
    "steps.stats.result.nested.n == 1",
    "steps.stats.result.ok",
    "steps.stats.result.ok == true",
    "steps.stats.result.ok == True",
    "steps.stats.result.none == null",
    "steps.stats.result.none == None",
    "steps.stats.result.duration_s == 3.5",
    "steps.stats.result.mean_brightness == 42.0",
    "0 < steps.a.result.x < 3",
    "steps.a.result.x > -1",
    "steps.a.result.x >= -1.5",
    "-2 < -1",
    "'abc' < 'abd'",
    "\"abc\" == 'abc'",
    "steps.a.result.s > 'a'",
    "not steps.stats.result.zero",
    "not steps.stats.result.empty",
    "steps.stats.result.tags",
    "steps.stats.result.nested",
    "(steps.stats.result.nope or 5) > 4",
    "steps.a.result == steps.a.result",
    "true",
    "1",
])
def test_true(text: str) -> None:
    assert holds(text) is True


@pytest.mark.parametrize("text", [
    "steps.stats.result.duration_s >= 4 and steps.stats.result.mean_brightness > 20",
    "steps.stats.state == 'failed'",
    "scan.metadata.site != 'north'",
    "0 < steps.a.result.x < 1",
    "steps.a.result.x < -1",
    "false",
    "null",
    "0",
    "''",
    "not true",
    "steps.detect.result",
    "steps.stats.result.zero",
])
def test_false(text: str) -> None:
    assert holds(text) is False


def test_a_missing_path_is_null() -> None:
    assert holds("steps.a.result.nope == null")
    assert holds("steps.a.result.nope != 1")
    assert not holds("steps.a.result.nope > 1")
    assert not holds("steps.a.result.nope < 1")
    assert not holds("steps.a.result.nope")
    assert holds("steps.detect.result.anything == null")  # a skipped step's result is null
    assert holds("steps.a.result.x.deeper == null")  # descending into a number
    assert holds("steps.a.result.s.deeper == null")  # into a string
    assert holds("steps.stats.result.tags.first == null")  # into a list
    assert holds("steps.unknown.state == null and steps.unknown.result.x == null")
    assert holds("scan.metadata.nope.deeper == null")
    assert holds("steps.a.result.x == null", {})
    assert holds("scan.scan_id == null", {"steps": {}, "scan": {"metadata": None}})


def test_types() -> None:
    assert not holds("steps.a.result.x < 'z'")  # number vs string: no ordering
    assert not holds("steps.a.result.x > 'z'")
    assert not holds("steps.a.result.x == '1'")
    assert holds("steps.a.result.x != '1'")
    assert not holds("true == 1")  # a boolean never equals a number
    assert holds("true != 1")
    assert not holds("false == 0")
    assert not holds("steps.stats.result.ok == 1")
    assert not holds("true > 0")  # booleans are not ordered
    assert not holds("true >= true")
    assert not holds("null <= null")
    assert holds("null == null")
    assert not holds("null == false") and not holds("null == 0") and not holds("null == ''")
    assert holds("'a' == \"a\"") and holds('"it\'s" == "it\'s"')
    assert holds("1 == 1.0") and holds("0.5 < 1") and holds("1e3 == 1000") and holds("-0.25 < 0")
    assert holds("steps.stats.result.nested == steps.stats.result.nested")
    assert not holds("steps.a.result == steps.stats.result")


def test_precedence_and_short_circuit() -> None:
    assert holds("true or false and false")  # and binds tighter than or
    assert not holds("(true or false) and false")
    assert holds("not false and true")  # not binds tighter than and
    assert not holds("not (false or true)")
    assert holds("not steps.a.result.x == 2")  # not applies to the whole comparison
    assert holds("steps.a.result.x == 1 or steps.a.result.x.y.z > 'q'")
    assert parse_when("false and steps.a.result.x > 0").evaluate({}) is False
    assert parse_when("true or 1").evaluate({}) is True
    assert parse_when("steps.a.result.x").evaluate(CONTEXT) is True  # the result is always a bool
    assert parse_when("steps.a.result.s and steps.a.result.x").evaluate(CONTEXT) is True


def test_short_circuit_reads_nothing_further() -> None:
    class Watched(dict[str, Any]):
        reads: list[str] = []

        def get(self, key: str, default: Any = None) -> Any:
            Watched.reads.append(key)
            return super().get(key, default)

    context = {"steps": Watched(a={"state": "completed", "result": {"x": 0}}, b={"result": {"x": 1}})}
    assert not parse_when("steps.a.result.x and steps.b.result.x").evaluate(context)
    assert not parse_when("steps.a.result.x > 0 < steps.b.result.x").evaluate(context)
    assert parse_when("steps.a.state == 'completed' or steps.b.result.x").evaluate(context)
    assert Watched.reads == ["a", "a", "a"]


def test_steps_it_reads() -> None:
    when = parse_when("steps.stats.result.duration_s > 1 and (steps.detect.state == 'completed' or "
                      "not steps.stats.result.ok) and scan.metadata.steps == 'x'")
    assert when.steps() == frozenset({"stats", "detect"})
    assert parse_when("scan.scan_id == 'x'").steps() == frozenset()
    assert when.text.startswith("steps.stats")
    assert isinstance(when, When)


def test_blanks_and_lines() -> None:
    assert holds("  steps.a.result.x == 1  ")
    assert holds("(steps.a.result.x == 1\n  and steps.a.result.s == 'b')")
    assert holds("steps.a.result.x == 1  # a comment")


@pytest.mark.parametrize(("text", "message"), [
    ("__import__('os')", "when: unexpected '(' at column 11: function calls are not allowed"),
    ("steps.a.result.f(1) > 0", "when: unexpected '(' at column 17: function calls are not allowed"),
    ("steps.a.result.x[0] == 1", "when: unexpected '[' at column 17: subscripts ([...]) are not allowed"),
    ("steps.a.result.x + 1 > 2", "when: unexpected '+' at column 18: arithmetic and bitwise operators are not allowed"),
    ("a + 1", "when: unexpected '+' at column 3: arithmetic and bitwise operators are not allowed"),
    ("2 ** 100", "when: unexpected '**' at column 3: arithmetic and bitwise operators are not allowed"),
    ("'abc'.upper == 1", "when: unexpected '.' at column 6: attributes are only allowed on steps and scan paths"),
    ("os.path", "when: unexpected 'os' at column 1: a path starts with steps or scan; the literals are true, "
                "false and null"),
    ("x == 1", "when: unexpected 'x' at column 1: a path starts with steps or scan; the literals are true, "
               "false and null"),
    ("lambda: 1", "when: unexpected 'lambda' at column 1: lambdas are not allowed"),
    ("'a' in steps.a.result.tags", "when: unexpected 'in' at column 5: membership tests (in) are not allowed"),
    ("'a' not in steps.a.result.tags", "when: unexpected 'not in' at column 5: membership tests (in) are not allowed"),
    ("steps.a.result.x is null", "when: unexpected 'is' at column 18: 'is' is not allowed; use == or !="),
    ("f'{steps}' == 'x'", "when: unexpected 'f' at column 1: f-strings are not allowed"),
    ("b'x' == 1", "when: unexpected 'b' at column 1: bytes literals are not allowed"),
    ("1j == 1", "when: unexpected '1j' at column 1: complex numbers are not allowed"),
    ("[1] == 1", "when: unexpected '[' at column 1: lists, tuples, sets, dicts and comprehensions are not allowed"),
    ("[x for x in y]", "when: unexpected '[' at column 1: lists, tuples, sets, dicts and comprehensions are not "
                       "allowed"),
    ("(x := 1)", "when: unexpected ':=' at column 4: assignments (:=) are not allowed"),
    ("1 if true else 2", "when: unexpected 'if' at column 3: 'if ... else' is not allowed"),
    ("-steps.a.result.x < 0", "when: unexpected '-' at column 1: a sign is only allowed before a number; "
                              "arithmetic is not allowed"),
    ("~1", "when: unexpected '~' at column 1: a sign is only allowed before a number; arithmetic is not allowed"),
    ("steps.__class__", "when: unexpected 'steps.__class__' at column 1: names starting with '__' are not allowed"),
    ("steps.a.result.__dict__", "when: unexpected 'steps.a.result.__dict__' at column 1: names starting with '__' "
                                "are not allowed"),
    ("steps.a", "when: unexpected 'steps.a' at column 1: a steps path is steps.<step>.result[.<key>...] or "
                "steps.<step>.state"),
    ("steps.a.foo == 1", "when: unexpected 'steps.a.foo' at column 1: a steps path is steps.<step>.result[.<key>...] "
                         "or steps.<step>.state"),
    ("steps.a.state.x", "when: unexpected 'steps.a.state.x' at column 1: a steps path is "
                        "steps.<step>.result[.<key>...] or steps.<step>.state"),
    ("true and scan.other", "when: unexpected 'scan.other' at column 10: a scan path is scan.metadata[.<key>...] or "
                            "scan.scan_id"),
    ("scan", "when: unexpected 'scan' at column 1: a scan path is scan.metadata[.<key>...] or scan.scan_id"),
    ("(1 ==\n 1 + 2)", "when: unexpected '+' at line 2, column 4: arithmetic and bitwise operators are not allowed"),
    ("'é' == 1 + 2", "when: unexpected '+' at column 10: arithmetic and bitwise operators are not allowed"),
    ("", "when: the expression is empty"),
    ("  \n ", "when: the expression is empty"),
    ("x" * (MAX_LENGTH + 1), f"when: the expression is {MAX_LENGTH + 1} characters long; at most {MAX_LENGTH} are "
                             "allowed"),
    ("not " * MAX_DEPTH + "true", f"when: unexpected 'true' at column {4 * MAX_DEPTH + 1}: nesting deeper than "
                                  f"{MAX_DEPTH} levels is not allowed"),
    ("(" * 40 + "not " * 40 + "true" + ")" * 40, f"when: unexpected 'not' at column {40 + 4 * MAX_DEPTH + 1}: "
                                                 f"nesting deeper than {MAX_DEPTH} levels is not allowed"),
    ("steps.a.result.x ==", "when: syntax error at the end of the expression: invalid syntax"),
    ("steps.a.result.x = 1", "when: syntax error at column 18: invalid syntax"),
    ("  (1 == 1", "when: syntax error at column 3: '(' was never closed"),
])
def test_refused(text: str, message: str) -> None:
    assert refusal(text) == message


def test_limits_are_inclusive() -> None:
    assert holds("not " * (MAX_DEPTH - 1) + "true") is ((MAX_DEPTH - 1) % 2 == 0)  # the literal is level 32
    text = "steps.a.result.x == 1" + " " * (MAX_LENGTH - 21)
    assert len(text) == MAX_LENGTH and holds(text)


def test_a_refusal_is_a_value_error() -> None:
    assert issubclass(WhenError, ValueError)
    assert refusal(True) == "when: expected a string, got bool"  # type: ignore[arg-type]


def test_nothing_is_executed(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    calls: list[str] = []
    real_compile = builtins.compile

    def compile_ast_only(source: Any, filename: Any, mode: str, flags: int = 0, *args: Any, **kwargs: Any) -> Any:
        calls.append("ast" if flags & ast.PyCF_ONLY_AST else "code")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "compile", compile_ast_only)
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append("eval"))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: calls.append("exec"))
    marker = tmp_path / "touched"
    for text in (f"__import__('os').system('touch {marker}')", f"open('{marker}', 'w')",
                 "steps.a.result.__class__.__bases__", "(lambda: __import__('os'))()", "[exec('x') for _ in 'ab']"):
        with pytest.raises(WhenError):
            parse_when(text)
    when = parse_when("steps.a.result.s != \"__import__('os').system('x')\"")  # a string is only a string
    assert when.evaluate(CONTEXT)
    monkeypatch.undo()
    assert calls == ["ast"] * 6
    assert not marker.exists()
