"""``scantide algorithms …``: validate, register, list and show algorithm versions (all with ``--json``).

``validate`` reads the folder only (exit 0 valid, 1 not, each problem on its own line with its
field path); ``register`` stores the folder's bundle and records the version in the settings'
task store; ``list`` and ``show`` read the registry. Their JSON is the API's ``AlgorithmVersion``.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.algorithms import AlgorithmVersion, check_runner, register_folder
from service.bundles import descriptor_of, folder_files
from service.cli_json import JSON, print_json
from service.errors import AlgorithmNotFound, InvalidDescriptor, ScantideError
from service.exit_codes import ExitCode

console = Console()
algorithms_app = typer.Typer(help="Algorithms: validate a folder, register it, list and show versions.",
                             no_args_is_help=True)


def _backend(ctx: typer.Context):  # noqa: ANN202 - TaskBackend, imported lazily
    from service.backends import open_backend

    return open_backend(ctx.obj)


@algorithms_app.command("validate")
def validate_cmd(ctx: typer.Context, path: Path = typer.Argument(..., help="The algorithm's folder."),
                 as_json: bool = JSON) -> None:
    """Check a folder's descriptor and files; exit 0 when it would register, 1 otherwise."""
    try:
        descriptor = descriptor_of(folder_files(path, ctx.obj.max_bundle_bytes))
        check_runner(descriptor, ctx.obj)
    except ScantideError as exc:
        errors = exc.errors if isinstance(exc, InvalidDescriptor) else [exc.message]
        if as_json:
            print_json(dict[str, Any], {"valid": False, "code": exc.code, "errors": errors})
        else:
            console.print(f"[red]{escape(str(path))} is not a valid algorithm ({exc.code}):[/red]")
            for error in errors:
                console.print(f"  {escape(error)}")
        raise typer.Exit(ExitCode.FAILED) from None
    if as_json:
        print_json(dict[str, Any], {"valid": True, "descriptor": descriptor.to_dict()})
    else:
        console.print(f"valid: {descriptor.name} {descriptor.version} ({descriptor.runner}, queue {descriptor.queue}, "
                      f"{len(descriptor.parameters)} parameters)")


@algorithms_app.command("register")
def register_cmd(ctx: typer.Context, path: Path = typer.Argument(..., help="The algorithm's folder."),
                 by: str | None = typer.Option(None, "--by", help="Who registers it (default: the OS user)."),
                 as_json: bool = JSON) -> None:
    """Store the folder and record its version (immutable). Registering the same content again
    changes nothing; other content under a registered version is refused."""
    version, created = register_folder(_backend(ctx), ctx.obj, path, by=by or _user())
    if as_json:
        from service.api.schemas import RegisteredAlgorithm

        print_json(RegisteredAlgorithm, {**version.to_dict(), "created": created})
        return
    what = "registered" if created else "already registered (same content)"
    console.print(f"{what}: {version.name} {version.version} sha256 {version.sha256[:12]} queue {version.queue!r} "
                  f"bundle {version.uri}")


@algorithms_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Every registered version, the newest of each algorithm first among its own."""
    versions = _backend(ctx).list_algorithms()
    if as_json:
        from service.api.schemas import AlgorithmVersion as Shape

        print_json(list[Shape], [v.to_dict() for v in versions])
        return
    table = Table(title="algorithms")
    for col in ("name", "version", "runner", "queue", "sha256", "registered", "by", "description"):
        table.add_column(col)
    for v in versions:
        s = v.summary()
        table.add_row(v.name, v.version, s["runner"], v.queue, v.sha256[:12], s["registered_at"], v.registered_by,
                      (s["description"] or "")[:60])
    console.print(table)


@algorithms_app.command("show")
def show_cmd(ctx: typer.Context, name: str = typer.Argument(...),
             version: str | None = typer.Option(None, "--version", "-v", help="A version (default: the newest)."),
             as_json: bool = JSON) -> None:
    """One version with its descriptor."""
    backend = _backend(ctx)
    found: AlgorithmVersion | None = backend.algorithm_version(name, version) if version else \
        backend.latest_algorithm(name)
    if found is None:
        raise AlgorithmNotFound(f"no algorithm {name!r}{f' version {version!r}' if version else ''} is registered")
    if as_json:
        from service.api.schemas import AlgorithmVersion as Shape

        print_json(Shape, found.to_dict())
        return
    console.print(f"[bold]{found.name}[/bold] {found.version} ({found.spec.runner}) queue {found.queue!r} "
                  f"sha256 {found.sha256}\nbundle {found.uri}\nregistered {found.summary()['registered_at']} by "
                  f"{found.registered_by}")
    console.print_json(json.dumps(found.descriptor))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "unknown"
