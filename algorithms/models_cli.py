"""``scantide models …``: register, promote, roll back, list and show model versions.

It sits above ``service`` (registered through the ``scantide.cli`` entry point) because
registration loads the file in the algorithm first, ``algorithms.<name>.validate_model(path)``,
so a file that does not load is refused here, not at job time. Everything else goes through
``service.models`` and the task backend of the settings. ``list``, ``show``, ``promote`` and
``rollback`` take ``--json``: the API's ``ModelRegistry`` (``ModelChange`` for the last two).
"""

from __future__ import annotations

import datetime as dt
import getpass
import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from service.cli_json import JSON, print_json
from service.errors import (
    ConfigError,
    InvalidModelFile,
    InvalidRequest,
    UnknownAlgorithm,
)

if TYPE_CHECKING:
    from service.backends.base import TaskBackend
    from service.models import AuditEntry

console = Console()
models_app = typer.Typer(help="Model versions: register, promote, roll back, list and show (with the audit trail).",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "unknown"


BY = typer.Option(None, "--by", help="Who does it, for the audit trail (default: the OS user).")


def _backend(ctx: typer.Context) -> TaskBackend:
    from service.backends import open_backend

    return open_backend(ctx.obj)


def _missing(algorithm: str, dependency: str | None) -> ConfigError:
    """The refusal when checking a model needs a library this install lacks."""
    return ConfigError(f"checking a {algorithm} model needs {dependency}, which is not installed: "
                       "install scantide's algorithms extra (torch==2.13.0 among it)")


def algorithm_module(algorithm: str) -> ModuleType:
    """The algorithm's package, which must offer ``validate_model``; clear errors otherwise."""
    if not algorithm.isidentifier():
        raise UnknownAlgorithm(f"unknown algorithm {algorithm!r}")
    try:
        module = importlib.import_module(f"algorithms.{algorithm}")
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "cv2", "numpy"):
            raise _missing(algorithm, exc.name) from None
        if exc.name == f"algorithms.{algorithm}":
            raise UnknownAlgorithm(f"unknown algorithm {algorithm!r}: no package algorithms/{algorithm}") from None
        raise
    if not callable(getattr(module, "validate_model", None)):
        raise InvalidRequest(f"algorithm {algorithm!r} takes no model file (it has no validate_model)",
                             code="no_model")
    return module


def validate(module: ModuleType, algorithm: str, path: Path) -> dict[str, Any]:
    """``validate_model(path)``; its refusal (``InvalidModel``) becomes our ``InvalidModelFile``."""
    try:
        return module.validate_model(path)
    except ModuleNotFoundError as exc:
        raise _missing(algorithm, exc.name) from None
    except Exception as exc:  # noqa: BLE001 - the algorithm's InvalidModel, or whatever a bad file makes it raise
        detail = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise InvalidModelFile(f"{path} is not a usable {algorithm} model: {detail}") from None


@models_app.command("register")
def register_cmd(
    ctx: typer.Context,
    path: Path | None = typer.Argument(None, help="The weights file (omit with --bundled)."),
    algorithm: str = typer.Option(..., "--algorithm", "-a", help="The algorithm the weights are for."),
    version: str = typer.Option(..., "--version", "-v", help="A new version name, e.g. 2 or 2025-06-01."),
    notes: str = typer.Option("", help="What changed, for people."),
    promote: bool = typer.Option(False, "--promote", help="Promote it once registered."),
    bundled: bool = typer.Option(False, "--bundled", help="Register the weights the algorithm ships with."),
    by: str | None = BY,
) -> None:
    """Check that the file loads in the algorithm, store it and record the version (immutable).

    Registering the same file under the same version again changes nothing."""
    from service.models import register_model

    module = algorithm_module(algorithm)
    if bundled == (path is not None):
        raise typer.BadParameter("give either PATH or --bundled")
    if bundled:
        path = getattr(module, "DEFAULT_WEIGHTS", None)
        if path is None:
            raise InvalidRequest(f"algorithm {algorithm!r} ships no weights (no DEFAULT_WEIGHTS)", code="no_model")
    assert path is not None
    info = validate(module, algorithm, Path(path))
    backend = _backend(ctx)
    who = by or _user()
    model, created = register_model(backend, ctx.obj, algorithm, version, Path(path), notes=notes, by=who)
    what = "registered" if created else "already registered (same file)"
    console.print(f"{what}: {algorithm} {model.version} sha256 {model.sha256[:12]} {model.size} bytes at {model.uri}"
                  + (f" ({info['parameters']} parameters)" if isinstance(info, dict) and "parameters" in info else ""))
    if promote:
        _report_promotion(backend.promote_model(algorithm, version, by=who), algorithm, version)


