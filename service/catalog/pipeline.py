"""The pipeline descriptor: ``scantide-pipeline.yaml`` (or ``.json``) read into a ``PipelineDescriptor``.

A pipeline is steps, each running one registered algorithm on one scan. A step runs once the steps
it ``needs`` have ended: completed or skipped (a failed one fails the run). Its ``when`` (see
``service.catalog.when``) can skip it, its ``inputs`` name what lands in its ``{inputs}``: the scan
and/or the outputs of steps upstream, and ``compute`` names the target it runs on.

``parse_pipeline`` checks the shape and the graph (unknown steps, cycles, ``when`` and ``inputs``
that read a step that is not upstream) and reports every problem with its field path;
``check_references`` checks what needs the registry: algorithms, versions, params, targets.
Pure: no I/O besides parsing the text given.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from service.catalog.descriptor import NAME_PATTERN, _version, load_data
from service.catalog.when import When, WhenError, parse_when
from service.errors import InvalidParams, InvalidPipeline

if TYPE_CHECKING:
    from service.catalog.descriptor import AlgorithmDescriptor

PIPELINE_NAMES = ("scantide-pipeline.yaml", "scantide-pipeline.yml", "scantide-pipeline.json")
STEP_PATTERN = r"^[a-z][a-z0-9_]{0,40}$"
TARGET_PATTERN = r"^[a-z][a-z0-9_-]{0,40}$"
MAX_STEPS = 50
SCAN_INPUT = "scan"
FIELDS = ("description", "name", "steps", "version")
STEP_FIELDS = ("algorithm", "compute", "inputs", "name", "needs", "params", "version", "when")


@dataclass(frozen=True)
class PipelineStep:
    """One step. ``inputs``: ``"scan"`` and/or upstream step names whose outputs it reads."""

    name: str
    algorithm: str
    version: str | None = None
    compute: str | None = None
    needs: tuple[str, ...] = ()
    when: When | None = None
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = (SCAN_INPUT,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "algorithm": self.algorithm}
        for key in ("version", "compute"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["needs"] = list(self.needs)
        if self.when is not None:
            out["when"] = self.when.text
        out["params"] = deepcopy(self.params)
        out["inputs"] = [i if i == SCAN_INPUT else f"steps.{i}.outputs" for i in self.inputs]
        return out


@dataclass(frozen=True)
class PipelineDescriptor:
    name: str
    version: str
    description: str
    steps: tuple[PipelineStep, ...]

    def step(self, name: str) -> PipelineStep:
        return next(s for s in self.steps if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, in the descriptor's own field names: ``parse_pipeline(d.to_dict()) == d``."""
        return {"name": self.name, "version": self.version, "description": self.description,
                "steps": [s.to_dict() for s in self.steps]}


def load_pipeline(text: str | bytes, filename: str) -> PipelineDescriptor:
    """Parse a pipeline file's text: YAML (``safe_load``) for .yaml/.yml, JSON for .json."""
    return parse_pipeline(load_data(text, filename, InvalidPipeline), filename)


def parse_pipeline(data: Any, source: str = "") -> PipelineDescriptor:
    """Check ``data`` (a loaded descriptor); raises ``InvalidPipeline`` listing every problem."""
    if not isinstance(data, Mapping):
        raise InvalidPipeline(["(top level): expected a mapping"], source)
    d = {key: value for key, value in data.items() if value is not None}
    errors = [f"{key}: unknown field; known: {', '.join(FIELDS)}" for key in d if key not in FIELDS]
    name = d.get("name")
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        errors.append(f"name: must match {NAME_PATTERN}, got {name!r}" if name is not None else "name: required")
    version = _version(d.get("version"), errors)
    description = d.get("description", "")
    if not isinstance(description, str):
        errors.append("description: expected a string")
    raw = d.get("steps")
    if not isinstance(raw, list) or not raw:
        errors.append("steps: expected a non-empty list of steps")
        raw = []
    elif len(raw) > MAX_STEPS:
        errors.append(f"steps: at most {MAX_STEPS} steps, got {len(raw)}")
    steps = [_step(i, s, errors) for i, s in enumerate(raw)]
    _check_graph(steps, errors)
    if errors:
        raise InvalidPipeline(errors, source)
    return PipelineDescriptor(name=str(name), version=version, description=description,
                              steps=tuple(s for s in steps if s is not None))


