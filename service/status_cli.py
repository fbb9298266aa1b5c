"""``scantide status``: queues, workers, the most recent tasks and this machine's input cache.

Both outputs come from one ``StatusReport``: the status page's snapshot (``GET /v1/status``: queues,
fleet, recent tasks and runs, open alerts, the outbox) with ``--limit`` recent tasks, and this
machine's input cache. The tables show the queues, the tasks and the cache; ``--json`` prints it all.
"""

from __future__ import annotations

import typer
from pydantic import Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.cli_json import JSON, print_json
from service.settings import Settings
from service.status.model import Section, StatusSnapshot

console = Console()


class InputCacheStatus(Section):
    """This machine's input cache, read from its index (nothing is created); available false when the
    index cannot be read."""

    enabled: bool = Field(description="False when SCANTIDE_INPUT_CACHE_MAX_BYTES is 0.")
    max_bytes: int
    bytes: int = Field(0, description="What it holds now.")
    blobs: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class StatusReport(StatusSnapshot):
    input_cache: InputCacheStatus


def status(ctx: typer.Context, limit: int = typer.Option(15, help="Recent tasks to show."),
           as_json: bool = JSON) -> None:
    """Queues, workers, the most recent tasks and this machine's input cache."""
    report = status_report(ctx.obj, limit)
    if as_json:
        print_json(StatusReport, report)
        return
    qt = Table(title="queues")
    for col in ("queue", "pending", "running", "oldest queued", "workers"):
        qt.add_column(col)
    for q in report.queues:
        qt.add_row(q.queue, str(q.pending), str(q.running), f"{q.oldest_queued_age_s:.0f}s", str(q.workers))
    console.print(qt)
    tt = Table(title="recent tasks")
    for col in ("scan", "algorithm", "state", "progress", "attempt", "task", "error"):
        tt.add_column(col)
    for t in report.tasks:
        tt.add_row(t.scan_id, t.algorithm, t.state.value, f"{(t.progress or 0) * 100:.0f}%", str(t.attempt),
                   t.task_id[:12], t.error_code or "")
    console.print(tt)
    console.print(input_cache_line(report.input_cache))


def status_report(settings: Settings, limit: int) -> StatusReport:
    from service.backends import open_backend
    from service.pipelines.store import PipelineStore
    from service.status.build import StatusBuilder, task_row
    from service.status.sources import load_sources

    backend = open_backend(settings)
    build = StatusBuilder(backend, PipelineStore(settings.pipelines_db), load_sources(settings, backend),
                          backend_name=settings.backend)
    snapshot = build().model_copy(update={"tasks": [task_row(t) for t in backend.list_tasks(None, limit)]})
    return StatusReport(**dict(snapshot), input_cache=input_cache_status(settings))


def input_cache_status(settings: Settings) -> InputCacheStatus:
    # The cache lives with the workers (algorithms/); its reader is standard library only.
    from service.input_cache import InputCacheError, stats

    limit = settings.input_cache_max_bytes
    if limit == 0:
        return InputCacheStatus(enabled=False, max_bytes=0)
    try:
        counts = stats(settings.input_cache_dir)  # type: ignore[arg-type]  # set whenever max_bytes is
        return InputCacheStatus(enabled=True, max_bytes=limit, **counts)
    except InputCacheError as exc:
        return InputCacheStatus(available=False, reason=str(exc), enabled=True, max_bytes=limit)


def input_cache_line(cache: InputCacheStatus) -> str:
    """One line on the input cache for people."""
    if not cache.enabled:
        return "input cache: off (SCANTIDE_INPUT_CACHE_MAX_BYTES=0)"
    if not cache.available:
        return f"input cache: unreadable ({escape(cache.reason or '')})"
    uses = cache.hits + cache.misses
    rate = f" ({cache.hits / uses:.0%} hit rate)" if uses else ""
    return (f"input cache: {cache.hits} hits, {cache.misses} misses{rate}, {size(cache.bytes)} of "
            f"{size(cache.max_bytes)}, {cache.evictions} evictions")


def size(n: int) -> str:
    """``n`` bytes for people: ``1.2 GiB``, ``20 GiB``, ``3.5 MiB``, ``0 B``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"
