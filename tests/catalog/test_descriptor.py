"""The descriptor: parsing, every refusal with its exact message, loading, and the command's argv."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from service.catalog import (
    AlgorithmDescriptor,
    InputSpec,
    Resources,
    command_argv,
    load_descriptor,
    parse_descriptor,
)
from service.errors import InvalidDescriptor, InvalidParams

GOOD_YAML = """\
name: frame_stats
version: "1"
description: Brightness and motion statistics per scan, CPU only.
command: ["python", "{here}/frame_stats.py", "--min-brightness", "{params.min_brightness}", "{inputs}", "{outputs}"]
parameters:
  min_brightness: {type: number, default: 10, minimum: 0, maximum: 255}
inputs: {kinds: [video], max_bytes: 4294967296}
resources: {gpu: 0, cpu: 1, memory_gib: 1, timeout_s: 300, max_attempts: 2}
queue: cpu
requirements: ["numpy>=1.26"]
"""

KNOWN_FIELDS = ("command, description, function, image, inputs, name, parameters, python, queue, required, "
                "requirements, resources, version")
KNOWN_KEYWORDS = "default, description, enum, maxLength, maximum, minLength, minimum, type"


def good() -> dict[str, Any]:
    return yaml.safe_load(GOOD_YAML)


def errors_of(data: Any) -> list[str]:
    with pytest.raises(InvalidDescriptor) as info:
        parse_descriptor(data, "test.yaml")
    return info.value.errors


def test_good_descriptor_parses() -> None:
    d = parse_descriptor(good())
    assert d.name == "frame_stats"
    assert d.version == "1"
    assert d.description == "Brightness and motion statistics per scan, CPU only."
    assert d.runner == "command"
    assert d.command == ("python", "{here}/frame_stats.py", "--min-brightness", "{params.min_brightness}",
                         "{inputs}", "{outputs}")
    assert d.parameters == {"min_brightness": {"type": "number", "default": 10, "minimum": 0, "maximum": 255}}
    assert d.required == ()
    assert d.inputs == InputSpec(kinds=("video",), max_bytes=4294967296)
    assert d.resources == Resources(gpu=0, cpu=1.0, memory_gib=1.0, timeout_s=300.0, max_attempts=2)
    assert d.queue == "cpu"
    assert d.requirements == ("numpy>=1.26",)


def test_minimal_descriptor_takes_the_defaults() -> None:
    d = parse_descriptor({"name": "tiny", "version": "0.1", "python": "pkg.mod:run"})
    assert d == AlgorithmDescriptor(name="tiny", version="0.1", description="", runner="python", python="pkg.mod:run")
    assert d.resources == Resources(gpu=0, cpu=1.0, memory_gib=1.0, timeout_s=1800.0, max_attempts=2)
    assert d.inputs == InputSpec(kinds=("any",), max_bytes=None)


@pytest.mark.parametrize("extra, runner", [
    ({"image": "ghcr.io/org/tool:1.2"}, "image"),
    ({"command": None, "python": "pkg.mod:run"}, "python"),
    ({"command": None, "function": "function.pkl"}, "python-function"),
])
def test_runners(extra: dict[str, Any], runner: str) -> None:
    d = parse_descriptor({**good(), **extra})
    assert d.runner == runner
    assert parse_descriptor(d.to_dict()) == d


@pytest.mark.parametrize("data", [
    good(),
    {**good(), "image": "ghcr.io/org/tool:1.2", "required": ["min_brightness"], "description": None},
    {"name": "fn_algo", "version": "2.0+b", "function": "f.pkl", "resources": {"gpu": 2},
     "parameters": {"mode": {"type": "string", "enum": ["a", "b"], "default": "a", "description": "how"},
                    "n": {"type": "integer", "minimum": 1}, "flag": {"type": "boolean", "default": False}}},
])
def test_round_trip_through_to_dict_and_json(data: dict[str, Any]) -> None:
    d = parse_descriptor(data)
    as_json = json.loads(json.dumps(d.to_dict()))
    assert "runner" not in as_json
    assert parse_descriptor(as_json) == d


def test_to_dict_is_a_copy() -> None:
    d = parse_descriptor(good())
    d.to_dict()["parameters"]["min_brightness"]["default"] = 99
    d.params_schema()["properties"]["min_brightness"]["default"] = 99
    assert d.parameters["min_brightness"]["default"] == 10


@pytest.mark.parametrize("change, expected", [
    ({"colour": "blue"}, f"colour: unknown field; known: {KNOWN_FIELDS}"),
    ({"name": None}, "name: required"),
    ({"name": "Frame-Stats"}, "name: must match ^[a-z][a-z0-9_]{2,40}$, got 'Frame-Stats'"),
    ({"name": "ab"}, "name: must match ^[a-z][a-z0-9_]{2,40}$, got 'ab'"),
    ({"version": None}, "version: required"),
    ({"version": 1}, 'version: expected a string (quote it: "1")'),
    ({"version": "1 0"}, "version: must match ^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$, got '1 0'"),
    ({"description": "x" * 2001}, "description: at most 2000 characters, got 2001"),
    ({"command": None}, "command: one runner is required: command, image (with command), python or function"),
    ({"python": "pkg.mod:run"}, "python: give exactly one runner, found command and python"),
    ({"function": "f.pkl", "python": "pkg.mod:run"},
     "function: give exactly one runner, found command, python and function"),
    ({"command": None, "image": "ghcr.io/org/tool:1.2"}, "image: needs command, the argv run inside the image"),
    ({"image": "ghcr.io/org/tool 1.2"},
     "image: expected a container image reference without spaces, e.g. ghcr.io/org/tool:1.2"),
    ({"command": []}, "command: expected a non-empty list of strings (the argv)"),
    ({"command": "python run.py"},
     'command: expected a list of strings (the argv), e.g. ["python", "{here}/run.py", "{inputs}", "{outputs}"]'),
    ({"command": ["python", "run.py", 3]}, "command[2]: expected a string"),
    ({"command": ["python", ""]}, "command[1]: expected a non-empty string"),
    ({"command": ["python", "run.py", "--x", "{params.foo}"]},
     "command[3]: unknown placeholder {params.foo}: declare parameter foo"),
    ({"command": ["python", "run.py", "a", "b", "{input}"]},
     "command[4]: unknown placeholder {input}; known: {here}, {inputs}, {outputs}, {params.NAME}"),
    ({"command": ["python", "-c", "print({})"]},
     "command[2]: unknown placeholder {}; known: {here}, {inputs}, {outputs}, {params.NAME}"),
    ({"command": ["python", "{here"]}, "command[1]: unmatched '{'; write {{ for a literal one"),
    ({"command": None, "python": "pkg.mod.run"}, "python: expected \"package.module:function\", got 'pkg.mod.run'"),
    ({"command": None, "function": "../f.pkl"},
     "function: expected a file name in the algorithm folder (no '/' or '..'), got '../f.pkl'"),
    ({"command": None, "function": "sub/f.pkl"},
     "function: expected a file name in the algorithm folder (no '/' or '..'), got 'sub/f.pkl'"),
    ({"parameters": ["a"]},
     "parameters: expected a mapping of parameter name to its schema, e.g. {threshold: {type: number, default: 0.5}}"),
    ({"parameters": {"min_brightness": {"type": "number"}, "Bad": {"type": "number"}}},
     "parameters.Bad: name must match ^[a-z_][a-z0-9_]{0,63}$"),
    ({"parameters": {"min_brightness": {"type": "number"}, "scan_uri": {"type": "string"}}},
     "parameters.scan_uri: reserved name, set by scantide"),
    ({"parameters": {"min_brightness": {"default": 3}}},
     "parameters.min_brightness.type: required, one of boolean, integer, number, string"),
    ({"parameters": {"min_brightness": {"type": "float"}}},
     "parameters.min_brightness.type: expected one of boolean, integer, number, string, got 'float'"),
    ({"parameters": {"min_brightness": {"type": "string", "pattern": "^a"}}},
     f"parameters.min_brightness.pattern: unknown keyword; allowed: {KNOWN_KEYWORDS}"),
    ({"parameters": {"min_brightness": {"type": "number", "minimum": "0"}}},
     "parameters.min_brightness.minimum: expected a number"),
    ({"parameters": {"min_brightness": {"type": "number", "maximum": True}}},
     "parameters.min_brightness.maximum: expected a number"),
    ({"parameters": {"min_brightness": {"type": "string", "minimum": 0}}},
     "parameters.min_brightness.minimum: only for number or integer parameters, this one is string"),
    ({"parameters": {"min_brightness": {"type": "integer", "maxLength": 3}}},
     "parameters.min_brightness.maxLength: only for string parameters, this one is integer"),
    ({"parameters": {"min_brightness": {"type": "string", "minLength": -1}}},
     "parameters.min_brightness.minLength: expected a non-negative integer"),
    ({"parameters": {"min_brightness": {"type": "number", "minimum": 10, "maximum": 5}}},
     "parameters.min_brightness.minimum: 10 is greater than maximum 5"),
    ({"parameters": {"min_brightness": {"type": "string", "minLength": 4, "maxLength": 2}}},
     "parameters.min_brightness.minLength: 4 is greater than maxLength 2"),
    ({"parameters": {"min_brightness": {"type": "number", "default": 300, "maximum": 255}}},
     "parameters.min_brightness.default: 300 is greater than the maximum of 255"),
    ({"parameters": {"min_brightness": {"type": "number", "default": True}}},
     "parameters.min_brightness.default: True is not of type 'number'"),
    ({"parameters": {"min_brightness": {"type": "integer", "enum": [1, 2], "default": 3}}},
     "parameters.min_brightness.default: 3 is not one of [1, 2]"),
    ({"parameters": {"min_brightness": {"type": "number", "enum": []}}},
     "parameters.min_brightness.enum: expected a non-empty list of number values"),
    ({"parameters": {"min_brightness": {"type": "number", "enum": [1, "two"]}}},
     "parameters.min_brightness.enum[1]: 'two' is not of type 'number'"),
    ({"parameters": {"min_brightness": {"type": "number", "description": 5}}},
     "parameters.min_brightness.description: expected a string"),
    ({"parameters": {"min_brightness": "number"}},
     "parameters.min_brightness: expected a mapping, e.g. {type: number, default: 1}"),
    ({"required": ["foo"]}, "required[0]: unknown parameter 'foo'"),
    ({"required": ["min_brightness", "min_brightness"]}, "required[1]: 'min_brightness' is listed twice"),
    ({"required": "min_brightness"}, "required: expected a list of parameter names"),
    ({"inputs": {"kinds": ["movie"]}}, "inputs.kinds[0]: unknown kind 'movie'; known: any, dicom, image, video"),
    ({"inputs": {"kinds": []}},
     "inputs.kinds: expected a non-empty list of kinds from any, dicom, image, video, e.g. [video]"),
    ({"inputs": {"max_bytes": 0}}, "inputs.max_bytes: expected a positive integer (bytes), got 0"),
    ({"inputs": {"size": 1}}, "inputs.size: unknown field; known: kinds, max_bytes"),
    ({"inputs": [1]}, "inputs: expected a mapping, e.g. {kinds: [video], max_bytes: 4294967296}"),
    ({"resources": {"gpu": 17}}, "resources.gpu: expected an integer from 0 to 16, got 17"),
    ({"resources": {"gpu": True}}, "resources.gpu: expected an integer from 0 to 16, got True"),
    ({"resources": {"gpu": 1.0}}, "resources.gpu: expected an integer from 0 to 16, got 1.0"),
    ({"resources": {"cpu": 0}}, "resources.cpu: expected a number greater than 0 (cores), got 0"),
    ({"resources": {"memory_gib": -1}}, "resources.memory_gib: expected a number greater than 0 (GiB), got -1"),
    ({"resources": {"timeout_s": 604801}},
     "resources.timeout_s: expected a number of seconds greater than 0, at most 604800, got 604801"),
    ({"resources": {"max_attempts": 0}}, "resources.max_attempts: expected an integer from 1 to 10, got 0"),
    ({"resources": {"gpus": 1}},
     "resources.gpus: unknown field; known: cpu, gpu, max_attempts, memory_gib, timeout_s"),
    ({"queue": "q"}, "queue: must match ^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$, got 'q'"),
    ({"requirements": "numpy"}, "requirements: expected a list of strings"),
    ({"requirements": ["numpy", 2]}, "requirements[1]: expected a non-empty string"),
])
def test_bad_descriptor(change: dict[str, Any], expected: str) -> None:
    assert errors_of({**good(), **change}) == [expected]


@pytest.mark.parametrize("data", [None, [], "name: x", 3])
def test_top_level_must_be_a_mapping(data: Any) -> None:
    assert errors_of(data) == ["(top level): expected a mapping"]


def test_every_problem_is_listed() -> None:
    data = {**good(), "name": "X", "queue": "q", "resources": {"gpu": -1}}
    assert errors_of(data) == [
        "name: must match ^[a-z][a-z0-9_]{2,40}$, got 'X'",
        "resources.gpu: expected an integer from 0 to 16, got -1",
        "queue: must match ^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$, got 'q'",
    ]


def test_error_message_names_the_source() -> None:
    with pytest.raises(InvalidDescriptor) as info:
        parse_descriptor({**good(), "name": None}, "algo/scantide-algorithm.yaml")
    assert info.value.message == "invalid algorithm descriptor algo/scantide-algorithm.yaml: name: required"
    assert info.value.code == "invalid_descriptor"


def test_broken_parameters_do_not_add_placeholder_noise() -> None:
    expected = ("parameters: expected a mapping of parameter name to its schema, "
                "e.g. {threshold: {type: number, default: 0.5}}")
    assert errors_of({**good(), "parameters": "x", "required": ["min_brightness"]}) == [expected]


@pytest.mark.parametrize("resources, queue", [({"gpu": 1}, "gpu"), ({"gpu": 0}, "cpu"), ({}, "cpu")])
def test_queue_defaults_by_gpu(resources: dict[str, Any], queue: str) -> None:
    data = {**good(), "resources": resources}
    del data["queue"]
    assert parse_descriptor(data).queue == queue


def test_given_queue_wins() -> None:
    assert parse_descriptor({**good(), "resources": {"gpu": 1}, "queue": "cpu.large"}).queue == "cpu.large"


# -- loading ---------------------------------------------------------------------------------------------------
def test_load_yaml_and_json_agree() -> None:
    from_yaml = load_descriptor(GOOD_YAML, "scantide-algorithm.yaml")
    assert load_descriptor(GOOD_YAML.encode(), "x/scantide-algorithm.yml") == from_yaml
    assert load_descriptor(json.dumps(good()), "scantide-algorithm.json") == from_yaml
    assert load_descriptor(b"\xef\xbb\xbf" + json.dumps(good()).encode(), "scantide-algorithm.json") == from_yaml


def test_comma_in_an_unquoted_flow_value_gets_a_hint() -> None:
    text = GOOD_YAML.replace("maximum: 255}", "maximum: 255, description: Darkest frame, in levels.}")
    with pytest.raises(InvalidDescriptor) as info:
        load_descriptor(text, "scantide-algorithm.yaml")
    assert info.value.errors == [f"parameters.min_brightness.in levels.: unknown keyword; allowed: {KNOWN_KEYWORDS} "
                                 "(a comma ends an unquoted value inside {...}: quote the text before it)"]
    quoted = GOOD_YAML.replace("maximum: 255}", 'maximum: 255, description: "Darkest frame, in levels."}')
    assert load_descriptor(quoted, "scantide-algorithm.yaml").parameters["min_brightness"]["description"] == (
        "Darkest frame, in levels.")


@pytest.mark.parametrize("text, filename, expected", [
    ("name: [x\n", "scantide-algorithm.yaml",
     "scantide-algorithm.yaml: not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ("name: a: b\n", "scantide-algorithm.yml",
     "scantide-algorithm.yml: not valid YAML: mapping values are not allowed here (line 1, column 8)"),
    ('{"name": }', "scantide-algorithm.json",
     "scantide-algorithm.json: not valid JSON: Expecting value (line 1, column 10)"),
    (b"name: \xff\n", "scantide-algorithm.yaml",
     "scantide-algorithm.yaml: not UTF-8 text: invalid start byte at byte 6"),
    ("", "scantide-algorithm.yaml", "(top level): expected a mapping"),
    ("- a\n- b\n", "scantide-algorithm.yaml", "(top level): expected a mapping"),
    ("name: x\n", "algorithm.toml", "algorithm.toml: expected a .yaml, .yml or .json file"),
])
def test_load_refuses(text: str | bytes, filename: str, expected: str) -> None:
    with pytest.raises(InvalidDescriptor) as info:
        load_descriptor(text, filename)
    assert info.value.errors == [expected]


def test_yaml_number_version_is_refused_when_loading() -> None:
    with pytest.raises(InvalidDescriptor) as info:
        load_descriptor(GOOD_YAML.replace('version: "1"', "version: 1"), "scantide-algorithm.yaml")
    assert info.value.errors == ['version: expected a string (quote it: "1")']


# -- inputs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kinds, filename, accepted", [
    (("any",), "whatever.bin", True),
    (("any",), "noext", True),
    (("video",), "scan.mp4", True),
    (("video",), "SCAN.MOV", True),
    (("video",), "scan.png", False),
    (("video",), "mp4", False),
    (("image", "dicom"), "slice.DCM", True),
    (("image", "dicom"), "photo.jpeg", True),
    (("image", "dicom"), "clip.webm", False),
])
def test_input_spec_accepts(kinds: tuple[str, ...], filename: str, accepted: bool) -> None:
    assert InputSpec(kinds=kinds).accepts(filename) is accepted


# -- the command's argv ----------------------------------------------------------------------------------------
def typed(**schemas: dict[str, Any]) -> AlgorithmDescriptor:
    command = ["run", *(f"--{name}={{params.{name}}}" for name in schemas), "{inputs}", "{outputs}"]
    return parse_descriptor({"name": "typed", "version": "1", "command": command, "parameters": schemas})


def argv(descriptor: AlgorithmDescriptor, params: dict[str, Any]) -> list[str]:
    return command_argv(descriptor, here="/alg", inputs="/in", outputs="/out", params=params)


def test_command_argv_substitutes() -> None:
    d = parse_descriptor(good())
    assert argv(d, d.validate_params({})) == [
        "python", "/alg/frame_stats.py", "--min-brightness", "10", "/in", "/out"]
    assert argv(d, {"min_brightness": 12.5}) == ["python", "/alg/frame_stats.py", "--min-brightness", "12.5",
                                                 "/in", "/out"]


def test_command_argv_renders_each_type() -> None:
    d = typed(i={"type": "integer"}, f={"type": "number"}, b={"type": "boolean"}, s={"type": "string"})
    assert argv(d, d.validate_params({"i": 8.0, "f": 10.0, "b": False, "s": "a b"})) == [
        "run", "--i=8", "--f=10.0", "--b=false", "--s=a b", "/in", "/out"]
    assert argv(d, {"i": 3, "f": 0.1, "b": True, "s": ""}) == [
        "run", "--i=3", "--f=0.1", "--b=true", "--s=", "/in", "/out"]


def test_command_argv_takes_defaults_for_missing_params() -> None:
    assert argv(parse_descriptor(good()), {}) == ["python", "/alg/frame_stats.py", "--min-brightness", "10",
                                                  "/in", "/out"]


def test_command_argv_keeps_literal_braces() -> None:
    d = parse_descriptor({**good(), "command": ["python", "-c", "print({{}}, '{inputs}')"]})
    assert argv(d, {}) == ["python", "-c", "print({}, '/in')"]


@pytest.mark.parametrize("value", ["$(rm -rf x)", "a; b", "`id`", "x y\nz", "'\"", "a/b..c", "..."])
def test_hostile_values_stay_one_literal_element(value: str) -> None:
    d = parse_descriptor({"name": "echoer", "version": "1", "command": ["echo", "{params.s}", "pre-{params.s}"],
                          "parameters": {"s": {"type": "string"}}})
    assert argv(d, {"s": value}) == ["echo", value, f"pre-{value}"]


def test_option_like_string_as_whole_element_is_refused() -> None:
    d = parse_descriptor({"name": "echoer", "version": "1", "command": ["echo", "{params.s}"],
                          "parameters": {"s": {"type": "string"}}})
    with pytest.raises(InvalidParams) as info:
        argv(d, {"s": "--x"})
    assert info.value.message == ("params.s: '--x' would be read as an option in command[1]; a value that makes up "
                                  "a whole argument may not start with '-'")


@pytest.mark.parametrize(("value", "where"), [("../../etc/passwd", 1), ("/etc/passwd", 1), ("a/../../b", 2)])
def test_values_that_could_name_a_path_outside_the_run_are_refused(value: str, where: int) -> None:
    d = parse_descriptor({"name": "echoer", "version": "1", "command": ["echo", "{params.s}", "pre-{params.t}"],
                          "parameters": {"s": {"type": "string", "default": "ok"},
                                         "t": {"type": "string", "default": "ok"}}})
    name = "s" if where == 1 else "t"
    with pytest.raises(InvalidParams) as info:
        argv(d, {name: value})
    assert info.value.message == (f"params.{name}: {value!r} could name a path outside the run's folders in "
                                  f"command[{where}]; a value may not hold a '..' segment, nor start with '/' as a "
                                  "whole argument")
    assert argv(d, {"t": "/abs/inside/a/word"})[2] == "pre-/abs/inside/a/word"  # not a whole argument: a string


def test_option_like_value_inside_an_element_and_negative_numbers_pass() -> None:
    d = typed(s={"type": "string"}, n={"type": "number"})
    assert argv(d, {"s": "--x", "n": -5}) == ["run", "--s=--x", "--n=-5", "/in", "/out"]


def test_nul_is_refused_in_params_and_paths() -> None:
    d = typed(s={"type": "string"})
    with pytest.raises(InvalidParams) as info:
        argv(d, {"s": "a\0b"})
    assert info.value.message == "params.s: contains a NUL character"
    with pytest.raises(InvalidParams) as info:
        command_argv(d, here="/alg", inputs="/in\0", outputs="/out", params={"s": "a"})
    assert info.value.message == "inputs: contains a NUL character"


def test_missing_value_without_default_is_refused() -> None:
    d = typed(s={"type": "string"})
    with pytest.raises(InvalidParams) as info:
        argv(d, {})
    assert info.value.message == "params.s: no value for {params.s} in command[1]"