@models_app.command("promote")
def promote_cmd(ctx: typer.Context, algorithm: str = typer.Argument(...), version: str = typer.Argument(...),
                by: str | None = BY, as_json: bool = JSON) -> None:
    """Tasks enqueued from now on get VERSION; queued and running tasks keep theirs."""
    backend = _backend(ctx)
    entry = backend.promote_model(algorithm, version, by=by or _user())
    if as_json:
        _print_change(backend, algorithm, entry)
    else:
        _report_promotion(entry, algorithm, version)


@models_app.command("rollback")
def rollback_cmd(ctx: typer.Context, algorithm: str = typer.Argument(...), by: str | None = BY,
                 as_json: bool = JSON) -> None:
    """Promote again the version promoted before the current one."""
    backend = _backend(ctx)
    entry = backend.rollback_model(algorithm, by=by or _user())
    if as_json:
        _print_change(backend, algorithm, entry)
    else:
        console.print(f"rolled back {algorithm}: {entry.from_version} → {entry.to_version}")


@models_app.command("show")
def show_cmd(ctx: typer.Context, algorithm: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """One algorithm's versions, the promoted one, and its audit trail (as GET /v1/models/ALGORITHM)."""
    if as_json:
        from service.api.schemas import ModelRegistry
        from service.models import registry

        print_json(ModelRegistry, registry(_backend(ctx), algorithm))
    else:
        _print_tables(_backend(ctx), algorithm)


@models_app.command("list")
def list_cmd(ctx: typer.Context, algorithm: str | None = typer.Argument(None, help="Only this algorithm."),
             as_json: bool = JSON) -> None:
    """Versions (the promoted one marked *) and the audit trail: who, when, from → to."""
    backend = _backend(ctx)
    if as_json:
        from service.api.schemas import ModelRegistry
        from service.models import registry

        names = [algorithm] if algorithm else sorted({m.algorithm for m in backend.list_models()}
                                                     | {e.algorithm for e in backend.model_history()})
        print_json(list[ModelRegistry], [registry(backend, name) for name in names])
    else:
        _print_tables(backend, algorithm)


def _print_tables(backend: TaskBackend, algorithm: str | None) -> None:
    versions = Table(title="model versions")
    for col in ("", "algorithm", "version", "sha256", "bytes", "registered", "by", "notes", "uri"):
        versions.add_column(col)
    for m in backend.list_models(algorithm):
        versions.add_row("*" if m.promoted else "", m.algorithm, m.version, m.sha256[:12], str(m.size),
                         _when(m.registered_at), m.registered_by, m.notes, m.uri)
    console.print(versions)
    trail = Table(title="audit trail")
    for col in ("when", "algorithm", "action", "from → to", "by"):
        trail.add_column(col)
    for e in backend.model_history(algorithm):
        trail.add_row(_when(e.at), e.algorithm, e.action, f"{e.from_version or '-'} → {e.to_version or '-'}", e.by)
    console.print(trail)


def _print_change(backend: TaskBackend, algorithm: str, entry: AuditEntry | None) -> None:
    """What ``POST /v1/models/{algorithm}/promote`` and ``…/rollback`` answer: the API's ``ModelChange``."""
    from service.api.schemas import ModelChange
    from service.models import registry

    print_json(ModelChange, {**registry(backend, algorithm), "changed": entry is not None,
                             "audit": entry.to_dict() if entry else None})


def _report_promotion(entry: AuditEntry | None, algorithm: str, version: str) -> None:
    if entry is None:
        console.print(f"{algorithm} {version} is already the promoted version")
    else:
        console.print(f"promoted {algorithm}: {entry.from_version or 'bundled weights'} → {entry.to_version}")


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
