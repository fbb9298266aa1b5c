"""A discrete-event loop on a virtual clock: the simulator's one notion of time.

Callables scheduled at a virtual time run in time order (ties in scheduling order); a *process*
is a generator that yields how many seconds it waits before it runs on, which is how the daemon's
tick loop and the baseline's blocking poll loop are written. The loop is itself the clock: pass
it wherever code takes ``clock: Callable[[], float]``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Generator
from typing import Any

Process = Generator[float, None, None]


class EventLoop:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``t`` (seconds); never in the past."""
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn, args))

    def after(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay_s, fn, *args)

    def spawn(self, process: Process, delay_s: float = 0.0) -> None:
        """Run a generator process: each value it yields is the seconds it sleeps before resuming."""
        self.after(delay_s, self._step, process)

    def _step(self, process: Process) -> None:
        try:
            wait = next(process)
        except StopIteration:
            return
        self.after(max(0.0, float(wait)), self._step, process)

    def run(self, until: Callable[[], bool], limit: float) -> None:
        """Run events in order until ``until()`` holds (checked after each event) or time reaches ``limit``."""
        while not until():
            if not self._heap or self._heap[0][0] > limit:
                self.now = max(self.now, limit)
                return
            t, _, fn, args = heapq.heappop(self._heap)
            self.now = t
            fn(*args)
