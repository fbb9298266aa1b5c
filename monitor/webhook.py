"""Webhook delivery: sign, POST with an explicit timeout, and decide what happens next.

2xx delivers. 408, 429 (its Retry-After honoured), 5xx, timeouts and connection errors retry
with capped, jittered exponential backoff until the event is ``max_age_s`` old; any other 4xx is
permanent and goes to the dead letters. A failed send never touches the task it reports on.
Events of one scan go out in order (the outbox only offers a key's oldest pending event); events
of different scans go out concurrently.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from monitor.outbox import Entry, Outbox
from service.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429}


@dataclass(frozen=True)
class DeliveryPolicy:
    url: str
    secret: str
    timeout_s: float = 10.0  # per request
    max_age_s: float = 24 * 3600.0  # keep retrying this long after the event was enqueued
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 600.0
    concurrency: int = 8


@dataclass(frozen=True)
class Attempt:
    outcome: str  # delivered | retry | dead
    detail: str
    retry_after_s: float | None = None


def backoff_s(attempts: int, base_s: float, cap_s: float, rng: random.Random = random.Random()) -> float:
    """Full-jitter exponential backoff: uniform in [base/2, min(cap, base·2^attempts)], seconds."""
    ceiling = min(cap_s, base_s * (2 ** min(attempts, 32)))
    return rng.uniform(min(base_s / 2, ceiling), ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def classify(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status in RETRYABLE_STATUS or status >= 500:
        return "retry"
    return "dead"


def post(client: httpx.Client, policy: DeliveryPolicy, entry: Entry) -> Attempt:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "scantide-webhook/1",
        EVENT_ID_HEADER: entry.id,
        SIGNATURE_HEADER: sign(policy.secret, entry.body),
    }
    try:
        response = client.post(policy.url, content=entry.body, headers=headers, timeout=policy.timeout_s)
    except httpx.TimeoutException:
        return Attempt("retry", f"timed out after {policy.timeout_s:.0f} s")
    except httpx.TransportError as exc:
        return Attempt("retry", f"connection failed: {type(exc).__name__}: {exc}")
    outcome = classify(response.status_code)
    retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
    return Attempt(outcome, f"HTTP {response.status_code}", retry_after if outcome == "retry" else None)


class Deliverer:
    """Sends due outbox events until stopped. Thread-safe ``wake()`` shortens the wait for new events."""

    def __init__(self, outbox: Outbox, policy: DeliveryPolicy, client: httpx.Client | None = None) -> None:
        self.outbox = outbox
        self.policy = policy
        self.client = client or httpx.Client(limits=httpx.Limits(max_connections=policy.concurrency))
        self._pool = ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="webhook")
        self._in_flight: dict[str, Future] = {}  # key → its head event's send
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rng = random.Random()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self, idle_wait_s: float = 1.0) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before step(): a send finishing from here on still wakes the wait below
            self.step()
            self._wake.wait(self._wait_s(idle_wait_s))
        self._pool.shutdown(wait=True)

    def step(self) -> int:
        """Start sending every due event whose key has nothing in flight. Returns how many started."""
        self._in_flight = {k: f for k, f in self._in_flight.items() if not f.done()}
        free = self.policy.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        entries = self.outbox.due(time.time(), limit=free, exclude_keys=set(self._in_flight))
        for entry in entries:
            future = self._pool.submit(self._deliver, entry)
            future.add_done_callback(lambda _: self._wake.set())
            self._in_flight[entry.key] = future
        return len(entries)

    def drain(self, timeout_s: float = 30.0) -> None:
        """Deliver until nothing is due or in flight (for tests and one-shot use)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            started = self.step()
            if not started and not any(not f.done() for f in self._in_flight.values()):
                return
            time.sleep(0.01)

    def _wait_s(self, idle_wait_s: float) -> float:
        # A finished send wakes the loop, so keys in flight and a full pool need no polling; counting
        # them (or a key's later events, which wait for its head) would spin while a send is slow.
        busy = {k for k, f in self._in_flight.items() if not f.done()}
        if len(busy) >= self.policy.concurrency:
            return idle_wait_s
        nxt = self.outbox.next_due_at(exclude_keys=busy)
        if nxt is None:
            return idle_wait_s
        return max(0.0, min(idle_wait_s, nxt - time.time()))

    def _deliver(self, entry: Entry) -> None:
        try:
            attempt = post(self.client, self.policy, entry)
        except Exception as exc:  # noqa: BLE001 - a bug in one send must not stop delivery
            log.exception("webhook_send_crashed event=%s", entry.id)
            attempt = Attempt("retry", f"{type(exc).__name__}: {exc}")
        now = time.time()
        if attempt.outcome == "delivered":
            self.outbox.mark_delivered(entry.id)
            log.info("webhook_delivered event=%s type=%s key=%s attempts=%d", entry.id, entry.type, entry.key,
                     entry.attempts + 1)
        elif attempt.outcome == "dead":
            self.outbox.mark_dead(entry.id, attempt.detail)
            log.warning("webhook_dead_letter event=%s type=%s reason=%s", entry.id, entry.type, attempt.detail)
        elif now - entry.enqueued_at > self.policy.max_age_s:
            self.outbox.mark_dead(entry.id, f"gave up after {entry.attempts + 1} attempts: {attempt.detail}")
            log.warning("webhook_expired event=%s type=%s reason=%s", entry.id, entry.type, attempt.detail)
        else:
            wait = attempt.retry_after_s
            if wait is None:
                wait = backoff_s(entry.attempts, self.policy.backoff_base_s, self.policy.backoff_cap_s, self._rng)
            wait = min(wait, self.policy.max_age_s)
            self.outbox.mark_retry(entry.id, now + wait, attempt.detail)
            log.info("webhook_retry event=%s attempt=%d in_s=%.1f reason=%s", entry.id, entry.attempts + 1, wait,
                     attempt.detail)
