"""Algorithm parameters: the descriptor's schema subset, its JSON Schema, and task params checked against it.

A descriptor declares each parameter with a small JSON-Schema subset (``type``, ``default``, ``enum``,
``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``description``). The subset is checked here
by hand, so a mistake gets a message naming its field path; the checked schemas are then plain JSON
Schema, and task params are validated with ``jsonschema``'s Draft 2020-12 validator, so what the
API documents (``params_schema``) is exactly what it enforces.

Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from copy import deepcopy
from typing import Any

from service.errors import InvalidParams

PARAM_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,63}$"
PARAM_TYPES = ("boolean", "integer", "number", "string")
PARAM_KEYWORDS = ("default", "description", "enum", "maxLength", "maximum", "minLength", "minimum", "type")
# Keys scantide itself puts into a task's params; an algorithm parameter of that name would be overwritten.
RESERVED_PARAMS = frozenset({
    "scan_id", "scan_uri", "output_uri", "model_version", "model_uri", "metadata", "previous_scan_id",
    "previous_output_uri", "previous_summary", "model_path", "algorithm", "algorithm_version", "bundle_uri",
    "bundle_sha256", "task_id", "pipeline_run", "pipeline_step", "step_inputs",
})

_TYPES_TEXT = ", ".join(PARAM_TYPES)


def is_number(value: Any) -> bool:
    """A finite int or float; ``bool`` is not a number here, though Python says it is an int."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _schema_errors(schema: Mapping[str, Any], value: Any) -> Iterator[str]:
    """jsonschema's messages for ``value`` against one parameter's schema."""
    from jsonschema import Draft202012Validator  # here: every worker task imports the catalog, few validate

    for error in Draft202012Validator(dict(schema)).iter_errors(value):
        yield error.message


def check_parameters(parameters: Any) -> list[str]:
    """Every problem of a descriptor's ``parameters`` section, each as ``"parameters.…: message"``."""
    if not isinstance(parameters, Mapping):
        return ["parameters: expected a mapping of parameter name to its schema, e.g. "
                "{threshold: {type: number, default: 0.5}}"]
    errors: list[str] = []
    for name, schema in parameters.items():
        path = f"parameters.{name}"
        if not isinstance(name, str) or not re.match(PARAM_NAME_PATTERN, name):
            errors.append(f"{path}: name must match {PARAM_NAME_PATTERN}")
        elif name in RESERVED_PARAMS:
            errors.append(f"{path}: reserved name, set by scantide")
        errors.extend(check_param_schema(path, schema))
    return errors


def check_param_schema(path: str, schema: Any) -> list[str]:
    """Every problem of one parameter's schema; ``path`` prefixes each (``parameters.threshold``).

    ``enum`` and ``default`` are checked against the rest of the schema only once that rest is
    sound: against a broken schema their messages would mislead.
    """
    if not isinstance(schema, Mapping):
        return [f"{path}: expected a mapping, e.g. {{type: number, default: 1}}"]
    errors = [f"{path}.{key}: unknown keyword; allowed: {', '.join(PARAM_KEYWORDS)}{_comma_hint(key, schema[key])}"
              for key in schema if key not in PARAM_KEYWORDS]
    kind = schema.get("type")
    if kind is None:
        errors.append(f"{path}.type: required, one of {_TYPES_TEXT}")
    elif not isinstance(kind, str) or kind not in PARAM_TYPES:
        errors.append(f"{path}.type: expected one of {_TYPES_TEXT}, got {kind!r}")
        kind = None
    errors.extend(_bound_errors(path, schema, kind))
    if "description" in schema and not isinstance(schema["description"], str):
        errors.append(f"{path}.description: expected a string")
    if errors:
        return errors
    plain = {k: v for k, v in schema.items() if k not in ("enum", "default", "description")}
    if "enum" in schema:
        enum = schema["enum"]
        if not isinstance(enum, list) or not enum:
            return [f"{path}.enum: expected a non-empty list of {kind} values"]
        errors.extend(f"{path}.enum[{i}]: {msg}" for i, item in enumerate(enum) for msg in _schema_errors(plain, item))
        if errors:
            return errors
    if "default" in schema:
        checked = {k: v for k, v in schema.items() if k not in ("default", "description")}
        errors.extend(f"{path}.default: {msg}" for msg in _schema_errors(checked, schema["default"]))
    return errors


def _comma_hint(key: Any, value: Any) -> str:
    """YAML ends an unquoted value inside ``{…}`` at a comma, so ``description: a, b`` leaves a
    keyword ``b`` with no value: say so, as the author will not see it in the file."""
    if value is None and isinstance(key, str) and " " in key.strip():
        return " (a comma ends an unquoted value inside {...}: quote the text before it)"
    return ""


def _bound_errors(path: str, schema: Mapping[str, Any], kind: str | None) -> list[str]:
    """Problems of minimum/maximum (numbers, on number and integer parameters) and
    minLength/maxLength (non-negative integers, on string parameters). ``kind`` None: type unknown."""
    errors: list[str] = []
    for key in ("minimum", "maximum"):
        if key not in schema:
            continue
        if not is_number(schema[key]):
            errors.append(f"{path}.{key}: expected a number")
        elif kind is not None and kind not in ("number", "integer"):
            errors.append(f"{path}.{key}: only for number or integer parameters, this one is {kind}")
    for key in ("minLength", "maxLength"):
        if key not in schema:
            continue
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(f"{path}.{key}: expected a non-negative integer")
        elif kind is not None and kind != "string":
            errors.append(f"{path}.{key}: only for string parameters, this one is {kind}")
    for low, high in (("minimum", "maximum"), ("minLength", "maxLength")):
        lo, hi = schema.get(low), schema.get(high)
        if is_number(lo) and is_number(hi) and lo > hi:
            errors.append(f"{path}.{low}: {lo} is greater than {high} {hi}")
    return errors


def params_schema(parameters: Mapping[str, Mapping[str, Any]], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON Schema (an object) of a task's params; a copy, safe to change."""
    return {
        "type": "object",
        "properties": {name: deepcopy(dict(schema)) for name, schema in parameters.items()},
        "required": list(required),
        "additionalProperties": False,
    }


def validate_params(parameters: Mapping[str, Mapping[str, Any]], required: tuple[str, ...],
                    params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` with the declared defaults filled in; raises ``InvalidParams`` naming every problem.

    ``parameters`` are schemas already checked by ``check_parameters``. Draft 2020-12 counts 8.0 as
    an integer; an integer parameter given 8.0 is returned as ``8`` so the algorithm sees an int.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidParams("params: expected an object")
    problems: list[tuple[str, str]] = []
    for key in params:
        if key not in parameters:
            known = (f"known: {', '.join(sorted(parameters))}" if parameters
                     else "this algorithm takes no parameters")
            problems.append((f"params.{key}", f"unknown parameter; {known}"))
    for name in required:
        if name not in params:
            problems.append((f"params.{name}", "required"))
    for name, value in params.items():
        if name in parameters:
            problems.extend((f"params.{name}", msg) for msg in _schema_errors(parameters[name], value))
    if problems:
        raise InvalidParams("; ".join(f"{path}: {msg}" for path, msg in sorted(problems)))
    defaults = {name: deepcopy(schema["default"]) for name, schema in parameters.items() if "default" in schema}
    result = {**defaults, **params}
    for name, value in result.items():
        if parameters[name].get("type") == "integer" and isinstance(value, float):
            result[name] = int(value)  # a whole float: jsonschema has already refused any other
    return result
