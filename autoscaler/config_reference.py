"""The configuration reference, generated: ``python -m autoscaler.config_reference > docs/configuration.md``
(a test checks the committed file is current).

Every ``SCANTIDE_*`` setting (``service.config_reference``), then the autoscaler's TOML, table by
table, read from the models that validate it (``autoscaler.config.FileSpec``): each key's type from
their JSON schema, its default from the dataclass, its description from the attribute docstring
under the field. It lives here, above ``service``, because it reads both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import BaseModel

from autoscaler.config import EC2_FROM_POOL, Ec2Table, FileSpec
from autoscaler.providers.ec2_spec import Ec2PoolSpec
from service.config_reference import REQUIRED, attribute_docs, default_text, prose, schema_type, settings_section, table

HEADER = """# Configuration

Generated from the settings and configuration models by `python -m autoscaler.config_reference >
docs/configuration.md`; do not edit by hand.
"""

AUTOSCALER = """## Autoscaler pools

`SCANTIDE_AUTOSCALER_CONFIG` names a TOML file of pools; unset, the autoscaler runs one local pool of
up to `SCANTIDE_WORKERS` worker processes. The file is checked whole when it loads, before the first
tick: types are strict (`boot_timeout_s = "600"` is refused, not read as 600; an integer is a
number), numbers are finite, unknown keys are refused with the known ones listed, and each problem
names its field path and line, e.g. `autoscaler.toml:7: pools[0].boot_timeout_s: Input should be a
valid number`. [Autoscaler](autoscaler.md) has a complete example.
"""
EC2_HEADER = "[pools.ec2]"


def render() -> str:
    return "\n".join([HEADER, settings_section(), AUTOSCALER, *_tables()]).rstrip() + "\n"


def _tables() -> list[str]:
    """One section per TOML table, depth first from the top level, ``[pools.ec2]`` last."""
    schema = FileSpec.model_json_schema()
    headers: dict[str, str] = {}  # model name in the schema → its TOML table header
    order: list[tuple[str, type, dict[str, Any]]] = [("Top level", FileSpec, schema)]
    for header, cls, node in order:  # grows as tables are found
        hints = get_type_hints(cls)
        for key, prop in node["properties"].items():
            ref, many = _table_ref(prop)
            if ref and ref not in headers and "properties" in schema["$defs"][ref]:  # a table, not an enum
                prefix = "" if cls is FileSpec else _path(header) + "."
                headers[ref] = f"[[{prefix}{key}]]" if many else f"[{prefix}{key}]"
                order.append((headers[ref], _inner(hints[key]), schema["$defs"][ref]))
    sections = []
    for header, cls, node in order:
        rows = _rows(cls, node, schema, lambda name: headers.get(name), {"ec2": f"table `{EC2_HEADER}`"})
        sections.append(f"### {_title(header)}\n\n" + table(("key", "type", "default", "description"), rows))
    ec2 = Ec2Table.model_json_schema()
    spec = ec2["$defs"]["Ec2PoolSpec"]
    spec = {**spec, "properties": {k: v for k, v in spec["properties"].items() if k not in EC2_FROM_POOL}}
    rows = _rows(Ec2PoolSpec, spec, ec2, lambda _: None)
    rows.append(("`endpoint_url`", schema_type(ec2["properties"]["endpoint_url"], ec2), "unset",
                 prose(attribute_docs(Ec2Table)["endpoint_url"])))
    sections.append(f"### `{EC2_HEADER}` (provider \"ec2\")\n\nThe queue and the slot count come from the pool "
                    "(`queue`, `resources.slots`).\n\n" + table(("key", "type", "default", "description"), rows))
    return sections


def _rows(cls: type, node: dict[str, Any], root: dict[str, Any], table_name: Callable[[str], str | None],
          types: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """A table's keys: ``types`` overrides the type shown for some."""
    docs, defaults, types = attribute_docs(cls), _defaults(cls), types or {}
    return [(f"`{key}`", types.get(key) or schema_type(prop, root, table_name), _default(defaults[key]),
             prose(docs.get(key, ""))) for key, prop in node["properties"].items()]


def _defaults(cls: type) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: REQUIRED if f.is_required() else f.get_default(call_default_factory=True)
                for name, f in cls.model_fields.items()}
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else
                     REQUIRED if f.default is dataclasses.MISSING else f.default) for f in dataclasses.fields(cls)}


def _default(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "the table's defaults"
    return default_text(value)


def _table_ref(prop: dict[str, Any]) -> tuple[str | None, bool]:
    """The model a key's value is a table (False) or an array of tables (True) of, if it is."""
    items = prop.get("items", {}) if prop.get("type") == "array" else None
    ref = (items or prop).get("$ref") or next((s["$ref"] for s in prop.get("anyOf", []) if "$ref" in s), None)
    return (ref.rsplit("/", 1)[-1], items is not None) if ref else (None, False)


def _inner(hint: Any) -> type:
    """The class of a field typed ``X``, ``X | None`` or ``tuple[X, ...]``."""
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else hint


def _path(header: str) -> str:
    return header.strip("[]")


def _title(header: str) -> str:
    return header if header == "Top level" else f"`{header}`"


if __name__ == "__main__":
    print(render(), end="")
