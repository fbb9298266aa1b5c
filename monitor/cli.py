"""``scantide monitor`` and ``scantide events …``, registered into the CLI through an entry point."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal, Optional

import typer
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from service.cli_json import JSON, print_json
from service.domain import iso
from service.exit_codes import ExitCode

console = Console()
events_app = typer.Typer(help="Webhook events: list, retry dead letters, replay a scan.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor)
    app.add_typer(events_app, name="events")


def monitor(ctx: typer.Context) -> None:
    """Watch task states, post signed webhook events, raise stall and backlog alerts (until SIGTERM)."""
    from monitor.daemon import MonitorDaemon
    from service.backends import open_backend
    from service.metrics import serve_port

    settings = ctx.obj
    serve_port(settings, "monitor")
    raise typer.Exit(MonitorDaemon(open_backend(settings), settings).run())


class OutboxEvent(BaseModel):
    """One event in the outbox, as ``scantide events list --json`` prints it. Times are ISO-8601 UTC."""

    id: str
    type: str
    about: str = Field(description="What its deliveries are ordered by: scan:<id>, run:<id>, queue:<name>, …")
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    created_at: str
    next_attempt_at: str | None = Field(description="When it is due next (pending events only).")
    delivered_at: str | None
    last_error: str | None
    body: dict[str, Any] = Field(description="The webhook event as posted (docs/webhooks.md).")


def _outbox(ctx: typer.Context):
    from monitor.daemon import outbox_for

    return outbox_for(ctx.obj)


@events_app.command("list")
def list_events(
    ctx: typer.Context,
    state: Optional[str] = typer.Option(None, help="pending, delivered or dead."),
    scan: Optional[str] = typer.Option(None, help="Only this scan's events."),
    limit: int = typer.Option(30, help="Newest first, at most this many."),
    as_json: bool = JSON,
) -> None:
    """Events in the outbox, newest first."""
    if state not in (None, "pending", "delivered", "dead"):
        raise typer.BadParameter("state must be pending, delivered or dead")
    outbox = _outbox(ctx)
    entries = outbox.list(state, limit, key=f"scan:{scan}" if scan else None)
    if as_json:
        print_json(list[OutboxEvent], [
            {"id": e.id, "type": e.type, "about": e.key, "state": e.state, "attempts": e.attempts,
             "created_at": iso(e.created_at), "delivered_at": iso(e.delivered_at), "last_error": e.last_error,
             "next_attempt_at": iso(e.next_attempt_at) if e.state == "pending" else None, "body": json.loads(e.body)}
            for e in entries])
        return
    table = Table(title=f"events ({', '.join(f'{k} {v}' for k, v in outbox.counts().items())})")
    for col in ("id", "type", "about", "state", "attempts", "created", "last error"):
        table.add_column(col)
    for e in entries:
        created = dt.datetime.fromtimestamp(e.created_at).strftime("%H:%M:%S")
        table.add_row(e.id[:16], e.type, e.key, e.state, str(e.attempts), created, e.last_error or "")
    console.print(table)


@events_app.command("retry-dead")
def retry_dead(ctx: typer.Context) -> None:
    """Send every dead-lettered event again (after fixing the receiver)."""
    console.print(f"{_outbox(ctx).retry_dead()} dead event(s) queued for delivery again")


@events_app.command("replay")
def replay(ctx: typer.Context, scan_id: str = typer.Argument(..., help="Scan whose events to send again.")) -> None:
    """Send a scan's events again, with their original ids."""
    n = _outbox(ctx).replay(scan_id)
    if n == 0:
        console.print(f"no delivered or dead events for scan {scan_id!r}")
        raise typer.Exit(ExitCode.FAILED)
    console.print(f"{n} event(s) of scan {scan_id} queued for delivery again")
