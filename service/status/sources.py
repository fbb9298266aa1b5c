"""Status sources: the sections of the status page that other processes keep.

The fleet is the autoscaler's view and the alerts and the outbox are the monitor's; ``service``
imports neither package, so each registers a source under the ``scantide.status`` entry-point
group (pyproject.toml), as their commands do under ``scantide.cli``. An entry point names a
factory ``(settings, backend) -> source``; a source is called with the time (unix seconds) and
returns the ``StatusPart`` it fills. A section no source fills reads as unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points

from service.backends.base import TaskBackend
from service.settings import Settings
from service.status.model import StatusPart

log = logging.getLogger(__name__)

GROUP = "scantide.status"

Source = Callable[[float], StatusPart]
SourceFactory = Callable[[Settings, TaskBackend], Source]


def load_sources(settings: Settings, backend: TaskBackend) -> dict[str, Source]:
    """Every installed source, by entry-point name; one that cannot be loaded is left out and logged."""
    sources: dict[str, Source] = {}
    for ep in entry_points(group=GROUP):
        try:
            factory: SourceFactory = ep.load()
            sources[ep.name] = factory(settings, backend)
        except Exception:  # noqa: BLE001 - a broken plug-in costs its sections, never the API
            log.exception("status_source_unavailable name=%s target=%s", ep.name, ep.value)
    return sources
