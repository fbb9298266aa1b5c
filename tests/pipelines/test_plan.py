"""The run planner: which steps to submit, which to skip and why, and when (and how) the run ends.

Pure: a ``Run`` is built in memory, no store, no conductor."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.catalog.pipeline import PipelineDescriptor, parse_pipeline, step_order
from service.pipelines.plan import Plan, context, plan
from service.pipelines.store import Run, StepRun


def step(name: str, *needs: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "algorithm": "frame_stats", "needs": list(needs), **fields}


def pipeline(*steps: dict[str, Any]) -> PipelineDescriptor:
    return parse_pipeline({"name": "pipe", "version": "1", "steps": list(steps)})


def run_of(p: PipelineDescriptor, metadata: dict[str, Any] | None = None,
           results: dict[str, dict[str, Any]] | None = None, **states: str) -> Run:
    """Every step pending unless ``states`` says otherwise; ``results``: the completed steps' results."""
    results = results or {}
    steps = {s.name: StepRun(algorithm=s.algorithm, version="1", compute="local", state=states.get(s.name, "pending"),
                             result=results.get(s.name)) for s in p.steps}
    for name, state in states.items():
        assert name in steps, name
        if state == "failed":
            steps[name].error = {"code": "algorithm_failed", "message": f"{name} exited 1"}
    return Run(run_id="run-1", pipeline=p.name, version=p.version, scan_id="scan-1", scan_uri="file:///scans/1.mp4",
               metadata=metadata or {}, steps=steps, state="running")


# A diamond: fan-out after ingest, fan-in at join; a second root, lone.
DIAMOND = pipeline(step("ingest"), step("left", "ingest"), step("right", "ingest"), step("join", "left", "right"),
                   step("lone"))


# --- submitting -----------------------------------------------------------------------------------------------------


def test_the_roots_are_submitted_first() -> None:
    assert plan(DIAMOND, run_of(DIAMOND)) == Plan(submit=["ingest", "lone"])


@pytest.mark.parametrize("state", ["pending", "queued", "running"])
def test_a_step_waits_until_its_needs_end(state: str) -> None:
    p = pipeline(step("a"), step("b", "a"))
    assert plan(p, run_of(p, a=state)) == Plan(submit=["a"] if state == "pending" else [])


def test_steps_already_submitted_are_not_submitted_again() -> None:
    assert plan(DIAMOND, run_of(DIAMOND, ingest="queued", lone="running")) == Plan()


def test_fan_out_submits_both_steps_after_one() -> None:
    r = run_of(DIAMOND, ingest="completed", lone="running")
    assert plan(DIAMOND, r) == Plan(submit=["left", "right"])


@pytest.mark.parametrize("left, right, submit", [
    ("completed", "running", []),
    ("queued", "completed", []),
    ("completed", "pending", ["right"]),
    ("completed", "completed", ["join"]),
    ("skipped", "completed", ["join"]),
    ("skipped", "skipped", ["join"]),
])
def test_fan_in_waits_for_both_steps(left: str, right: str, submit: list[str]) -> None:
    r = run_of(DIAMOND, ingest="completed", lone="completed", left=left, right=right)
    assert plan(DIAMOND, r) == Plan(submit=submit)


def test_submissions_come_in_step_order() -> None:
    p = pipeline(step("join", "right", "left"), step("right", "ingest"), step("left", "ingest"), step("ingest"))
    assert plan(p, run_of(p, ingest="completed")).submit == ["right", "left"]


def test_the_run_is_not_changed() -> None:
    p = pipeline(step("a", when="scan.metadata.go == true"), step("b", "a"))
    r = run_of(p)
    before = copy.deepcopy(r)
    assert plan(p, r) == Plan(submit=["b"], skip={"a": "when is false: scan.metadata.go == true"})
    assert r == before


# --- when -----------------------------------------------------------------------------------------------------------

TRIAGE = pipeline(
    step("stats"),
    step("summary", "stats", when="steps.stats.result.duration_s >= 2 and steps.stats.result.mean_brightness > 20"),
    step("report", "stats", "summary", inputs=["steps.stats.outputs", "steps.summary.outputs"]),
)
SUMMARY_WHEN = "when is false: steps.stats.result.duration_s >= 2 and steps.stats.result.mean_brightness > 20"


