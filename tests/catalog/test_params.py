"""Task params against a descriptor's parameter schemas: types, bounds, enums, lengths, defaults."""

from __future__ import annotations

from typing import Any

import pytest

from service.catalog import AlgorithmDescriptor, parse_descriptor
from service.errors import InvalidParams

PARAMETERS = {
    "threshold": {"type": "number", "default": 0.5, "minimum": 0, "maximum": 1},
    "frames": {"type": "integer", "minimum": 1, "maximum": 100},
    "mode": {"type": "string", "enum": ["fast", "exact"], "default": "fast"},
    "label": {"type": "string", "minLength": 2, "maxLength": 5},
    "verbose": {"type": "boolean", "default": False},
}


@pytest.fixture
def algo() -> AlgorithmDescriptor:
    return parse_descriptor({"name": "typed_algo", "version": "1", "python": "pkg.mod:run",
                             "parameters": PARAMETERS, "required": ["frames"]})


def refusal(algo: AlgorithmDescriptor, params: Any) -> str:
    with pytest.raises(InvalidParams) as info:
        algo.validate_params(params)
    assert info.value.code == "invalid_params"
    return info.value.message


def test_defaults_are_applied(algo: AlgorithmDescriptor) -> None:
    assert algo.validate_params({"frames": 3}) == {"threshold": 0.5, "mode": "fast", "verbose": False, "frames": 3}


def test_given_values_win(algo: AlgorithmDescriptor) -> None:
    given = {"frames": 100, "threshold": 1, "mode": "exact", "label": "ab", "verbose": True}
    assert algo.validate_params(given) == given


def test_whole_float_for_an_integer_becomes_an_int(algo: AlgorithmDescriptor) -> None:
    result = algo.validate_params({"frames": 8.0})
    assert result["frames"] == 8 and isinstance(result["frames"], int)


def test_none_means_no_params() -> None:
    d = parse_descriptor({"name": "plain", "version": "1", "python": "pkg.mod:run",
                          "parameters": {"k": {"type": "integer", "default": 3}}})
    assert d.validate_params(None) == {"k": 3}
    assert parse_descriptor({"name": "plain", "version": "1", "python": "pkg.mod:run"}).validate_params(None) == {}


@pytest.mark.parametrize("params, expected", [
    ({"frames": 0}, "params.frames: 0 is less than the minimum of 1"),
    ({"frames": 101}, "params.frames: 101 is greater than the maximum of 100"),
    ({"frames": 2.5}, "params.frames: 2.5 is not of type 'integer'"),
    ({"frames": "3"}, "params.frames: '3' is not of type 'integer'"),
    ({"frames": True}, "params.frames: True is not of type 'integer'"),
    ({"frames": 1, "threshold": False}, "params.threshold: False is not of type 'number'"),
    ({"frames": 1, "threshold": 1.5}, "params.threshold: 1.5 is greater than the maximum of 1"),
    ({"frames": 1, "mode": "slow"}, "params.mode: 'slow' is not one of ['fast', 'exact']"),
    ({"frames": 1, "label": "a"}, "params.label: 'a' is too short"),
    ({"frames": 1, "label": "abcdef"}, "params.label: 'abcdef' is too long"),
    ({"frames": 1, "verbose": 1}, "params.verbose: 1 is not of type 'boolean'"),
    ({"frames": 1, "verbose": "true"}, "params.verbose: 'true' is not of type 'boolean'"),
    ({"frames": 1, "label": None}, "params.label: None is not of type 'string'"),
    ({}, "params.frames: required"),
    ({"frames": 1, "colour": "red"},
     "params.colour: unknown parameter; known: frames, label, mode, threshold, verbose"),
    ([1, 2], "params: expected an object"),
    ("frames=1", "params: expected an object"),
])
def test_refused(algo: AlgorithmDescriptor, params: Any, expected: str) -> None:
    assert refusal(algo, params) == expected


def test_every_problem_is_listed_sorted_by_path(algo: AlgorithmDescriptor) -> None:
    message = refusal(algo, {"zeta": 1, "mode": "slow", "threshold": -1, "label": 7})
    assert message == ("params.frames: required; "
                       "params.label: 7 is not of type 'string'; "
                       "params.mode: 'slow' is not one of ['fast', 'exact']; "
                       "params.threshold: -1 is less than the minimum of 0; "
                       "params.zeta: unknown parameter; known: frames, label, mode, threshold, verbose")


def test_an_algorithm_without_parameters_says_so() -> None:
    d = parse_descriptor({"name": "plain", "version": "1", "python": "pkg.mod:run"})
    assert refusal(d, {"x": 1}) == "params.x: unknown parameter; this algorithm takes no parameters"


def test_integer_enum_does_not_take_booleans() -> None:
    d = parse_descriptor({"name": "plain", "version": "1", "python": "pkg.mod:run",
                          "parameters": {"k": {"type": "integer", "enum": [0, 1]}}})
    assert d.validate_params({"k": 1}) == {"k": 1}
    assert refusal(d, {"k": True}) == "params.k: True is not of type 'integer'; params.k: True is not one of [0, 1]"


def test_params_schema(algo: AlgorithmDescriptor) -> None:
    assert algo.params_schema() == {
        "type": "object",
        "properties": PARAMETERS,
        "required": ["frames"],
        "additionalProperties": False,
    }


def test_params_schema_is_a_valid_json_schema_that_agrees(algo: AlgorithmDescriptor) -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(algo.params_schema())
    validator = Draft202012Validator(algo.params_schema())
    assert validator.is_valid({"frames": 3, "mode": "exact"})
    assert not validator.is_valid({"frames": 3, "other": 1})
    assert not validator.is_valid({"mode": "exact"})
