"""The settings reference in Markdown, generated from ``Settings``: each ``SCANTIDE_*`` variable with
its type (from the model's JSON schema), default and description (its ``Field(description=...)``).

``autoscaler.config_reference`` adds the autoscaler's TOML and prints the page:
``python -m autoscaler.config_reference > docs/configuration.md`` (a test checks the committed file
is current). The helpers here read any model's schema the same way, for both.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import PurePath
from typing import Any

from service.settings import CONFIG_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX, SECRET_FIELDS, Settings

REQUIRED = "required"
BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))

INTRO = f"""## Settings

One settings object (`service.settings.Settings`), read at start-up from, highest first: keyword
options, `{ENV_PREFIX}*` environment variables, `{DEFAULT_CONFIG_FILE}` in the working directory (or the
file named by `{CONFIG_ENV}`; its keys are the names below in lower case without the prefix, e.g.
`api_port = 8700`), the defaults. In the environment, arrays and objects are JSON
(`SCANTIDE_ALGORITHM_QUEUES='{{"gpu": "gpu-scans"}}'`) and booleans `true` or `false`. A value of the
wrong type, or out of its range, stops the process at start with the variable's name.

A *secret* ({", ".join(f"`{ENV_PREFIX}{name.upper()}`" for name in sorted(SECRET_FIELDS))}) is never
printed or logged: a repr, a log line or an error shows `**********`. The processes `scantide up`
starts get it through their environment; a task's process does not. ClearML and AWS credentials are
not settings: they come from their own chains (`CLEARML_API_HOST`, `CLEARML_API_ACCESS_KEY`,
`CLEARML_API_SECRET_KEY` or `clearml.conf`; boto3's environment, profile or instance role).
"""


def settings_section() -> str:
    schema = Settings.model_json_schema()
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True) if not info.is_required() else REQUIRED
        rows.append((f"`{ENV_PREFIX}{name.upper()}`", schema_type(schema["properties"][name], schema),
                     default_text(default), prose(info.description or "")))
    return INTRO + "\n" + table(("variable", "type", "default", "description"), rows)


def schema_type(schema: dict[str, Any], root: dict[str, Any],
                table_name: Callable[[str], str | None] = lambda _: None) -> str:
    """A JSON schema's type in a few words: ``integer ≥ 1``, ``"spot" | "on_demand"``, ``[string]``,
    ``{secret: [string]}``; a model that ``table_name`` names (a TOML table header) is that table."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        header = table_name(name)
        return f"table `{header}`" if header else schema_type(root["$defs"][name], root, table_name)
    if "anyOf" in schema:
        kinds = [schema_type(s, root, table_name) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(dict.fromkeys(kinds))
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    if schema.get("format") == "password":
        kind = "secret"
    elif schema.get("format") == "path":
        kind = "path"
    elif kind == "array":
        items = schema.get("items", {})
        if "$ref" in items and (header := table_name(items["$ref"].rsplit("/", 1)[-1])):
            return f"tables `{header}`"
        kind = f"[{schema_type(items, root, table_name)}]" if items else "array"
    elif kind == "object":
        keys = "secret" if schema.get("propertyNames", {}).get("format") == "password" else "string"
        values = schema.get("additionalProperties")
        kind = f"{{{keys}: {schema_type(values, root, table_name)}}}" if isinstance(values, dict) and values else (
            f"{{{keys}: any}}")
    if "minimum" in schema and "maximum" in schema:
        bounds = [f"from {_number(schema['minimum'])} to {_number(schema['maximum'])}"]
    else:
        bounds = [f"{sign} {_number(schema[key])}" for key, sign in BOUNDS if key in schema]
    if "pattern" in schema:
        bounds.append(f"matching `{schema['pattern']}`")
    return " ".join([kind, *bounds])


def default_text(value: Any) -> str:
    """A default as one writes it: ``unset`` for None, else its JSON (a path as written)."""
    if value is None:
        return "unset"
    if value == REQUIRED:
        return REQUIRED
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, PurePath):
        return f"`{value}`"
    if isinstance(value, float):
        return f"`{_number(value)}`"
    if isinstance(value, (bool, dict, list, tuple)) or value == "":
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a class and its bases (the string under a field, as Sphinx reads
    them): field name → its docstring, on one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not cls and not dataclasses.is_dataclass(klass):  # object, BaseModel
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        statements = getattr(body, "body", [])
        for field, doc in zip(statements, statements[1:], strict=False):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
                docs[field.target.id] = " ".join(inspect.cleandoc(doc.value.value).split())
    return docs


def table(head: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def prose(text: str) -> str:
    """A description as Markdown: a docstring's double backticks single, ``<`` escaped outside code
    spans (``<state_dir>`` is no HTML tag)."""
    parts = text.replace("``", "`").split("`")
    return "`".join(part if i % 2 else part.replace("<", "\\<") for i, part in enumerate(parts))


def _number(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text
