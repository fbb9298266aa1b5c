"""``scantide autoscaler`` (the daemon) and ``scantide fleet``, registered through an entry point."""

from __future__ import annotations

import datetime as dt
import signal
import threading

import typer
from rich.console import Console
from rich.table import Table

from service.cli_json import JSON, print_json

console = Console()


def register(app: typer.Typer) -> None:
    app.command("autoscaler")(autoscaler)
    app.command("fleet")(fleet)


def autoscaler(ctx: typer.Context, once: bool = typer.Option(False, "--once", help="Run one tick and exit.")) -> None:
    """Start and stop workers to follow the queues (until SIGTERM)."""
    from autoscaler.runner import build, run_forever
    from service.backends import open_backend
    from service.metrics import serve_port

    settings = ctx.obj
    built = build(settings, open_backend(settings))
    if once:
        for action in built.autoscaler.tick():
            console.print(f"{type(action).__name__} {action.pool}: {action.reason}")
        return
    serve_port(settings, "autoscaler")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_forever(built, stop)
    shutdown = getattr(built.provider, "shutdown", None)
    if shutdown is not None:  # local workers stop with the embedded stack; EC2 instances do not
        shutdown()


def fleet(ctx: typer.Context, decisions: int = typer.Option(15, help="Recent decisions to show."),
          as_json: bool = JSON) -> None:
    """The fleet per pool (from the provider, the truth) and the autoscaler's recent decisions."""
    import time

    from autoscaler.runner import build
    from autoscaler.status import daemon_targets, fleet_path, target_record
    from service.backends import open_backend

    settings = ctx.obj
    built = build(settings, open_backend(settings))
    snapshot = built.autoscaler.observe(time.time())
    # the waits and the rate are the running daemon's measurements: this process has just started
    targets = daemon_targets(fleet_path(settings), snapshot.now, max_age_s=max(60.0, 4 * built.config.tick_s))
    if as_json:
        from autoscaler.fleet_report import FleetReport, fleet_report

        journal = built.autoscaler.journal.tail(decisions)
        print_json(FleetReport, fleet_report(snapshot, built.autoscaler.pools, journal, targets))
        return
    for name, pool in snapshot.pools.items():
        t = (targets or {}).get(name) or target_record(pool, built.autoscaler.pools[name], snapshot.now)
        measured = ("no running autoscaler to measure it" if targets is None else
                    f"{t['p95_wait_s_last_hour']:.0f}s over {t['waits_last_hour']} waits"
                    if t["p95_wait_s_last_hour"] is not None else "no task started")
        table = Table(title=f"pool {name}: {pool.pending} queued, {pool.running} running, "
                            f"oldest queued {pool.oldest_queued_age_s:.0f}s")
        # Ids are what an operator acts on: never cut short, even on a narrow or non-terminal output.
        table.add_column("instance", no_wrap=True, min_width=max((len(i.id) for i in pool.instances), default=8))
        for col in ("state", "type", "market", "$/h", "for", "busy/slots"):
            table.add_column(col)
        table.add_column("tasks", overflow="fold")
        for i in pool.instances:
            table.add_row(i.id, i.state.value, i.option.instance_type, i.option.market.value,
                          f"{i.option.price_per_hour:.2f}", f"{snapshot.now - i.state_since:.0f}s",
                          f"{len(i.task_ids)}/{i.slots}", ", ".join(i.task_ids))
        console.print(table)
        console.print(f"p95 wait target {t['p95_wait_target_s']:.0f}s, last hour: {measured}; {t['state']}",
                      soft_wrap=True)
    table = Table(title="recent decisions")
    for col in ("at", "pool", "decision", "reason", "detail"):
        table.add_column(col)
    for entry in built.autoscaler.journal.tail(decisions):
        table.add_row(dt.datetime.fromtimestamp(entry["at"]).strftime("%H:%M:%S"), entry["pool"], entry["kind"],
                      entry["reason"], _detail(entry))
    console.print(table)


def _detail(entry: dict) -> str:
    parts = []
    if "count" in entry:
        parts.append(f"{entry['count']} ×")
    if "option" in entry:
        parts.append(f"{entry['option']['instance_type']} {entry['option']['market']}")
    if "instances" in entry:
        parts.append(", ".join(entry["instances"]))
    return " ".join(parts)
