"""The API reference in Markdown, generated from the app's OpenAPI description:
``python -m service.api.reference > docs/api-reference.md`` (a test checks the committed file is current).

Operations by tag, each with its scope, body, answers and error codes; then the webhook events; then
every schema with its fields. The output depends on the code alone (the app is built over a
throwaway state dir), so it is the same on every machine.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

HEADER = """# API reference

Generated from `/openapi.json` by `python -m service.api.reference > docs/api-reference.md`; do not
edit by hand. The live description is at `/openapi.json` (OpenAPI 3.1) and `/docs` (Swagger UI).
"""
METHODS = ("get", "post", "put", "patch", "delete")


def openapi() -> dict[str, Any]:
    """The description of an app built over a throwaway state dir."""
    from service.api.app import create_app
    from service.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="scantide-reference-") as tmp:
        app = create_app(load_settings(state_dir=tmp, api_tokens={"reference-token": ["read"]}))
        return app.openapi()


def render(spec: dict[str, Any]) -> str:
    out = [HEADER, _auth(spec)]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in spec["paths"].items():
        for method in METHODS:
            if method in operations:
                op = operations[method]
                by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method, path, op))
    out.append("## Operations\n")
    for tag, ops in by_tag.items():
        out.append(f"### {tag}\n")
        out.extend(_operation(method, path, op) for method, path, op in ops)
    webhooks = spec.get("webhooks", {})
    about = next(iter(webhooks.values()), {}).get("post", {}).get("description", "")
    out.append(f"## Webhooks\n\nEvents `scantide monitor` sends ([webhooks.md](webhooks.md) shows how to verify "
               f"them). {about}\n")
    for name, operations in webhooks.items():
        op = operations["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        headers = ", ".join(f"`{p['name']}`" for p in op.get("parameters", []) if p["in"] == "header")
        out.append(f"#### `{name}`\n\n{op.get('summary', '')} Body: {_type(body)}; headers {headers}.\n")
    out.append("## Schemas\n")
    for name, schema in spec["components"]["schemas"].items():
        out.append(_schema(name, schema))
    return "\n".join(out).rstrip() + "\n"


def _auth(spec: dict[str, Any]) -> str:
    lines = ["## Authentication\n"]
    for name, scheme in spec["components"].get("securitySchemes", {}).items():
        lines.append(f"`{name}`: HTTP `{scheme.get('scheme', '')}`. {scheme.get('description', '')}\n")
    return "\n".join(lines)


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    lines = [f"#### `{method.upper()} {path}`\n", op.get("summary", "")]
    if op.get("description"):
        lines.append(f"\n{op['description']}")
    scopes = [s for requirement in op.get("security", []) for s in next(iter(requirement.values()), [])]
    lines.append(f"\nScope: {', '.join(f'`{s}`' for s in scopes) if scopes else 'none (no token)'}.")
    body = op.get("requestBody", {}).get("content", {})
    if body:
        kinds = "; ".join(f"`{kind}` {_type(media.get('schema', {}))}" for kind, media in body.items())
        lines.append(f"\nBody: {kinds}.")
        inline = next((m["schema"] for m in body.values() if "properties" in m.get("schema", {})), None)
        if inline is not None:
            lines.append("\n" + _fields(inline))
    lines.append("\n| status | body |\n|---|---|")
    failures = []
    for status, response in op["responses"].items():
        content = response.get("content", {})
        schema = next(iter(content.values()), {}).get("schema", {})
        codes = _codes(schema)
        if codes:
            failures.append(f"**{status}** " + ", ".join(f"`{c}`" for c in codes))
            continue
        shown = _type(schema) if schema else "—"
        if content and next(iter(content)) != "application/json":
            shown = f"`{next(iter(content))}` {shown}"
        lines.append(f"| {status} | {shown}: {_cell(response['description'])} |")
    if failures:
        lines.append("\nErrors, each `{\"error\": {\"code\", \"message\"}}` with one of these codes: "
                     + "; ".join(failures) + ".")
    return "\n".join(lines) + "\n"


def _codes(schema: dict[str, Any]) -> list[str]:
    return schema.get("properties", {}).get("error", {}).get("properties", {}).get("code", {}).get("enum", [])


def _schema(name: str, schema: dict[str, Any]) -> str:
    lines = [f"### {name}\n"]
    if schema.get("description"):
        lines.append(schema["description"].strip() + "\n")
    if "enum" in schema:
        lines.append("One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".\n")
        return "\n".join(lines)
    lines.append(_fields(schema))
    if "examples" in schema:
        lines.append(f"\nExample: `{json.dumps(schema['examples'][0], separators=(',', ':'))}`")
    return "\n".join(lines) + "\n"


def _fields(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    lines = ["| field | type | description |", "|---|---|---|"]
    for field, prop in schema.get("properties", {}).items():
        mark = "" if field in required else " (optional)"
        lines.append(f"| `{field}`{mark} | {_type(prop)} | {_cell(prop.get('description', ''))} |")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        lines.append(f"| *other names* | {_type(extra)} | |")
    return "\n".join(lines)


def _type(schema: dict[str, Any]) -> str:
    """A schema as a short type expression, with links to named schemas."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " \\| ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type(schema.get('items', {}))}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict) and not schema.get("properties"):
        return f"map[string, {_type(schema['additionalProperties'])}]"
    return f"`{kind}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def main() -> None:
    print(render(openapi()), end="")


if __name__ == "__main__":
    main()
