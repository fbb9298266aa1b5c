"""``scantide conductor``: advance pipeline runs until SIGTERM; run outcome events go to the monitor's
outbox, which delivers them signed like every other event."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from conductor.conductor import Conductor
from monitor.daemon import outbox_for
from monitor.events import linker_for
from service.backends.base import TaskBackend
from service.doorbell import CHANGES
from service.errors import BackendUnavailable
from service.pipelines.store import PipelineStore
from service.pipelines.targets import targets_for
from service.settings import Settings

log = logging.getLogger(__name__)


class ConductorDaemon:
    def __init__(self, backend: TaskBackend, settings: Settings) -> None:
        self.settings = settings
        self.targets = targets_for(settings, backend)
        self.conductor = Conductor(PipelineStore(settings.pipelines_db), self.targets, outbox_for(settings),
                                   link=linker_for(settings))
        self._stop = threading.Event()
        self._changes = backend.listener(CHANGES)  # embedded: a step that ends is advanced at once

    def stop(self, *_: Any) -> None:
        self._stop.set()
        self._changes.wake()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("conductor_started poll_s=%.2f targets=%s", self.settings.conductor_poll_s, ",".join(self.targets))
        failures = 0
        while not self._stop.is_set():
            try:
                self.conductor.tick()
                failures, wait = 0, self.settings.conductor_poll_s
            except BackendUnavailable as exc:
                failures += 1
                wait = min(30.0, self.settings.conductor_poll_s * 2 ** failures)
                log.warning("conductor_backend_unavailable retry_in_s=%.1f error=%s", wait, exc.message)
            if not self._stop.is_set():
                self._changes.wait(wait)
        self._changes.close()
        self.targets.close()
        log.info("conductor_stopped")
        return 0