def _step(i: int, raw: Any, errors: list[str]) -> PipelineStep | None:
    at = f"steps[{i}]"
    if not isinstance(raw, Mapping):
        errors.append(f"{at}: expected a mapping with name and algorithm")
        return None
    s = {key: value for key, value in raw.items() if value is not None}
    before = len(errors)
    errors.extend(f"{at}.{key}: unknown field; known: {', '.join(STEP_FIELDS)}" for key in s if key not in STEP_FIELDS)
    name, algorithm = s.get("name"), s.get("algorithm")
    if not isinstance(name, str) or not re.match(STEP_PATTERN, name):
        errors.append(f"{at}.name: must match {STEP_PATTERN}, got {name!r}" if name is not None
                      else f"{at}.name: required")
    elif keyword.iskeyword(name):
        errors.append(f"{at}.name: {name!r} is a reserved word, which a when could not name: choose another")
    elif name == SCAN_INPUT:
        errors.append(f"{at}.name: {name!r} is reserved for the scan itself (inputs: [{SCAN_INPUT}]): "
                      f"choose another")
    if not isinstance(algorithm, str) or not re.match(NAME_PATTERN, algorithm):
        errors.append(f"{at}.algorithm: must match {NAME_PATTERN}, got {algorithm!r}" if algorithm is not None
                      else f"{at}.algorithm: required")
    version = s.get("version")
    if version is not None:
        version = _version(version, sub := [])
        errors.extend(f"{at}.{e}" for e in sub)
    compute = s.get("compute")
    if compute is not None and (not isinstance(compute, str) or not re.match(TARGET_PATTERN, compute)):
        errors.append(f"{at}.compute: must match {TARGET_PATTERN}, got {compute!r}")
    needs = s.get("needs", [])
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        errors.append(f"{at}.needs: expected a list of step names")
        needs = []
    params = s.get("params", {})
    if not isinstance(params, Mapping):
        errors.append(f"{at}.params: expected a mapping of parameter values")
        params = {}
    when = None
    if "when" in s:
        if not isinstance(s["when"], str):
            errors.append(f"{at}.when: expected an expression in a string, e.g. \"steps.stats.result.ok == true\"")
        else:
            try:
                when = parse_when(s["when"])
            except WhenError as exc:
                errors.append(f"{at}.when: {str(exc).removeprefix('when: ')}")
    inputs = _inputs(at, s.get("inputs", [SCAN_INPUT]), errors)
    if len(errors) > before:
        return _Broken(name if isinstance(name, str) else f"#{i}", tuple(needs))
    return PipelineStep(name=name, algorithm=algorithm, version=version, compute=compute, needs=tuple(needs),
                        when=when, params=deepcopy(dict(params)), inputs=inputs)


class _Broken(PipelineStep):
    """A step with errors of its own, kept so the graph checks still see its name and needs."""

    def __init__(self, name: str, needs: tuple[str, ...]) -> None:
        super().__init__(name=name, algorithm="", needs=needs)


def _inputs(at: str, value: Any, errors: list[str]) -> tuple[str, ...]:
    wanted = f'{at}.inputs: expected a list of "scan" and "steps.<step>.outputs"'
    if not isinstance(value, list) or not value:
        errors.append(wanted)
        return ()
    out: list[str] = []
    for j, item in enumerate(value):
        m = re.fullmatch(r"steps\.([a-z][a-z0-9_]{0,40})\.outputs", item) if isinstance(item, str) else None
        if item == SCAN_INPUT or m:
            out.append(SCAN_INPUT if item == SCAN_INPUT else m.group(1))
        else:
            errors.append(f'{at}.inputs[{j}]: expected "scan" or "steps.<step>.outputs", got {item!r}')
    return tuple(out)