def test_a_true_when_submits() -> None:
    r = run_of(TRIAGE, stats="completed", results={"stats": {"duration_s": 3.5, "mean_brightness": 80}})
    assert plan(TRIAGE, r) == Plan(submit=["summary"])


def test_a_false_when_skips_and_the_step_after_runs() -> None:
    """A skipped step has ended: a step needing it runs, in the same plan."""
    r = run_of(TRIAGE, stats="completed", results={"stats": {"duration_s": 1.0, "mean_brightness": 80}})
    assert plan(TRIAGE, r) == Plan(submit=["report"], skip={"summary": SUMMARY_WHEN})


@pytest.mark.parametrize("result", [
    {},  # no such keys: null, and null >= 2 is false
    {"duration_s": "long", "mean_brightness": 80},  # a string and a number are not ordered
    {"duration_s": None, "mean_brightness": 80},
    None,  # no result at all
])
def test_a_when_reading_a_missing_path_is_false(result: dict[str, Any] | None) -> None:
    r = run_of(TRIAGE, stats="completed", results={"stats": result} if result is not None else {})
    assert plan(TRIAGE, r) == Plan(submit=["report"], skip={"summary": SUMMARY_WHEN})


def test_a_skip_propagates_down_a_chain_in_one_plan() -> None:
    """Later steps see an earlier skip of the same plan: its state is skipped, its result is null."""
    p = pipeline(step("a", when="scan.metadata.kind == 'video'"),
                 step("b", "a", when="steps.a.state == 'skipped'"),
                 step("c", "a", when="steps.a.result.ok == true"),
                 step("d", "c"),
                 step("e", "d", "b"))
    assert plan(p, run_of(p, metadata={"kind": "image"})) == Plan(
        submit=["b", "d"], skip={"a": "when is false: scan.metadata.kind == 'video'",
                                 "c": "when is false: steps.a.result.ok == true"})


def test_a_when_reads_the_upstream_state() -> None:
    p = pipeline(step("a"), step("b", "a"), step("c", "a", "b", when="steps.b.state == 'completed'"))
    assert plan(p, run_of(p, a="completed", b="skipped")) == Plan(
        skip={"c": "when is false: steps.b.state == 'completed'"}, outcome="completed")
    assert plan(p, run_of(p, a="completed", b="completed")) == Plan(submit=["c"])


@pytest.mark.parametrize("metadata, submitted", [
    ({"site": "north", "frames": 400}, True),
    ({"site": "north", "frames": 100}, False),
    ({"site": "south", "frames": 400}, False),
    ({"site": "north", "frames": "400"}, False),
    ({"site": "north"}, False),
    ({}, False),
])
def test_a_when_over_the_scan_metadata(metadata: dict[str, Any], submitted: bool) -> None:
    when = "scan.metadata.site == 'north' and scan.metadata.frames > 300"
    p = pipeline(step("a", when=when), step("b", "a"))
    expected = Plan(submit=["a"]) if submitted else Plan(submit=["b"], skip={"a": f"when is false: {when}"})
    assert plan(p, run_of(p, metadata=metadata)) == expected


def test_a_when_over_the_scan_id_and_nested_metadata() -> None:
    p = pipeline(step("a", when="scan.scan_id == 'scan-1' and scan.metadata.device.model == 'x2'"))
    assert plan(p, run_of(p, metadata={"device": {"model": "x2"}})) == Plan(submit=["a"])
    assert plan(p, run_of(p, metadata={"device": "x2"})).skip == {
        "a": "when is false: scan.scan_id == 'scan-1' and scan.metadata.device.model == 'x2'"}


def test_context_is_what_a_when_reads() -> None:
    r = run_of(TRIAGE, metadata={"site": "north"}, results={"stats": {"ok": True}}, stats="completed",
               summary="running")
    assert context(r) == {
        "steps": {"stats": {"state": "completed", "result": {"ok": True}},
                  "summary": {"state": "running", "result": None},
                  "report": {"state": "pending", "result": None}},
        "scan": {"scan_id": "scan-1", "metadata": {"site": "north"}}}


# --- failure --------------------------------------------------------------------------------------------------------


