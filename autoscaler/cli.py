"""``scantide simulate``, registered into the CLI through the ``scantide.cli`` entry point."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autoscaler.model import MAX_SLOTS
from service.cli_json import JSON, print_json
from service.exit_codes import ExitCode

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    trace: str = typer.Option(..., help="grin-day, steady, burst, steady-30/60/80/120, ramp, spikes, quiet-week, "
                                        "long-jobs, or a CSV file with columns arrival_s,service_s."),
    policy: str = typer.Option("default", help="Policy to run: default or clearml."),
    vs: str | None = typer.Option(None, help="Also run this policy on the same machines and compare: clearml."),
    warm_pool: bool = typer.Option(False, "--warm-pool",
                                   help="Give the default policy a warm pool of stopped instances."),
    seed: int = typer.Option(0, help="Seed for the built-in traces, boot times and dispatch."),
    tick_s: float = typer.Option(15.0, min=1.0, help="The daemon's tick, seconds."),
    capacity_error_p: float = typer.Option(0.0, min=0.0, max=1.0,
                                           help="Probability a launch or start fails for capacity."),
    png: Path | None = typer.Option(None, help="Write queue depth and fleet size over time to this PNG."),
    slots: int = typer.Option(1, min=1, max=MAX_SLOTS,
                              help="Tasks each instance runs at once (both policies), each slowed as measured "
                                   "in --slot-profile."),
    slot_profile: Path | None = typer.Option(
        None, help="Scans per hour per slot count, as benchmarks/throughput.py writes it "
                   "(default: benchmarks/results/throughput.json in the project)."),
    market: str = typer.Option("on-demand", help="spot (at 0.45x the on-demand price, on-demand as the capacity "
                                                 "fallback; interrupted) or on-demand, both policies."),
    spot_interruptions_per_hour: float = typer.Option(0.05, min=0.0,
                                                      help="Spot interruption notices per running instance-hour."),
    as_json: bool = JSON,
) -> None:
    """Replay a trace on a virtual clock through the real policy and daemon; print cost and queue waits."""
    from dataclasses import replace

    from autoscaler.sim.provider import BootModel
    from autoscaler.sim.report import COLUMNS, rows
    from autoscaler.sim.traces import TraceError
    from autoscaler.sim.world import POLICIES
    from autoscaler.simulate import SimSettings
    from autoscaler.simulate import simulate as run_simulation
    from service.errors import ConfigError

    for name, value in (("--policy", policy), ("--vs", vs)):
        if value is not None and value not in POLICIES:
            raise typer.BadParameter(f"{name} must be one of {', '.join(POLICIES)}, got {value!r}")
    if market not in ("spot", "on-demand"):
        raise typer.BadParameter(f"--market must be spot or on-demand, got {market!r}")
    settings = SimSettings(tick_s=tick_s, boot=replace(BootModel(), capacity_error_p=capacity_error_p,
                                                       spot_interruptions_per_hour=spot_interruptions_per_hour))
    logging.getLogger("autoscaler").setLevel(logging.WARNING)  # a day of launches would drown the table
    profile = slot_profile.resolve() if slot_profile is not None else None  # from the working directory
    try:
        result = run_simulation(trace, policy=policy, vs=vs, warm_pool=warm_pool, seed=seed, settings=settings,
                                slots=slots, slot_profile=profile, market=market)
    except TraceError as exc:
        err_console.print(f"[red]bad trace[/red]: {escape(str(exc))}")
        raise typer.Exit(ExitCode.USAGE) from None
    except ConfigError as exc:  # a --slot-profile without that slot count: the command line asks what it cannot
        err_console.print(f"[red]cannot simulate {slots} slots[/red]: {escape(exc.message)}")
        raise typer.Exit(ExitCode.USAGE) from None
    if png is not None:
        result.plot(png)
        err_console.print(f"plot written to {png}")
    if as_json:
        print_json(dict[str, Any], result.record())
        return

    t = result.trace
    resources = result.ours.resources
    per_slot = (f", {slots} slots per instance (each task {resources.slot_slowdown:.2f}x as long, "
                f"from {resources.slot_profile})" if slots > 1 else "")
    table = Table(title=f"{t.name}: {len(t.jobs)} scans over {t.duration_s / 3600:.1f} h, seed {seed}, "
                        f"tick {tick_s:.0f}s{per_slot}, {market}"
                        + (f" ({spot_interruptions_per_hour:g} interruptions/instance-h)" if market == "spot" else ""))
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for row in rows(result.summaries):
        table.add_row(*row)
    Console(width=max(console.width, 160)).print(table)  # never squeeze the table into 80 columns
    typer.echo(json.dumps(result.record()))
