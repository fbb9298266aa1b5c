"""``scantide pipelines …`` (validate, register, list, show) and ``scantide runs …`` (list, show, retry),
all with ``--json``. They work on this deployment's pipeline store and registries directly; their
JSON is the API's ``PipelineVersion`` and ``Run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.cli_json import JSON, print_json
from service.errors import InvalidDescriptor, PipelineNotFound, RunNotFound, ScantideError
from service.exit_codes import ExitCode

console = Console()
pipelines_app = typer.Typer(help="Pipelines: validate a descriptor, register it, list and show versions.",
                            no_args_is_help=True)
runs_app = typer.Typer(help="Pipeline runs: list, show, retry.", no_args_is_help=True)


def _store(ctx: typer.Context):  # noqa: ANN202
    from service.pipelines.store import PipelineStore

    return PipelineStore(ctx.obj.pipelines_db)


def _targets(ctx: typer.Context):  # noqa: ANN202
    from service.pipelines.targets import targets_for

    return targets_for(ctx.obj)


def _print_runs(runs: list[Any], one: bool) -> None:
    """Runs as the API's ``Run`` (with its links): one object, or a list."""
    from service.api.pipelines import run_links
    from service.api.schemas import Run as Shape

    bodies = [{**r.to_dict(), "links": run_links(r)} for r in runs]
    if one:
        print_json(Shape, bodies[0])
    else:
        print_json(list[Shape], bodies)


def _read(path: Path):  # noqa: ANN202 - PipelineDescriptor
    from service.catalog.pipeline import PIPELINE_NAMES, load_pipeline

    if path.is_dir():
        found = [path / n for n in PIPELINE_NAMES if (path / n).is_file()]
        if not found:
            raise InvalidDescriptor([f"{path}: no {' or '.join(PIPELINE_NAMES)} in this folder"])
        path = found[0]
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidDescriptor([f"{path}: cannot read: {exc.strerror}"]) from None
    return load_pipeline(text, path.name)


@pipelines_app.command("validate")
def validate_cmd(ctx: typer.Context, path: Path = typer.Argument(..., help="The descriptor, or its folder."),
                 as_json: bool = JSON) -> None:
    """Check a descriptor against this deployment's algorithms; exit 0 when it would register, 1 otherwise."""
    from service.pipelines.runs import check_pipeline

    try:
        pipeline = _read(path)
        check_pipeline(pipeline, _targets(ctx))
    except ScantideError as exc:
        errors = exc.errors if isinstance(exc, InvalidDescriptor) else [exc.message]
        if as_json:
            print_json(dict[str, Any], {"valid": False, "code": exc.code, "errors": errors})
        else:
            console.print(f"[red]{escape(str(path))} is not a valid pipeline ({exc.code}):[/red]")
            for error in errors:
                console.print(f"  {escape(error)}")
        raise typer.Exit(ExitCode.FAILED) from None
    if as_json:
        print_json(dict[str, Any], {"valid": True, "descriptor": pipeline.to_dict()})
    else:
        console.print(f"valid: {pipeline.name} {pipeline.version} ({len(pipeline.steps)} steps: "
                      f"{', '.join(s.name for s in pipeline.steps)})")


@pipelines_app.command("register")
def register_cmd(ctx: typer.Context, path: Path = typer.Argument(..., help="The descriptor, or its folder."),
                 by: str | None = typer.Option(None, "--by", help="Who registers it (default: the OS user)."),
                 as_json: bool = JSON) -> None:
    """Record the pipeline's version (immutable; the same content again changes nothing)."""
    from service.algorithms_cli import _user
    from service.pipelines.runs import register

    version, created = register(_store(ctx), _targets(ctx), _read(path), by or _user())
    if as_json:
        from service.api.schemas import RegisteredPipeline

        print_json(RegisteredPipeline, {**version.to_dict(), "created": created})
        return
    what = "registered" if created else "already registered (same content)"
    console.print(f"{what}: pipeline {version.name} {version.version} sha256 {version.sha256[:12]}")


@pipelines_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Every registered pipeline version."""
    versions = _store(ctx).listing()
    if as_json:
        from service.api.schemas import PipelineVersion as Shape

        print_json(list[Shape], [v.to_dict() for v in versions])
        return
    table = Table(title="pipelines")
    for col in ("name", "version", "steps", "sha256", "registered", "by"):
        table.add_column(col)
    for v in versions:
        d = v.to_dict()
        table.add_row(v.name, v.version, " → ".join(s["name"] for s in v.descriptor["steps"]), v.sha256[:12],
                      d["registered_at"], v.registered_by)
    console.print(table)


@pipelines_app.command("show")
def show_cmd(ctx: typer.Context, name: str = typer.Argument(...),
             version: str | None = typer.Option(None, "--version", "-v", help="A version (default: the newest)."),
             as_json: bool = JSON) -> None:
    """One version with its descriptor."""
    store = _store(ctx)
    found = store.get(name, version) if version else store.latest(name)
    if found is None:
        raise PipelineNotFound(f"no pipeline {name!r}{f' version {version!r}' if version else ''} is registered")
    if as_json:
        from service.api.schemas import PipelineVersion as Shape

        print_json(Shape, found.to_dict())
        return
    console.print(f"[bold]{found.name}[/bold] {found.version} sha256 {found.sha256}")
    console.print_json(json.dumps(found.descriptor))


@runs_app.command("list")
def runs_list_cmd(ctx: typer.Context, state: str | None = typer.Option(None, help="queued, running, completed or "
                                                                                 "failed."),
                  limit: int = typer.Option(30, help="Newest first, at most this many."), as_json: bool = JSON) -> None:
    """Pipeline runs, newest first."""
    runs = _store(ctx).list_runs(state, limit)
    if as_json:
        _print_runs(runs, one=False)
        return
    table = Table(title="runs")
    for col in ("run", "pipeline", "scan", "state", "steps", "created"):
        table.add_column(col)
    for r in runs:
        d = r.to_dict()
        steps = " ".join(f"{n}:{s.state}" for n, s in r.steps.items())
        table.add_row(r.run_id, f"{r.pipeline} {r.version}", r.scan_id, r.state, steps, d["created_at"])
    console.print(table)


@runs_app.command("show")
def runs_show_cmd(ctx: typer.Context, run_id: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """One run with each step's state, task, compute, result and error."""
    run = _store(ctx).get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r}")
    if as_json:
        _print_runs([run], one=True)
        return
    console.print(f"[bold]{run.run_id}[/bold] {run.pipeline} {run.version} scan {run.scan_id}: {run.state}"
                  + (f" ({run.error.get('step')}: {run.error.get('code')})" if run.error else ""))
    table = Table()
    for col in ("step", "state", "compute", "task", "attempt", "moved", "error"):
        table.add_column(col)
    for name, s in run.steps.items():
        table.add_row(name, s.state, s.compute, s.task_id or "", str(s.attempt), str(s.bytes_moved),
                      escape(f"{s.error['code']}: {s.error.get('message', '')}"[:80]) if s.error else "")
    console.print(table)


@runs_app.command("retry")
def runs_retry_cmd(ctx: typer.Context, run_id: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """Run a failed run's failed and skipped steps again, keeping the completed ones."""
    from service.pipelines.runs import retry_run

    run = retry_run(_store(ctx), run_id)
    if as_json:
        _print_runs([run], one=True)
    else:
        console.print(f"run {run.run_id} retried (retry {run.retries})")
