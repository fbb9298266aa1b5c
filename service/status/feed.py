"""Live status for every viewer of ``/v1/status/events`` from one thread.

The thread builds a snapshot, hands it to each viewer, and waits for the task store's ``changes``
ring (embedded mode's doorbell, rung by every commit) or ``poll_s`` (production: ClearML has no
ring; and pipeline runs, the fleet and the outbox change without one). Rings closer than
``min_gap_s`` are taken together, so a busy store costs at most one build per ``min_gap_s``
however many viewers there are. A viewer is sent a snapshot when its fingerprint changed (ages
alone changing send nothing: the page ages them itself). The thread runs only while someone
watches: it starts with the first viewer and ends after a wait that finds none.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from service.doorbell import CHANGES, Listener
from service.errors import ScantideError
from service.status.model import StatusSnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unavailable:
    """A build that failed: ``error`` is the API's error body (``{"code", "message"}``)."""

    error: dict[str, str]


Update = StatusSnapshot | Unavailable


class StatusFeed:
    def __init__(self, build: Callable[[], StatusSnapshot], listener: Callable[[str], Listener], *,
                 poll_s: float = 2.0, min_gap_s: float = 0.25) -> None:
        """build: one snapshot (blocking I/O, run on the feed's thread). listener: the task store's
        ``TaskBackend.listener``. poll_s, min_gap_s: seconds."""
        self._build = build
        self._listener_for = listener
        self.poll_s = poll_s
        self.min_gap_s = min_gap_s
        self._lock = threading.Lock()
        self._viewers: set[_Viewer] = set()
        self._thread: threading.Thread | None = None
        self._listener: Listener | None = None

    async def updates(self) -> AsyncIterator[Update]:
        """The current snapshot at once, then each that differs, until the caller stops iterating."""
        viewer = _Viewer(asyncio.get_running_loop())
        with self._lock:
            self._viewers.add(viewer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="status-feed", daemon=True)
                self._thread.start()
            elif self._listener is not None:
                self._listener.wake()  # build now: the newcomer needs a snapshot
        sent: str | None = None
        try:
            while True:
                await viewer.ready.wait()
                viewer.ready.clear()
                update = viewer.latest
                key = update.fingerprint() if isinstance(update, StatusSnapshot) else repr(update)
                if key != sent:
                    sent = key
                    yield update
        finally:
            with self._lock:
                self._viewers.discard(viewer)

    def _run(self) -> None:
        listener = self._listener_for(CHANGES)
        with self._lock:
            self._listener = listener
        try:
            while True:
                started = time.monotonic()
                update = self._build_once()
                with self._lock:
                    viewers = list(self._viewers)
                for v in viewers:
                    v.offer(update)
                rung = listener.wait(self.poll_s)
                with self._lock:
                    if not self._viewers:
                        self._thread = self._listener = None
                        return
                if rung:  # take the rings of the next moments together
                    time.sleep(max(0.0, started + self.min_gap_s - time.monotonic()))
        finally:
            listener.close()

    def _build_once(self) -> Update:
        try:
            return self._build()
        except ScantideError as exc:
            log.warning("status_unavailable code=%s error=%s", exc.code, exc.message)
            return Unavailable(exc.to_dict())
        except Exception:  # noqa: BLE001 - the feed outlives a bug in one build; viewers see it failed
            log.exception("status_build_crashed")
            return Unavailable({"code": "internal_error", "message": "internal error; the server log has the details"})


class _Viewer:
    """One stream's mailbox: the latest update, and an event set from the feed's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready = asyncio.Event()
        self.latest: Update | None = None

    def offer(self, update: Update) -> None:
        def deliver() -> None:
            self.latest = update
            self.ready.set()

        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # its event loop has closed: the server is stopping
            pass