def test_a_failed_step_stops_submissions_and_waits_for_running_steps() -> None:
    """Nothing new starts; every pending step is skipped naming the failed step; the run has not ended
    while a step is still queued or running."""
    r = run_of(DIAMOND, ingest="completed", left="failed", right="running")
    assert plan(DIAMOND, r) == Plan(skip={"join": "step left failed", "lone": "step left failed"})


@pytest.mark.parametrize("state", ["queued", "running"])
def test_a_failed_run_has_not_ended_while_a_step_is_still_in_flight(state: str) -> None:
    r = run_of(DIAMOND, ingest="completed", left="failed", right=state, join="skipped", lone="skipped")
    assert plan(DIAMOND, r) == Plan()


@pytest.mark.parametrize("right", ["completed", "failed", "skipped"])
def test_a_failed_run_ends_failed_once_nothing_is_in_flight(right: str) -> None:
    r = run_of(DIAMOND, ingest="completed", left="failed", right=right, join="skipped", lone="skipped")
    assert plan(DIAMOND, r) == Plan(outcome="failed", failed_step="left")


def test_a_failed_run_with_nothing_in_flight_ends_in_the_same_plan() -> None:
    r = run_of(DIAMOND, ingest="failed")
    reason = "step ingest failed"
    assert plan(DIAMOND, r) == Plan(skip={"left": reason, "right": reason, "join": reason, "lone": reason},
                                    outcome="failed", failed_step="ingest")


def test_the_failed_step_named_is_the_first_in_step_order() -> None:
    """step_order, not the descriptor's order: late comes after early and other."""
    p = pipeline(step("late", "early"), step("early"), step("other"))
    assert step_order(p) == ["early", "other", "late"]
    r = run_of(p, early="completed", late="failed", other="failed")
    assert plan(p, r) == Plan(outcome="failed", failed_step="other")
    r = run_of(p, early="failed", other="failed")
    assert plan(p, r) == Plan(skip={"late": "step early failed"}, outcome="failed", failed_step="early")


def test_a_failure_skips_a_step_whose_when_would_be_true() -> None:
    p = pipeline(step("a"), step("b"), step("c", "a", when="steps.a.state == 'completed'"))
    assert plan(p, run_of(p, a="completed", b="failed")) == Plan(skip={"c": "step b failed"}, outcome="failed",
                                                                 failed_step="b")


# --- the end --------------------------------------------------------------------------------------------------------


def test_all_steps_ended_is_completed() -> None:
    r = run_of(DIAMOND, ingest="completed", left="completed", right="skipped", join="completed", lone="completed")
    assert plan(DIAMOND, r) == Plan(outcome="completed")


def test_a_run_whose_every_step_is_skipped_is_completed() -> None:
    p = pipeline(step("a", when="scan.metadata.go == true"), step("b", "a", when="steps.a.state == 'completed'"))
    assert plan(p, run_of(p)) == Plan(skip={"a": "when is false: scan.metadata.go == true",
                                            "b": "when is false: steps.a.state == 'completed'"}, outcome="completed")


def test_a_run_is_not_ended_while_it_submits() -> None:
    r = run_of(TRIAGE, stats="completed", summary="completed")
    assert plan(TRIAGE, r) == Plan(submit=["report"])


def test_a_run_is_not_ended_while_a_step_runs() -> None:
    r = run_of(TRIAGE, stats="completed", summary="skipped", report="running")
    assert plan(TRIAGE, r) == Plan()


def test_a_whole_triage_run_step_by_step() -> None:
    """Apply each plan as the conductor would, completing what it submits."""
    r = run_of(TRIAGE, metadata={}, results={})
    results = {"stats": {"duration_s": 4, "mean_brightness": 50}, "summary": {"keyframes": 6}, "report": {}}
    submitted: list[list[str]] = []
    for _ in range(10):
        p = plan(TRIAGE, r)
        if p.outcome:
            break
        submitted.append(p.submit)
        for name in p.skip:
            r.steps[name].state = "skipped"
        for name in p.submit:
            r.steps[name].state, r.steps[name].result = "completed", results[name]
    assert submitted == [["stats"], ["summary"], ["report"]]
    assert (p.outcome, p.failed_step) == ("completed", None)
