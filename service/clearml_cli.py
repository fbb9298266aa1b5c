"""``scantide clearml …``: set up the ClearML side of production mode (``SCANTIDE_BACKEND=clearml``) and
list the templates; with ``--json`` both print ``Template``s (name, entry_point, queue, params, max_runtime_s)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.backends import open_backend
from service.cli_json import JSON, print_json
from service.domain import Template
from service.errors import ConfigError, InvalidRequest
from service.settings import Settings

console = Console()
clearml_app = typer.Typer(help="ClearML production mode: templates and queues.", no_args_is_help=True)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value that parses as JSON is taken as JSON (``8``, ``true``), else as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(text)
        except ValueError:
            params[key.strip()] = text
    return params


@clearml_app.command("register-template")
def register_template(
    ctx: typer.Context,
    algorithm: str | None = typer.Option(None, help="Algorithm (default SCANTIDE_DEFAULT_ALGORITHM)."),
    queue: str | None = typer.Option(None, help="Queue its tasks go to (default SCANTIDE_DEFAULT_QUEUE)."),
    max_runtime: float | None = typer.Option(
        None, "--max-runtime", help="Longest run of one task, seconds (default SCANTIDE_TASK_TIMEOUT_S)."),
    param: Annotated[list[str] | None, typer.Option(
        "--param", metavar="KEY=VALUE",
        help="Algorithm parameter KEY=VALUE (JSON values); repeatable. Replaces the default of that name.")] = None,
    image: str | None = typer.Option(None, help="Container image an agent in docker mode runs the task in "
                                                   "(the worker image); unset: keep the template's."),
    repository: str | None = typer.Option(None, help="Git repository an agent checks out before running the "
                                                        "task; unset: keep the template's (none: run the installed "
                                                        "package)."),
    commit: str | None = typer.Option(None, help="Commit of --repository to check out."),
    as_json: bool = JSON,
) -> None:
    """Create or update the algorithm's template task and its queue in ClearML.

    Scans are cloned from the template; a stock clearml-agent runs each clone as
    `python -m algorithms.entry`. An update replaces the parameters, the queue and the run time
    limit, and keeps every script and container field not given here.
    """
    settings: Settings = ctx.obj
    if settings.backend != "clearml":
        raise ConfigError(f"templates are registered in ClearML, but the backend is {settings.backend!r}: "
                          "set SCANTIDE_BACKEND=clearml (and CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, "
                          "CLEARML_API_SECRET_KEY)")
    name = algorithm or settings.default_algorithm
    template = Template(name=name, queue=queue or settings.default_queue, params=parse_params(param or []),
                        max_runtime_s=max_runtime if max_runtime is not None else settings.task_timeout_s)
    backend = open_backend(settings)
    try:
        backend.register_template(template, image=image, repository=repository, commit=commit)  # type: ignore[call-arg]
        registered = backend.get_template(name)
    finally:
        backend.close()
    if as_json:
        print_json(Template, registered)
        return
    console.print(f"template [bold]{registered.name}[/bold] registered in ClearML project "
                  f"{settings.clearml_project!r}: queue {registered.queue!r}, entry point "
                  f"python -m {registered.entry_point}, params {json.dumps(registered.params, sort_keys=True)}, "
                  f"max runtime {registered.max_runtime_s:.0f} s")


@clearml_app.command("templates")
def templates_cmd(ctx: typer.Context, as_json: bool = JSON) -> None:
    """The registered templates: each algorithm's queue, entry point, parameters and run time limit."""
    backend = open_backend(ctx.obj)
    try:
        templates = backend.templates()
    finally:
        backend.close()
    if as_json:
        print_json(list[Template], templates)
        return
    table = Table(title="templates")
    for col in ("algorithm", "queue", "entry point", "max runtime", "params"):
        table.add_column(col)
    for t in templates:
        table.add_row(t.name, t.queue, t.entry_point, f"{t.max_runtime_s:.0f} s", json.dumps(t.params, sort_keys=True))
    console.print(table)
