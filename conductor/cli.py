"""``scantide conductor``, registered into the CLI through an entry point."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("conductor")(conductor)


def conductor(ctx: typer.Context) -> None:
    """Drive pipeline runs: submit each step when its needs are done, send each run's outcome (until SIGTERM)."""
    from conductor.daemon import ConductorDaemon
    from service.backends import open_backend
    from service.metrics import serve_port

    settings = ctx.obj
    serve_port(settings, "conductor")
    raise typer.Exit(ConductorDaemon(open_backend(settings), settings).run())
