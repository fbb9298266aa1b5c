"""Build the autoscaler from settings and run its tick until stopped."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from autoscaler.config import AutoscalerConfig, load_config
from autoscaler.daemon import Autoscaler, Journal
from autoscaler.providers.base import ComputeProvider
from service.backends.base import TaskBackend
from service.errors import ScantideError
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Built:
    autoscaler: Autoscaler
    provider: ComputeProvider
    config: AutoscalerConfig


def make_provider(config: AutoscalerConfig, settings: Settings) -> ComputeProvider:
    if config.provider == "local":
        import os

        from autoscaler.providers.local import LocalProvider
        from service.supervisor import settings_env

        return LocalProvider(settings.state_dir, {p.name: p.queue for p in config.pools},
                             env={**os.environ, **settings_env(settings)})
    from autoscaler.providers.ec2 import from_config

    return from_config(config, settings)


def build(settings: Settings, backend: TaskBackend, provider: ComputeProvider | None = None) -> Built:
    from autoscaler.policy import decide

    config = load_config(settings)
    provider = provider or make_provider(config, settings)
    journal = Journal(settings.autoscaler_journal)
    autoscaler = Autoscaler(config.pools, provider, backend, decide, journal=journal,
                            executor=ThreadPoolExecutor(max_workers=8, thread_name_prefix="launch"))
    return Built(autoscaler, provider, config)


def run_forever(built: Built, stop: threading.Event) -> None:
    """Tick every ``tick_s`` until ``stop`` is set; a failing tick is logged and retried with backoff."""
    failures = 0
    while not stop.is_set():
        try:
            actions = built.autoscaler.tick()
            for a in actions:
                log.info("autoscaler_action kind=%s pool=%s reason=%s", type(a).__name__, a.pool, a.reason)
            failures = 0
            wait = built.config.tick_s
        except ScantideError as exc:
            failures += 1
            wait = min(60.0, built.config.tick_s * 2 ** failures)
            log.warning("autoscaler_tick_failed retry_in_s=%.0f error=%s", wait, exc.message)
        except Exception:  # noqa: BLE001 - the daemon must outlive a bug in one tick
            failures += 1
            wait = min(60.0, built.config.tick_s * 2 ** failures)
            log.exception("autoscaler_tick_crashed retry_in_s=%.0f", wait)
        stop.wait(wait)
