"""The algorithm descriptor: ``scantide-algorithm.yaml`` (or ``.json``) read into an ``AlgorithmDescriptor``.

``parse_descriptor`` checks every field and reports every problem at once, each as
``"field.path: message"``, so an author fixes a descriptor in one round rather than one error per
upload. A descriptor names exactly one runner: ``command`` (an argv), ``image`` with ``command``
(the argv run inside that container image), ``python`` (``package.module:function``) or
``function`` (a cloudpickled function's file in the algorithm folder).

Pure: no I/O besides parsing the text given.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from scantide.bundle import DESCRIPTOR_NAMES  # one list for the server and the client
from service.catalog import params as _params
from service.catalog.command import check_command, command_argv
from service.catalog.params import RESERVED_PARAMS, is_number
from service.errors import InvalidDescriptor
from service.models import VERSION_PATTERN

__all__ = [
    "DESCRIPTOR_NAMES", "INPUT_KINDS", "NAME_PATTERN", "QUEUE_PATTERN", "RESERVED_PARAMS", "RUNNERS",
    "AlgorithmDescriptor", "InputSpec", "Resources", "command_argv", "load_descriptor", "parse_descriptor",
]

NAME_PATTERN = r"^[a-z][a-z0-9_]{2,40}$"
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$"  # a ClearML server refuses queue names under 3 characters
PYTHON_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
INPUT_KINDS: dict[str, tuple[str, ...]] = {  # kind -> accepted file suffixes, lower case; any: every file
    "video": (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"),
    "image": (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"),
    "dicom": (".dcm", ".dicom"),
    "any": (),
}
RUNNERS = ("command", "image", "python", "python-function")
MAX_DESCRIPTION = 2000  # characters
MAX_GPU = 16
MAX_TIMEOUT_S = 604800.0  # seven days
MAX_ATTEMPTS = 10
FIELDS = ("command", "description", "function", "image", "inputs", "name", "parameters", "python", "queue",
          "required", "requirements", "resources", "version")


@dataclass(frozen=True)
class Resources:
    """What one run needs. ``memory_gib``: GiB; ``timeout_s``: seconds per attempt; ``max_attempts``:
    runs in all, the first included."""

    gpu: int = 0
    cpu: float = 1.0
    memory_gib: float = 1.0
    timeout_s: float = 1800.0
    max_attempts: int = 2


@dataclass(frozen=True)
class InputSpec:
    """The scans an algorithm takes: ``kinds`` (keys of ``INPUT_KINDS``), ``max_bytes`` (None: no limit)."""

    kinds: tuple[str, ...] = ("any",)
    max_bytes: int | None = None

    def accepts(self, filename: str) -> bool:
        """Whether a scan of this file name fits: always for kind ``any``, else by its suffix, any case."""
        if "any" in self.kinds:
            return True
        suffixes = tuple(s for kind in self.kinds for s in INPUT_KINDS.get(kind, ()))
        return bool(suffixes) and filename.lower().endswith(suffixes)


@dataclass(frozen=True)
class AlgorithmDescriptor:
    """A checked descriptor. ``runner`` is one of ``RUNNERS``; ``parameters`` maps each name to its schema."""

    name: str
    version: str
    description: str
    runner: str
    command: tuple[str, ...] = ()
    image: str | None = None
    python: str | None = None
    function: str | None = None
    parameters: dict[str, dict] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    inputs: InputSpec = InputSpec()
    resources: Resources = Resources()
    queue: str = "cpu"
    requirements: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, in the descriptor's own field names: ``parse_descriptor(d.to_dict()) == d``."""
        out: dict[str, Any] = {"name": self.name, "version": self.version, "description": self.description}
        if self.command:
            out["command"] = list(self.command)
        for key in ("image", "python", "function"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        inputs: dict[str, Any] = {"kinds": list(self.inputs.kinds)}
        if self.inputs.max_bytes is not None:
            inputs["max_bytes"] = self.inputs.max_bytes
        out.update(parameters=deepcopy(self.parameters), required=list(self.required), inputs=inputs,
                   resources=asdict(self.resources), queue=self.queue, requirements=list(self.requirements))
        return out

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema object a task's params must satisfy."""
        return _params.params_schema(self.parameters, self.required)

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The params with defaults applied; raises ``InvalidParams`` naming every problem, including a
        value the command line would misread (a whole argument starting with "-")."""
        checked = _params.validate_params(self.parameters, self.required, params)
        if self.command:
            command_argv(self, here="here", inputs="inputs", outputs="outputs", params=checked)
        return checked


def load_descriptor(text: str | bytes, filename: str) -> AlgorithmDescriptor:
    """Parse a descriptor file's text: YAML (``safe_load``) for .yaml/.yml, JSON for .json."""
    return parse_descriptor(load_data(text, filename), filename)


def load_data(text: str | bytes, filename: str, error: type[InvalidDescriptor] = InvalidDescriptor) -> Any:
    """A descriptor file's data: YAML (``safe_load``: data only, no tags) for .yaml/.yml, JSON for .json.
    Raises ``error`` naming the file and what is wrong with it."""
    is_json = filename.lower().endswith(".json")
    if not is_json and not filename.lower().endswith((".yaml", ".yml")):
        raise error([f"{filename}: expected a .yaml, .yml or .json file"])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise error([f"{filename}: not UTF-8 text: {e.reason} at byte {e.start}"]) from None
    try:
        return json.loads(text) if is_json else yaml.load(text, Loader=_NoAliases)  # noqa: S506 - safe, see below
    except RecursionError:
        raise error([f"{filename}: nested too deeply"]) from None
    except json.JSONDecodeError as e:
        raise error([f"{filename}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"]) from None
    except yaml.YAMLError as e:
        raise error([f"{filename}: not valid YAML: {_yaml_reason(e)}"]) from None


class _NoAliases(yaml.SafeLoader):
    """YAML's safe loader (data only, no tags) that also refuses aliases (``*name``): a descriptor
    needs none, and a few hundred bytes of nested aliases expand to gigabytes when printed."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _yaml_reason(error: yaml.YAMLError) -> str:
    """One line: the problem and where, not PyYAML's multi-line excerpt of the file."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def parse_descriptor(data: Any, source: str = "") -> AlgorithmDescriptor:
    """Check ``data`` (a loaded descriptor); raises ``InvalidDescriptor`` listing every problem.

    A key whose value is null counts as absent: YAML reads ``description:`` left empty as null.
    """
    if not isinstance(data, Mapping):
        raise InvalidDescriptor(["(top level): expected a mapping"], source)
    d = {key: value for key, value in data.items() if value is not None}
    errors = [f"{key}: unknown field; known: {', '.join(FIELDS)}" for key in d if key not in FIELDS]
    name = _matching(d, "name", NAME_PATTERN, errors)
    version = _version(d.get("version"), errors)
    description = d.get("description", "")
    if not isinstance(description, str):
        errors.append("description: expected a string")
    elif len(description) > MAX_DESCRIPTION:
        errors.append(f"description: at most {MAX_DESCRIPTION} characters, got {len(description)}")
    parameters = d.get("parameters", {})
    param_errors = _params.check_parameters(parameters)
    declared = parameters if isinstance(parameters, Mapping) else None
    runner = _runner(d, declared, errors)
    errors.extend(param_errors)
    required = _required(d.get("required", []), declared, errors)
    inputs = _inputs(d.get("inputs", {}), errors)
    resources = _resources(d.get("resources", {}), errors)
    queue = _matching(d, "queue", QUEUE_PATTERN, errors, default="gpu" if resources.gpu > 0 else "cpu")
    requirements = _strings(d.get("requirements", []), "requirements", errors)
    if errors:
        raise InvalidDescriptor(errors, source)
    return AlgorithmDescriptor(
        name=name, version=version, description=description, runner=runner, command=tuple(d.get("command", ())),
        image=d.get("image"), python=d.get("python"), function=d.get("function"),
        parameters={k: deepcopy(dict(v)) for k, v in parameters.items()}, required=required,
        inputs=inputs, resources=resources, queue=queue, requirements=requirements)


def _matching(d: Mapping[str, Any], key: str, pattern: str, errors: list[str], default: str | None = None) -> str:
    value = d.get(key, default)
    if value is None:
        errors.append(f"{key}: required")
    elif not isinstance(value, str) or not re.match(pattern, value):
        errors.append(f"{key}: must match {pattern}, got {value!r}")
    return value if isinstance(value, str) else ""


def _version(value: Any, errors: list[str]) -> str:
    if value is None:
        errors.append("version: required")
    elif is_number(value):
        errors.append(f'version: expected a string (quote it: "{value}")')
    elif not isinstance(value, str):
        errors.append("version: expected a string")
    elif not re.match(VERSION_PATTERN, value):
        errors.append(f"version: must match {VERSION_PATTERN}, got {value!r}")
    return value if isinstance(value, str) else ""


def _runner(d: Mapping[str, Any], declared: Mapping[str, Any] | None, errors: list[str]) -> str:
    """Check the runner fields; the runner's name (empty when the choice itself is wrong)."""
    given = [key for key in ("command", "python", "function") if key in d]
    if "command" in d:
        check_command(d["command"], declared, errors)
    if "image" in d and (not isinstance(d["image"], str) or not d["image"] or re.search(r"\s", d["image"])):
        errors.append("image: expected a container image reference without spaces, e.g. ghcr.io/org/tool:1.2")
    if "python" in d and (not isinstance(d["python"], str) or not re.match(PYTHON_PATTERN, d["python"])):
        errors.append(f'python: expected "package.module:function", got {d["python"]!r}')
    if "function" in d and not _plain_file_name(d["function"]):
        errors.append(f"function: expected a file name in the algorithm folder (no '/' or '..'), "
                      f"got {d['function']!r}")
    if len(given) > 1:
        found = ", ".join(given[:-1]) + f" and {given[-1]}"
        errors.append(f"{given[-1]}: give exactly one runner, found {found}")
    elif "image" in d and given != ["command"]:
        errors.append("image: needs command, the argv run inside the image")
    elif not given:
        errors.append("command: one runner is required: command, image (with command), python or function")
    else:
        return {"command": "image" if "image" in d else "command", "python": "python",
                "function": "python-function"}[given[0]]
    return ""


def _plain_file_name(value: Any) -> bool:
    return (isinstance(value, str) and bool(value.strip()) and ".." not in value
            and not any(c in value for c in "/\\\0"))


def _required(value: Any, declared: Mapping[str, Any] | None, errors: list[str]) -> tuple[str, ...]:
    """``declared``: the parameters, None when that section is itself broken (its names unknown)."""
    if not isinstance(value, list):
        errors.append("required: expected a list of parameter names")
        return ()
    for i, name in enumerate(value):
        if not isinstance(name, str) or (declared is not None and name not in declared):
            errors.append(f"required[{i}]: unknown parameter {name!r}")
        elif name in value[:i]:
            errors.append(f"required[{i}]: {name!r} is listed twice")
    return tuple(n for n in value if isinstance(n, str))


def _inputs(value: Any, errors: list[str]) -> InputSpec:
    if not isinstance(value, Mapping):
        errors.append("inputs: expected a mapping, e.g. {kinds: [video], max_bytes: 4294967296}")
        return InputSpec()
    errors.extend(f"inputs.{key}: unknown field; known: kinds, max_bytes" for key in value
                  if key not in ("kinds", "max_bytes"))
    kinds, max_bytes = value.get("kinds", ["any"]), value.get("max_bytes")
    known = ", ".join(sorted(INPUT_KINDS))
    if not isinstance(kinds, list) or not kinds:
        errors.append(f"inputs.kinds: expected a non-empty list of kinds from {known}, e.g. [video]")
        kinds = ["any"]
    for i, kind in enumerate(kinds):
        if not isinstance(kind, str) or kind not in INPUT_KINDS:
            errors.append(f"inputs.kinds[{i}]: unknown kind {kind!r}; known: {known}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        errors.append(f"inputs.max_bytes: expected a positive integer (bytes), got {max_bytes!r}")
        max_bytes = None
    return InputSpec(kinds=tuple(k for k in kinds if isinstance(k, str)), max_bytes=max_bytes)


# field -> (an integer: low <= v <= high; else a number: low < v <= high, what the message asks for)
_RESOURCE_LIMITS: dict[str, tuple[bool, float, float, str]] = {
    "gpu": (True, 0, MAX_GPU, f"an integer from 0 to {MAX_GPU}"),
    "cpu": (False, 0, math.inf, "a number greater than 0 (cores)"),
    "memory_gib": (False, 0, math.inf, "a number greater than 0 (GiB)"),
    "timeout_s": (False, 0, MAX_TIMEOUT_S, f"a number of seconds greater than 0, at most {MAX_TIMEOUT_S:.0f}"),
    "max_attempts": (True, 1, MAX_ATTEMPTS, f"an integer from 1 to {MAX_ATTEMPTS}"),
}


def _resources(value: Any, errors: list[str]) -> Resources:
    if not isinstance(value, Mapping):
        errors.append("resources: expected a mapping, e.g. {gpu: 1, memory_gib: 8}")
        return Resources()
    known = ", ".join(sorted(_RESOURCE_LIMITS))
    errors.extend(f"resources.{key}: unknown field; known: {known}" for key in value if key not in _RESOURCE_LIMITS)
    good: dict[str, Any] = {}
    for key, (integer, low, high, wanted) in _RESOURCE_LIMITS.items():
        if key not in value:
            continue
        v = value[key]
        if is_number(v) and (low <= v <= high if integer else low < v <= high) and (not integer or isinstance(v, int)):
            good[key] = v if integer else float(v)
        else:
            errors.append(f"resources.{key}: expected {wanted}, got {v!r}")
    return Resources(**good)


def _strings(value: Any, path: str, errors: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        errors.append(f"{path}: expected a list of strings")
        return ()
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            errors.append(f"{path}[{i}]: expected a non-empty string")
    return tuple(item for item in value if isinstance(item, str))
