"""Alert rules as pure functions of a snapshot and the time: stalls and queue backlog."""

from __future__ import annotations

from dataclasses import dataclass

from service.domain import JobState, QueueStats, TaskInfo


@dataclass(frozen=True)
class AlertConfig:
    stall_no_heartbeat_s: float = 60.0  # running with no heartbeat this long
    max_queue_wait_s: float = 1800.0  # queued this long
    backlog_slo_s: float = 600.0  # oldest queued task older than this → queue.backlog


@dataclass(frozen=True)
class Stall:
    task: TaskInfo
    reason: str  # no_heartbeat | max_runtime | queued_too_long
    detail: str


def find_stalls(tasks: list[TaskInfo], max_runtime_s: dict[str, float], now: float,
                config: AlertConfig) -> list[Stall]:
    """Stalled tasks among ``tasks`` (queued and running ones; others are ignored).

    ``max_runtime_s`` maps an algorithm to its template's runtime limit, seconds.
    """
    stalls = []
    for t in tasks:
        if t.state is JobState.running:
            beat = t.heartbeat_at or t.started_at or now
            if now - beat > config.stall_no_heartbeat_s:
                stalls.append(Stall(t, "no_heartbeat", f"no heartbeat from worker {t.worker_id} for "
                                                      f"{now - beat:.0f} s"))
            limit = max_runtime_s.get(t.algorithm)
            if limit is not None and t.started_at is not None and now - t.started_at > limit:
                stalls.append(Stall(t, "max_runtime", f"running for {now - t.started_at:.0f} s, over the "
                                                     f"algorithm's {limit:.0f} s limit"))
        elif t.state is JobState.queued and t.queued_at is not None and now - t.queued_at > config.max_queue_wait_s:
            stalls.append(Stall(t, "queued_too_long", f"queued for {now - t.queued_at:.0f} s, over "
                                                      f"{config.max_queue_wait_s:.0f} s"))
    return stalls


def backlog_transitions(stats: list[QueueStats], breached: set[str], config: AlertConfig) -> list[tuple[str, str]]:
    """(queue, "breached" | "recovered") for each queue whose SLO state changed since ``breached``."""
    out = []
    for s in stats:
        over = s.oldest_queued_age_s > config.backlog_slo_s
        if over and s.queue not in breached:
            out.append((s.queue, "breached"))
        elif not over and s.queue in breached:
            out.append((s.queue, "recovered"))
    return out
