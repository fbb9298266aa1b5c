"""``--json`` for every command that reads state: one option, one printer.

The printer checks the value against the pydantic model docs/cli.md names for the command (where
one exists, the model the HTTP API answers with, so the CLI and the API print the same shape) and
writes it alone on stdout, indented, keys sorted; logs and messages go to stderr. A value that no
longer fits its model fails loudly, as the API's answers do.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from pydantic import TypeAdapter

JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of tables (its shape: docs/cli.md).")


def print_json(shape: Any, value: Any) -> None:
    """Validate ``value`` as ``shape`` (a pydantic model or a type such as ``list[Model]``) and print it."""
    adapter = TypeAdapter(shape)
    data = adapter.dump_python(adapter.validate_python(value), mode="json")
    typer.echo(json.dumps(data, indent=2, sort_keys=True))
