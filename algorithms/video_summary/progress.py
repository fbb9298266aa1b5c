"""Throttled progress reporting: few calls, never backwards, ending exactly at 1.0."""

from __future__ import annotations

from collections.abc import Callable

# Smallest rise (fraction of the run) worth a call; with the final 1.0 this bounds calls to ~20.
STEP = 0.05
MAX_CALLS = 20


class ProgressReporter:
    """Wraps the caller's ``progress(fraction)`` callback, or does nothing when it is None.

    The callback is the caller's code (it may write to a task backend), so it is called at most
    MAX_CALLS times, with non-decreasing fractions in [0, 1]; ``finish()`` always sends 1.0 once.
    Exceptions from the callback propagate: a caller may use them to cancel the run.
    """

    def __init__(self, callback: Callable[[float], None] | None) -> None:
        self._callback = callback
        self._last = 0.0
        self._calls = 0
        self._finished = False

    def update(self, fraction: float) -> None:
        """Report ``fraction`` (0..1) of the run done, if it moved on by at least STEP."""
        if self._callback is None or self._finished:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        # One call is held back for finish().
        if fraction - self._last < STEP or self._calls >= MAX_CALLS - 1 or fraction >= 1.0:
            return
        self._emit(fraction)

    def finish(self) -> None:
        """Report 1.0 (once)."""
        if self._callback is None or self._finished:
            return
        self._finished = True
        self._emit(1.0)

    def _emit(self, fraction: float) -> None:
        self._last = fraction
        self._calls += 1
        assert self._callback is not None
        self._callback(round(fraction, 4))
