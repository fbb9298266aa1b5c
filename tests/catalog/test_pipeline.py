"""The pipeline descriptor: parsing, every refusal with its exact message, loading, the registry's
checks (``check_references``) and the order of the steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.catalog import AlgorithmDescriptor, parse_descriptor
from service.catalog.pipeline import (
    PipelineDescriptor,
    PipelineStep,
    check_references,
    load_pipeline,
    parse_pipeline,
    step_order,
)
from service.catalog.when import parse_when
from service.errors import InvalidPipeline

REPO = Path(__file__).resolve().parents[2]

GOOD_YAML = """\
name: triage
version: "1"
description: Statistics on every scan, a summary of the long bright ones, a report of both.
steps:
  - name: stats
    algorithm: frame_stats
    params: {min_brightness: 20}
  - name: summary
    algorithm: video_summary
    version: "2.1"
    compute: gpu-box
    needs: [stats]
    when: "steps.stats.result.duration_s >= 2 and scan.metadata.site == 'north'"
    params: {keyframes: 6}
    inputs: [scan, steps.stats.outputs]
  - name: report
    algorithm: scan_report
    needs: [stats, summary]
    inputs: [steps.stats.outputs, steps.summary.outputs]
"""

STEP_FIELDS = "algorithm, compute, inputs, name, needs, params, version, when"
INPUTS_ITEM = 'expected "scan" or "steps.<step>.outputs", got'
NOT_UPSTREAM = "is not upstream of this step (add it to needs)"


def good() -> dict[str, Any]:
    return yaml.safe_load(GOOD_YAML)


def step(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "algorithm": "frame_stats", **fields}


def pipeline(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "pipe", "version": "1", "steps": list(steps)}


def errors_of(data: Any) -> list[str]:
    with pytest.raises(InvalidPipeline) as info:
        parse_pipeline(data, "scantide-pipeline.yaml")
    return info.value.errors


# --- a valid descriptor ---------------------------------------------------------------------------------------------


def test_good_pipeline_parses() -> None:
    d = parse_pipeline(good())
    assert d.name == "triage"
    assert d.version == "1"
    assert d.description == "Statistics on every scan, a summary of the long bright ones, a report of both."
    assert [s.name for s in d.steps] == ["stats", "summary", "report"]
    assert d.step("stats") == PipelineStep(name="stats", algorithm="frame_stats", params={"min_brightness": 20})
    summary = d.step("summary")
    assert (summary.algorithm, summary.version, summary.compute) == ("video_summary", "2.1", "gpu-box")
    assert summary.needs == ("stats",)
    assert summary.when == parse_when("steps.stats.result.duration_s >= 2 and scan.metadata.site == 'north'")
    assert summary.when is not None and summary.when.steps() == frozenset({"stats"})
    assert summary.params == {"keyframes": 6}
    assert summary.inputs == ("scan", "stats")
    assert d.step("report").inputs == ("stats", "summary")


def test_a_minimal_step_takes_the_defaults() -> None:
    d = parse_pipeline({"name": "tiny", "version": "0.1", "steps": [{"name": "a", "algorithm": "frame_stats"}]})
    assert d == PipelineDescriptor(name="tiny", version="0.1", description="",
                                   steps=(PipelineStep(name="a", algorithm="frame_stats"),))
    a = d.steps[0]
    assert (a.version, a.compute, a.needs, a.when, a.params, a.inputs) == (None, None, (), None, {}, ("scan",))


def test_null_fields_are_as_if_absent() -> None:
    data = pipeline(step("a", version=None, compute=None, needs=None, when=None, params=None, inputs=None))
    assert parse_pipeline({**data, "description": None}) == parse_pipeline(pipeline(step("a")))


def test_round_trip_through_to_dict() -> None:
    d = parse_pipeline(good())
    assert parse_pipeline(d.to_dict()) == d
    assert parse_pipeline(json.loads(json.dumps(d.to_dict()))) == d
    assert d.to_dict()["steps"][1] == {
        "name": "summary", "algorithm": "video_summary", "version": "2.1", "compute": "gpu-box", "needs": ["stats"],
        "when": "steps.stats.result.duration_s >= 2 and scan.metadata.site == 'north'", "params": {"keyframes": 6},
        "inputs": ["scan", "steps.stats.outputs"]}
    assert d.to_dict()["steps"][0] == {"name": "stats", "algorithm": "frame_stats", "needs": [],
                                       "params": {"min_brightness": 20}, "inputs": ["scan"]}


def test_to_dict_and_the_descriptor_share_no_params() -> None:
    d = parse_pipeline(good())
    d.to_dict()["steps"][0]["params"]["min_brightness"] = 99
    assert d.step("stats").params == {"min_brightness": 20}
    data = good()
    parsed = parse_pipeline(data)
    data["steps"][0]["params"]["min_brightness"] = 99
    assert parsed.step("stats").params == {"min_brightness": 20}


def test_load_yaml_and_json_agree() -> None:
    from_yaml = load_pipeline(GOOD_YAML, "scantide-pipeline.yaml")
    assert from_yaml == parse_pipeline(good())
    assert load_pipeline(GOOD_YAML.encode(), "x/scantide-pipeline.yml") == from_yaml
    assert load_pipeline(json.dumps(good()), "scantide-pipeline.json") == from_yaml
    assert load_pipeline(b"\xef\xbb\xbf" + json.dumps(good()).encode(), "scantide-pipeline.json") == from_yaml
    assert load_pipeline(yaml.safe_dump(from_yaml.to_dict()), "scantide-pipeline.yaml") == from_yaml


def test_the_shipped_example_loads() -> None:
    path = REPO / "examples" / "pipelines" / "triage" / "scantide-pipeline.yaml"
    if not path.exists():
        pytest.skip("no examples/pipelines/triage in this checkout")
    d = load_pipeline(path.read_bytes(), path.name)
    assert parse_pipeline(d.to_dict()) == d


# --- refusals, each with its exact messages -------------------------------------------------------------------------


@pytest.mark.parametrize("data, errors", [
    pytest.param(pipeline(step("a", needs=["b"]), step("b", needs=["a"])),
                 ["steps: the needs form a cycle: a -> b -> a"], id="cycle-of-2"),
    pytest.param(pipeline(step("a", needs=["c"]), step("b", needs=["a"]), step("c", needs=["b"])),
                 ["steps: the needs form a cycle: a -> c -> b -> a"], id="cycle-of-3"),
    pytest.param(pipeline(step("root"), step("a", needs=["root", "b"]), step("b", needs=["c"]), step("c", needs=["a"])),
                 ["steps: the needs form a cycle: a -> b -> c -> a"], id="cycle-below-a-root"),
    pytest.param(pipeline(step("a", needs=["a"])),
                 ["steps[0].needs[0]: a step cannot need itself"], id="needs-itself"),
    pytest.param(pipeline(step("a"), step("b", needs=["a", "zz"])),
                 ["steps[1].needs[1]: unknown step 'zz'"], id="unknown-need"),
    pytest.param(pipeline(step("a", needs=["b", "zz"]), step("b", needs=["a"])),
                 ["steps[0].needs[1]: unknown step 'zz'", "steps: the needs form a cycle: a -> b -> a"],
                 id="unknown-need-and-cycle"),
    pytest.param(pipeline(step("a"), step("b"), step("a", algorithm="scan_report")),
                 ["steps[2].name: 'a' is already the name of steps[0]"], id="duplicate-name"),
    pytest.param(pipeline(step("a", needs="b")),
                 ["steps[0].needs: expected a list of step names"], id="needs-not-a-list"),
    pytest.param(pipeline(step("a", needs=["b", 3]), step("b")),
                 ["steps[0].needs: expected a list of step names"], id="needs-not-names"),
    pytest.param(pipeline(step("a"), step("b", needs=["a"], when="steps.a.result.x >")),
                 ["steps[1].when: syntax error at the end of the expression: invalid syntax"],
                 id="when-syntax"),
    pytest.param(pipeline(step("a"), step("b", needs=["a"], when="steps.a.result.n(1) > 2")),
                 ["steps[1].when: unexpected '(' at column 17: function calls are not allowed"],
                 id="when-call"),
    pytest.param(pipeline(step("a", when="scan.metadata.size + 1 > 2")),
                 ["steps[0].when: unexpected '+' at column 20: arithmetic and bitwise operators are not allowed"],
                 id="when-arithmetic"),
    pytest.param(pipeline(step("a", when=True)),
                 ['steps[0].when: expected an expression in a string, e.g. "steps.stats.result.ok == true"'],
                 id="when-not-a-string"),
    pytest.param(pipeline(step("a"), step("b", when="steps.c.result.ok == true"), step("c")),
                 [f"steps[1].when: reads steps.c, which {NOT_UPSTREAM}"], id="when-reads-a-sibling"),
    pytest.param(pipeline(step("a", when="steps.a.state == 'completed'")),
                 [f"steps[0].when: reads steps.a, which {NOT_UPSTREAM}"], id="when-reads-itself"),
    pytest.param(pipeline(step("a"), step("b", needs=["a"]), step("c", needs=["a"], when="steps.b.result.ok")),
                 [f"steps[2].when: reads steps.b, which {NOT_UPSTREAM}"], id="when-reads-a-fan-out-sibling"),
    pytest.param(pipeline(step("a"), step("b", inputs=["scan", "steps.c.outputs"]), step("c", needs=["b"])),
                 [f"steps[1].inputs[1]: steps.c.outputs {NOT_UPSTREAM}"], id="inputs-read-downstream"),
    pytest.param(pipeline(step("a", inputs=["steps.a.outputs"])),
                 [f"steps[0].inputs[0]: steps.a.outputs {NOT_UPSTREAM}"], id="inputs-read-itself"),
    pytest.param(pipeline(step("a"), step("b", needs=["a"], inputs=["steps.a.output", 3, "Scan"])),
                 [f"steps[1].inputs[0]: {INPUTS_ITEM} 'steps.a.output'", f"steps[1].inputs[1]: {INPUTS_ITEM} 3",
                  f"steps[1].inputs[2]: {INPUTS_ITEM} 'Scan'"], id="bad-inputs-items"),
    pytest.param(pipeline(step("a", inputs=[])),
                 ['steps[0].inputs: expected a list of "scan" and "steps.<step>.outputs"'], id="inputs-empty"),
    pytest.param(pipeline(step("a", inputs="scan")),
                 ['steps[0].inputs: expected a list of "scan" and "steps.<step>.outputs"'], id="inputs-not-a-list"),
    pytest.param({**pipeline(step("a")), "stages": []},
                 ["stages: unknown field; known: description, name, steps, version"], id="unknown-field"),
    pytest.param(pipeline(step("a", depends_on=["b"])),
                 [f"steps[0].depends_on: unknown field; known: {STEP_FIELDS}"], id="unknown-step-field"),
    pytest.param(pipeline({"algorithm": "frame_stats"}, {"name": "b"}),
                 ["steps[0].name: required", "steps[1].algorithm: required"], id="missing-name-and-algorithm"),
    pytest.param(pipeline(step("for")),
                 ["steps[0].name: 'for' is a reserved word, which a when could not name: choose another"],
                 id="reserved-word"),
    pytest.param(pipeline(step("scan"), step("b", needs=["scan"], inputs=["steps.scan.outputs"])),
                 ["steps[0].name: 'scan' is reserved for the scan itself (inputs: [scan]): choose another"],
                 id="step-named-scan"),
    pytest.param(pipeline(step("Stats")),
                 ["steps[0].name: must match ^[a-z][a-z0-9_]{0,40}$, got 'Stats'"], id="bad-step-name"),
    pytest.param(pipeline(step("a", algorithm="FS")),
                 ["steps[0].algorithm: must match ^[a-z][a-z0-9_]{2,40}$, got 'FS'"], id="bad-algorithm-name"),
    pytest.param(pipeline(step("a", version=2)),
                 ['steps[0].version: expected a string (quote it: "2")'], id="step-version-a-number"),
    pytest.param({**pipeline(step("a")), "version": 1.5},
                 ['version: expected a string (quote it: "1.5")'], id="version-a-number"),
    pytest.param({**pipeline(step("a")), "version": "1 beta"},
                 ["version: must match ^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$, got '1 beta'"], id="bad-version"),
    pytest.param({"steps": [step("a")]}, ["name: required", "version: required"], id="missing-name-and-version"),
    pytest.param({**pipeline(step("a")), "name": "Triage"},
                 ["name: must match ^[a-z][a-z0-9_]{2,40}$, got 'Triage'"], id="bad-name"),
    pytest.param({**pipeline(step("a")), "description": ["x"]},
                 ["description: expected a string"], id="description-not-a-string"),
    pytest.param(pipeline(), ["steps: expected a non-empty list of steps"], id="empty-steps"),
    pytest.param({"name": "pipe", "version": "1"}, ["steps: expected a non-empty list of steps"], id="no-steps"),
    pytest.param({**pipeline(), "steps": {"a": {}}}, ["steps: expected a non-empty list of steps"],
                 id="steps-a-mapping"),
    pytest.param(pipeline(*(step(f"s{i}") for i in range(51))), ["steps: at most 50 steps, got 51"],
                 id="too-many-steps"),
    pytest.param(pipeline("a", step("b", needs=["a"])),
                 ["steps[0]: expected a mapping with name and algorithm", "steps[1].needs[0]: unknown step 'a'"],
                 id="step-not-a-mapping"),
    pytest.param(pipeline(step("a", params=[1])),
                 ["steps[0].params: expected a mapping of parameter values"], id="params-not-a-mapping"),
    pytest.param(pipeline(step("a", compute="GPU box")),
                 ["steps[0].compute: must match ^[a-z][a-z0-9_-]{0,40}$, got 'GPU box'"], id="bad-compute"),
    pytest.param(pipeline(step("a", compute=5)),
                 ["steps[0].compute: must match ^[a-z][a-z0-9_-]{0,40}$, got 5"], id="compute-a-number"),
    pytest.param([step("a")], ["(top level): expected a mapping"], id="top-level-a-list"),
    pytest.param({"name": "pipe", "version": 1, "steps": [step("a", colour="red")], "color": "red"},
                 ["color: unknown field; known: description, name, steps, version",
                  'version: expected a string (quote it: "1")',
                  f"steps[0].colour: unknown field; known: {STEP_FIELDS}"], id="every-problem-at-once"),
])
def test_refusals(data: Any, errors: list[str]) -> None:
    assert errors_of(data) == errors


def test_a_broken_step_still_counts_in_the_graph() -> None:
    """A step with an error of its own keeps its name: steps needing it get no 'unknown step' error."""
    data = pipeline(step("a", params=[1], needs=["b"]), step("b", needs=["a"]), step("c", needs=["a"]))
    assert errors_of(data) == ["steps[0].params: expected a mapping of parameter values",
                               "steps: the needs form a cycle: a -> b -> a"]


def test_the_refusal_names_its_source() -> None:
    with pytest.raises(InvalidPipeline) as info:
        parse_pipeline(pipeline(step("a", needs=["a"])), "pipes/scantide-pipeline.yaml")
    assert info.value.code == "invalid_pipeline"
    assert info.value.message == ("invalid pipeline descriptor pipes/scantide-pipeline.yaml: "
                                  "steps[0].needs[0]: a step cannot need itself")


@pytest.mark.parametrize("text, filename, error", [
    ("name: [x\n", "scantide-pipeline.yaml",
     "scantide-pipeline.yaml: not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ("name: pipe\n  steps: x\n", "scantide-pipeline.yaml",
     "scantide-pipeline.yaml: not valid YAML: mapping values are not allowed here (line 2, column 8)"),
    ('{"name": "pipe",}', "scantide-pipeline.json",
     "scantide-pipeline.json: not valid JSON: Expecting property name enclosed in double quotes (line 1, column 17)"),
    (b"name: \xff\n", "scantide-pipeline.yaml", "scantide-pipeline.yaml: not UTF-8 text: invalid start byte at byte 6"),
    ("", "scantide-pipeline.yaml", "(top level): expected a mapping"),
    ("- a\n- b\n", "scantide-pipeline.yaml", "(top level): expected a mapping"),
    ("name: pipe\n", "pipeline.toml", "pipeline.toml: expected a .yaml, .yml or .json file"),
    ("name: pipe\nversion: 1\nsteps: [{name: a, algorithm: frame_stats}]\n", "scantide-pipeline.yaml",
     'version: expected a string (quote it: "1")'),
])
def test_load_refusals(text: str | bytes, filename: str, error: str) -> None:
    with pytest.raises(InvalidPipeline) as info:
        load_pipeline(text, filename)
    assert info.value.errors == [error]


def test_yaml_tags_are_refused() -> None:
    with pytest.raises(InvalidPipeline) as info:
        load_pipeline("name: !!python/object/apply:os.system [echo hi]\n", "scantide-pipeline.yaml")
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("scantide-pipeline.yaml: not valid YAML: could not determine a constructor")


# --- check_references -----------------------------------------------------------------------------------------------

TARGETS = ("local", "gpu-box")
ALGORITHMS = {
    ("frame_stats", "1"): parse_descriptor({
        "name": "frame_stats", "version": "1",
        "command": ["python", "{here}/stats.py", "{params.label}", "{inputs}", "{outputs}"],
        "parameters": {"label": {"type": "string", "default": "all"}}}),
    ("video_summary", "1"): parse_descriptor({
        "name": "video_summary", "version": "1", "python": "pkg.summary:run",
        "parameters": {"keyframes": {"type": "integer", "minimum": 1, "maximum": 12}}}),
    ("video_summary", "2"): parse_descriptor({
        "name": "video_summary", "version": "2", "python": "pkg.summary:run",
        "parameters": {"keyframes": {"type": "integer", "minimum": 1, "maximum": 24}}, "required": ["keyframes"]}),
}
NEWEST = {"frame_stats": "1", "video_summary": "2"}


def lookup(s: PipelineStep) -> AlgorithmDescriptor | None:
    """The registry as check_references sees it; nothing is registered on the gpu-box target."""
    if s.compute == "gpu-box":
        return None
    return ALGORITHMS.get((s.algorithm, s.version or NEWEST.get(s.algorithm, "")))


def references(*steps: dict[str, Any]) -> list[str]:
    return check_references(parse_pipeline(pipeline(*steps)), lookup, TARGETS)


def test_references_that_resolve() -> None:
    assert references(step("stats"), step("summary", algorithm="video_summary", needs=["stats"],
                                           params={"keyframes": 24}),
                      step("old", algorithm="video_summary", version="1", compute="local", params={"keyframes": 1}),
                      step("labelled", params={"label": "north"})) == []


@pytest.mark.parametrize("steps, errors", [
    pytest.param([step("a"), step("b", algorithm="no_such_algo")],
                 ["steps[1].algorithm: unknown algorithm 'no_such_algo': register it first"], id="unknown-algorithm"),
    pytest.param([step("a"), step("b", algorithm="video_summary", version="7", params={"keyframes": 2})],
                 ["steps[1].version: unknown version '7' of algorithm 'video_summary': register it first"],
                 id="unknown-version"),
    pytest.param([step("a"), step("b", algorithm="video_summary", version="1", params={"keyframes": 20})],
                 ["steps[1].params.keyframes: 20 is greater than the maximum of 12"], id="param-out-of-range"),
    pytest.param([step("a"), step("b", algorithm="video_summary", version="1", params={"keyframes": 0})],
                 ["steps[1].params.keyframes: 0 is less than the minimum of 1"], id="param-under-range"),
    pytest.param([step("a"), step("b", algorithm="video_summary")],
                 ["steps[1].params.keyframes: required"], id="param-required"),
    pytest.param([step("a"), step("b", algorithm="video_summary", params={"frames": 3, "keyframes": "6"})],
                 ["steps[1].params.frames: unknown parameter; known: keyframes",
                  "steps[1].params.keyframes: '6' is not of type 'integer'"], id="two-param-problems"),
    pytest.param([step("a", params={"label": "-rf"})],
                 ["steps[0].params.label: '-rf' would be read as an option in command[2]; a value that makes up a "
                  "whole argument may not start with '-'"], id="param-read-as-an-option"),
    pytest.param([step("a", compute="moon")],
                 ["steps[0].compute: unknown compute target 'moon'; known: local, gpu-box"], id="unknown-target"),
    pytest.param([step("a", compute="gpu-box")],
                 ["steps[0].algorithm: unknown algorithm 'frame_stats': register it first"],
                 id="not-registered-on-the-target"),
    pytest.param([step("a", compute="moon", algorithm="no_such_algo"), step("b", algorithm="no_such_algo"),
                  step("c", algorithm="video_summary", version="1", params={"keyframes": 13})],
                 ["steps[0].compute: unknown compute target 'moon'; known: local, gpu-box",
                  "steps[1].algorithm: unknown algorithm 'no_such_algo': register it first",
                  "steps[2].params.keyframes: 13 is greater than the maximum of 12"], id="every-step-checked"),
])
def test_reference_refusals(steps: list[dict[str, Any]], errors: list[str]) -> None:
    assert references(*steps) == errors


def test_lookup_sees_each_step() -> None:
    seen: list[tuple[str, str, str | None, str | None]] = []

    def record(s: PipelineStep) -> AlgorithmDescriptor | None:
        seen.append((s.name, s.algorithm, s.version, s.compute))
        return lookup(s)

    d = parse_pipeline(good())
    check_references(d, record, TARGETS)
    assert seen == [("stats", "frame_stats", None, None), ("summary", "video_summary", "2.1", "gpu-box"),
                    ("report", "scan_report", None, None)]


# --- step_order -----------------------------------------------------------------------------------------------------


def assert_topological(d: PipelineDescriptor, order: list[str]) -> None:
    assert sorted(order) == sorted(s.name for s in d.steps)
    for s in d.steps:
        assert all(order.index(n) < order.index(s.name) for n in s.needs), (s.name, order)


def test_step_order_fan_out_and_fan_in() -> None:
    d = parse_pipeline(pipeline(step("ingest"), step("left", needs=["ingest"]), step("right", needs=["ingest"]),
                                step("join", needs=["left", "right"])))
    assert step_order(d) == ["ingest", "left", "right", "join"]
    assert_topological(d, step_order(d))


def test_step_order_with_steps_listed_before_their_needs() -> None:
    d = parse_pipeline(pipeline(step("join", needs=["right", "left", "extra"]), step("right", needs=["ingest"]),
                                step("left", needs=["ingest"]), step("ingest"), step("extra")))
    assert step_order(d) == ["ingest", "extra", "right", "left", "join"]
    assert_topological(d, step_order(d))


def test_step_order_of_independent_steps_is_the_descriptor_order() -> None:
    d = parse_pipeline(pipeline(step("c"), step("a"), step("b")))
    assert step_order(d) == ["c", "a", "b"]


ORDER_SCRIPT = """
from service.catalog.pipeline import parse_pipeline, step_order
from service.errors import InvalidPipeline
s = lambda name, *needs: {"name": name, "algorithm": "frame_stats", "needs": list(needs)}
d = parse_pipeline({"name": "pipe", "version": "1", "steps": [
    s("join", "e", "d", "c", "b", "a"), s("a"), s("b"), s("c"), s("d"), s("e")]})
