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
    p95_target: str | None = typer.Option(
        None, "--p95-target", help="The pool's p95 queue wait target: seconds, or 'baseline' (the ClearML baseline's "
                                   "own p95 on this trace and seed; the baseline runs first). Default: 300 s."),
    sweep: bool = typer.Option(False, "--sweep", help="The cost/p95 frontier instead: the default policy at targets "
                                                      "from 30 s to 30 min and at the baseline's p95, beside the "
                                                      "ClearML baseline (--png draws it)."),
    as_json: bool = JSON,
) -> None:
    """Replay a trace on a virtual clock through the real policy and daemon; print cost and queue waits."""
    from dataclasses import replace

    from autoscaler.sim.provider import BootModel
    from autoscaler.sim.report import COLUMNS, rows
    from autoscaler.sim.traces import TraceError
    from autoscaler.sim.world import POLICIES
    from autoscaler.simulate import BASELINE, SimSettings
    from autoscaler.simulate import simulate as run_simulation
    from service.errors import ConfigError

    for name, value in (("--policy", policy), ("--vs", vs)):
        if value is not None and value not in POLICIES:
            raise typer.BadParameter(f"{name} must be one of {', '.join(POLICIES)}, got {value!r}")
    if market not in ("spot", "on-demand"):
        raise typer.BadParameter(f"--market must be spot or on-demand, got {market!r}")
    target = _target(p95_target)
    if target == BASELINE and vs not in (None, "clearml"):
        raise typer.BadParameter("--p95-target baseline compares with the clearml baseline: --vs clearml or none")
    settings = SimSettings(tick_s=tick_s, boot=replace(BootModel(), capacity_error_p=capacity_error_p,
                                                       spot_interruptions_per_hour=spot_interruptions_per_hour))
    logging.getLogger("autoscaler").setLevel(logging.WARNING)  # a day of launches would drown the table
    profile = slot_profile.resolve() if slot_profile is not None else None  # from the working directory
    try:
        if sweep:
            _sweep(trace, warm_pool, seed, settings, slots, profile, market, png, as_json)
            return
        result = run_simulation(trace, policy=policy, vs=vs, warm_pool=warm_pool, seed=seed, settings=settings,
                                slots=slots, slot_profile=profile, market=market, p95_target=target)
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
        if result.reference.infeasible:
            err_console.print(escape(result.reference.infeasible))
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
    ref = result.reference
    ours_s = result.summaries[0].billed_s
    console.print(escape(result.verdict()))
    console.print(f"Erlang C reference for p95 <= {ref.target_s:.0f} s (fewest always-on instances per hour, boots "
                  f"ignored): {ref.billed_s / 3600:,.1f} instance-hours; ours "
                  + (f"{ours_s / ref.billed_s:.2f}x it" if ref.billed_s else "bills what it does for no arrival"))
    typer.echo(json.dumps(result.record()))


def _target(value: str | None) -> float | str | None:
    """--p95-target: None, 'baseline', or seconds >= 0."""
    from autoscaler.simulate import BASELINE

    if value is None or value == BASELINE:
        return value
    try:
        seconds = float(value)
    except ValueError:
        raise typer.BadParameter(f"--p95-target must be seconds or 'baseline', got {value!r}") from None
    if not 0 <= seconds < float("inf"):
        raise typer.BadParameter(f"--p95-target must be a number of seconds >= 0, got {value!r}")
    return seconds


def _sweep(trace: str, warm_pool: bool, seed: int, settings: Any, slots: int, profile: Path | None, market: str,
           png: Path | None, as_json: bool) -> None:
    from autoscaler.simulate import sweep

    result = sweep(trace, warm_pool=warm_pool, seed=seed, settings=settings, slots=slots, slot_profile=profile,
                   market=market)
    if png is not None:
        result.plot(png)
        err_console.print(f"plot written to {png}")
    record = result.record()
    if as_json:
        print_json(dict[str, Any], record)
        return
    b = result.baseline
    table = Table(title=f"{result.trace.name}: cost against p95 wait, seed {seed}"
                        + (", warm pool" if warm_pool else "") + f" (clearml: ${b.cost_usd:.2f}, "
                        f"{b.billed_s:,} GPU-s, p95 {b.p95_wait_s:.0f} s)")
    for col in ("p95 target s", "GPU-s billed", "cost $", "wait p95 s", "target", "cost/clearml", "p95/clearml",
                "erlang ref ratio"):
        table.add_column(col, justify="right", no_wrap=True)
    for point, row in zip(result.points, record["points"]):
        met = "infeasible" if point.reference.infeasible else (
            "met" if point.ours.p95_wait_s <= point.target_s else "missed")
        label = f"{point.target_s:.0f}" + (" (clearml's p95)" if point.label == "baseline" else "")
        table.add_row(label, f"{point.ours.billed_s:,}", f"{point.ours.cost_usd:.2f}", f"{point.ours.p95_wait_s:.0f}",
                      met, f"{row['cost_ratio_vs_baseline']:.3f}",
                      f"{point.ours.p95_wait_s / b.p95_wait_s:.2f}" if b.p95_wait_s else "-",
                      f"{row['erlang_reference_ratio']:.2f}" if row["erlang_reference_ratio"] is not None else "-")
    Console(width=max(console.width, 140)).print(table)
    for point in result.points:
        if point.reference.infeasible:
            console.print(escape(point.reference.infeasible))
    typer.echo(json.dumps(record))
