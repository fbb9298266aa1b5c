"""Build the autoscaler from settings and run its tick until stopped.

The running daemon counts its ticks in ``ticks.json`` beside its journal (the journal keeps
decisions only, and would grow by a line a second with every tick in it): ``{"pid", "ticks",
"failed", "at"}``, rewritten whole after each tick. It says the daemon is alive and lets a test
wait for ticks instead of sleeping. Beside it, ``fleet.json`` keeps the fleet the tick observed, for
the status page (``autoscaler.status``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from autoscaler.config import AutoscalerConfig, load_config
from autoscaler.daemon import Autoscaler, Journal
from autoscaler.metrics import record_tick
from autoscaler.providers.base import ComputeProvider
from autoscaler.status import fleet_path, write_fleet
from service.backends.base import TaskBackend
from service.errors import ScantideError
from service.settings import Settings

log = logging.getLogger(__name__)

TICKS_FILE = "ticks.json"


@dataclass
class Built:
    autoscaler: Autoscaler
    provider: ComputeProvider
    config: AutoscalerConfig
    ticks: Path | None = None  # where run_forever counts its ticks (None: nowhere)
    fleet: Path | None = None  # where run_forever writes each tick's observation (autoscaler.status)


def ticks_path(settings: Settings) -> Path:
    """The daemon's tick count, beside its journal."""
    return settings.autoscaler_journal.with_name(TICKS_FILE)


def read_ticks(path: Path) -> dict | None:
    """What ``ticks.json`` says (pid, ticks, failed, at), or None before the first tick."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _record_tick(path: Path, ticks: int, failed: int) -> None:
    """Rewrite the count whole (a reader never sees half of it); a failure is logged, never raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"pid": os.getpid(), "ticks": ticks, "failed": failed, "at": time.time()}))
        os.replace(tmp, path)
    except OSError as exc:
        # Once per process at warning: a read-only state dir must not fill the log a line a tick.
        level = logging.DEBUG if _unwritable_logged.is_set() else logging.WARNING
        _unwritable_logged.set()
        log.log(level, "autoscaler_ticks_unwritable path=%s error=%s", path, exc)


_unwritable_logged = threading.Event()


def make_provider(config: AutoscalerConfig, settings: Settings) -> ComputeProvider:
    if config.provider == "local":
        import os

        from autoscaler.providers.local import LocalProvider
        from service.supervisor import settings_env

        return LocalProvider(settings.state_dir, {p.name: p.queue for p in config.pools},
                             env={**os.environ, **settings_env(settings)},
                             slots={p.name: p.slots for p in config.pools})
    from autoscaler.providers.ec2 import from_config

    return from_config(config, settings)


def build(settings: Settings, backend: TaskBackend, provider: ComputeProvider | None = None) -> Built:
    from autoscaler.policy import decide

    config = load_config(settings)
    provider = provider or make_provider(config, settings)
    journal = Journal(settings.autoscaler_journal)
    autoscaler = Autoscaler(config.pools, provider, backend, decide, journal=journal,
                            executor=ThreadPoolExecutor(max_workers=8, thread_name_prefix="launch"))
    return Built(autoscaler, provider, config, ticks=ticks_path(settings), fleet=fleet_path(settings))


def run_forever(built: Built, stop: threading.Event) -> None:
    """Tick every ``tick_s`` until ``stop`` is set; a failing tick is logged and retried with backoff.
    After each tick, its count goes to ``built.ticks`` (ticks: those that ended well; failed: the others)
    and the fleet it observed to ``built.fleet``."""
    failures = 0
    ticks = failed = 0
    while not stop.is_set():
        try:
            actions = built.autoscaler.tick()
            for a in actions:
                log.info("autoscaler_action kind=%s pool=%s reason=%s", type(a).__name__, a.pool, a.reason)
            record_tick(built.autoscaler.last_snapshot, actions, ok=True)
            failures = 0
            ticks += 1
            wait = built.config.tick_s
        except ScantideError as exc:
            failures += 1
            failed += 1
            record_tick(None, [], ok=False)
            wait = min(60.0, built.config.tick_s * 2 ** failures)
            log.warning("autoscaler_tick_failed retry_in_s=%.0f error=%s", wait, exc.message)
        except Exception:  # noqa: BLE001 - the daemon must outlive a bug in one tick
            failures += 1
            failed += 1
            record_tick(None, [], ok=False)
            wait = min(60.0, built.config.tick_s * 2 ** failures)
            log.exception("autoscaler_tick_crashed retry_in_s=%.0f", wait)
        if built.ticks is not None:
            _record_tick(built.ticks, ticks, failed)
        if built.fleet is not None and built.autoscaler.last_snapshot is not None:
            write_fleet(built.fleet, built.autoscaler.last_snapshot, built.autoscaler.pools)
        stop.wait(wait)