print(step_order(d))
try:
    parse_pipeline({"name": "pipe", "version": "1", "steps": [s("x", "e", "d", "c", "b"), s("b", "x"), s("c", "x"),
                    s("d", "x"), s("e", "x")]})
except InvalidPipeline as e:
    print(e.errors)
"""


def test_order_and_cycle_report_do_not_depend_on_the_hash_seed() -> None:
    """Every process (API, conductor) must see the same order, and a refusal must read the same each time."""
    outputs = set()
    for seed in ("1", "2", "3", "4"):
        done = subprocess.run([sys.executable, "-c", ORDER_SCRIPT], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60, check=True)
        outputs.add(done.stdout)
    assert outputs == {"['a', 'b', 'c', 'd', 'e', 'join']\n['steps: the needs form a cycle: x -> b -> x']\n"}


def test_yaml_aliases_and_deep_nesting_are_refused() -> None:
    """A few hundred bytes of nested aliases expand to gigabytes when an error message prints them."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nname: *b\n"
    with pytest.raises(InvalidPipeline) as info:
        load_pipeline(bomb, "scantide-pipeline.yaml")
    assert info.value.errors == ["scantide-pipeline.yaml: not valid YAML: aliases (*name) are not allowed "
                                 "(line 2, column 8)"]
    with pytest.raises(InvalidPipeline) as deep:
        load_pipeline("[" * 5000 + "]" * 5000, "scantide-pipeline.json")
    assert deep.value.errors == ["scantide-pipeline.json: nested too deeply"]