def _check_graph(steps: list[PipelineStep | None], errors: list[str]) -> None:
    """Unknown and duplicate names, cycles, and reads of steps that are not upstream."""
    index: dict[str, int] = {}
    for i, s in enumerate(steps):
        if s is None:
            continue
        if s.name in index:
            errors.append(f"steps[{i}].name: {s.name!r} is already the name of steps[{index[s.name]}]")
        else:
            index[s.name] = i
    graph: dict[str, dict[str, None]] = {}  # step -> its needs, both in descriptor order (never a set's order)
    for i, s in enumerate(steps):
        if s is None:
            continue
        for j, need in enumerate(s.needs):
            if need not in index:
                errors.append(f"steps[{i}].needs[{j}]: unknown step {need!r}")
            elif need == s.name:
                errors.append(f"steps[{i}].needs[{j}]: a step cannot need itself")
        graph.setdefault(s.name, {}).update(dict.fromkeys(n for n in s.needs if n in index and n != s.name))
    try:
        order = list(_sorter(graph).static_order())
    except CycleError as exc:
        cycle = list(exc.args[1])
        errors.append(f"steps: the needs form a cycle: {' -> '.join(reversed(cycle))}")
        return
    upstream: dict[str, set[str]] = {}
    for name in order:
        upstream[name] = set().union(*({n} | upstream[n] for n in graph.get(name, ())))
    for i, s in enumerate(steps):
        if s is None or isinstance(s, _Broken):
            continue
        for name in sorted(s.when.steps() if s.when else ()):
            if name not in upstream[s.name]:
                errors.append(f"steps[{i}].when: reads steps.{name}, which is not upstream of this step "
                              f"(add it to needs)")
        for j, name in enumerate(s.inputs):
            if name != SCAN_INPUT and name not in upstream[s.name]:
                errors.append(f"steps[{i}].inputs[{j}]: steps.{name}.outputs is not upstream of this step "
                              f"(add it to needs)")


def _sorter(graph: Mapping[str, Iterable[str]]) -> TopologicalSorter[str]:
    """Every node added first, in ``graph``'s order: the order (and a cycle's report) follows the
    descriptor, not the order a set or a forward reference in ``needs`` happened to give."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name in graph:
        sorter.add(name)
    for name, needs in graph.items():
        sorter.add(name, *needs)
    return sorter


def step_order(pipeline: PipelineDescriptor) -> list[str]:
    """Step names in an order where every step comes after the steps it needs; the same order every time
    (it follows the descriptor's order, never a set's)."""
    return list(_sorter({s.name: s.needs for s in pipeline.steps}).static_order())


def check_references(pipeline: PipelineDescriptor, lookup: Callable[[PipelineStep], AlgorithmDescriptor | None],
                     targets: tuple[str, ...]) -> list[str]:
    """What the registry refuses, by field path: unknown algorithms or versions, params the step's
    algorithm refuses, unknown compute targets. ``lookup(step)``: the descriptor of the step's
    algorithm version (the newest when it names none) on its compute target, or None."""
    errors: list[str] = []
    for i, s in enumerate(pipeline.steps):
        at = f"steps[{i}]"
        if s.compute is not None and s.compute not in targets:
            errors.append(f"{at}.compute: unknown compute target {s.compute!r}; known: {', '.join(targets)}")
            continue
        algorithm = lookup(s)
        if algorithm is None:
            what = f"version {s.version!r} of algorithm {s.algorithm!r}" if s.version else f"algorithm {s.algorithm!r}"
            errors.append(f"{at}.{'version' if s.version else 'algorithm'}: unknown {what}: register it first")
        else:
            try:
                algorithm.validate_params(s.params)
            except InvalidParams as exc:
                errors.extend(f"{at}.{problem}" for problem in param_problems(exc))
    return errors


def param_problems(exc: InvalidParams) -> list[str]:
    """Each problem of a refusal (``"params.a: …; params.b: …"``), each starting with its field path."""
    return re.split(r"; (?=params\.)", exc.message)
