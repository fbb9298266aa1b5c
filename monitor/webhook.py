"""Webhook delivery: sign, POST with an explicit timeout, and decide what happens next.

2xx delivers. 408, 429 (its Retry-After honoured), 5xx, timeouts and connection errors retry
with capped, jittered exponential backoff until the event is ``max_age_s`` old; any other 4xx is
permanent and goes to the dead letters. A redirect is followed, with the same signed POST, only
within the webhook URL's own scheme, host and port (``MAX_REDIRECTS`` hops); one anywhere else is
a dead letter that says so. A failed send never touches the task it reports on.
Events of one scan go out in order (the outbox only offers a key's oldest pending event); events
of different scans go out concurrently.

When the receiver was away (an event's first send failed) the first delivery that succeeds makes
every backed-off event due at once (``Outbox.retry_now``): the backlog goes out as soon as the
receiver is back, not when each event's own timer runs out.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from monitor.metrics import WEBHOOK_DELIVERIES, WEBHOOK_LAG
from monitor.outbox import HELD_MARK, Entry, Outbox
from service import logs
from service.signing import sign

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429}
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 3  # same-origin hops followed per send
MOVED = "a webhook URL must answer itself; update SCANTIDE_WEBHOOK_URL"


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


def log_ids(body: bytes) -> dict[str, str]:
    """The ids an event's delivery lines carry (``service.logs``): the scan, task, run and request its
    data names."""
    try:
        data = json.loads(body)["data"]
    except (ValueError, KeyError, TypeError):
        return {}
    return {k: v for k in logs.CONTEXT_KEYS if isinstance(v := data.get(k), str)} if isinstance(data, dict) else {}


def classify(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status in RETRYABLE_STATUS or status >= 500:
        return "retry"
    return "dead"


def redirect_target(url: httpx.URL, response: httpx.Response) -> tuple[httpx.URL | None, str]:
    """Where a redirect from ``url`` may be followed, or None and why not: only to the same scheme,
    host and port (the signature covers the body and its time, not the URL, so elsewhere would be
    trusted with a genuine event; and a moved receiver should be configured, not chased)."""
    location = response.headers.get("location")
    if not location:
        return None, f"HTTP {response.status_code} without a Location"
    try:
        target = url.join(location)
    except httpx.InvalidURL:
        return None, f"HTTP {response.status_code} to an invalid Location {location!r}"
    if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
        return None, f"redirected to {target}: {MOVED}"
    return target, ""


def post(client: httpx.Client, policy: DeliveryPolicy, entry: Entry) -> Attempt:
    # Standard Webhooks: webhook-id is the event's id (the same on every retry), the timestamp this attempt's.
    headers = {"Content-Type": "application/json", "User-Agent": "scantide-webhook/1",
               **sign(policy.secret, entry.id, entry.body)}
    url = httpx.URL(policy.url)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = client.post(url, content=entry.body, headers=headers, timeout=policy.timeout_s)
        except httpx.TimeoutException:
            return Attempt("retry", f"timed out after {policy.timeout_s:.0f} s")
        except httpx.TransportError as exc:
            return Attempt("retry", f"connection failed: {type(exc).__name__}: {exc}")
        if response.status_code not in REDIRECT_STATUS:
            return answered(response)
        target, refused = redirect_target(url, response)
        if target is None:
            return Attempt("dead", refused)
        log.info("webhook_redirected event=%s status=%d to=%s", entry.id, response.status_code, target)
        url = target
    return Attempt("dead", f"more than {MAX_REDIRECTS} redirects from {policy.url}: {MOVED}")


def answered(response: httpx.Response) -> Attempt:
    outcome = classify(response.status_code)
    detail = f"HTTP {response.status_code}"
    retry_after = parse_retry_after(response.headers.get("retry-after"), time.time()) if outcome == "retry" else None
    if retry_after is not None:
        detail += f", {HELD_MARK}: {retry_after:.0f} s"  # the outbox's retry_now() leaves such an event be
    return Attempt(outcome, detail, retry_after)


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
        # Set when a first send fails for want of a receiver; the next success releases the backlog.
        # It starts set: a monitor restarted during an outage finds its backlog backed off already.
        self._receiver_away = True
        self._away_lock = threading.Lock()

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
        with logs.bind(**log_ids(entry.body)):
            self._send(entry)

    def _send(self, entry: Entry) -> None:
        try:
            attempt = post(self.client, self.policy, entry)
        except Exception as exc:  # noqa: BLE001 - a bug in one send must not stop delivery
            log.exception("webhook_send_crashed event=%s", entry.id)
            attempt = Attempt("retry", f"{type(exc).__name__}: {exc}")
        now = time.time()
        if attempt.outcome == "delivered":
            self.outbox.mark_delivered(entry.id)
            WEBHOOK_DELIVERIES.labels("delivered").inc()
            WEBHOOK_LAG.observe(max(0.0, now - entry.created_at))
            log.info("webhook_delivered event=%s type=%s key=%s attempts=%d", entry.id, entry.type, entry.key,
                     entry.attempts + 1)
            self._receiver_back()
        elif attempt.outcome == "dead":
            self.outbox.mark_dead(entry.id, attempt.detail)
            WEBHOOK_DELIVERIES.labels("dead").inc()
            log.warning("webhook_dead_letter event=%s type=%s reason=%s", entry.id, entry.type, attempt.detail)
        elif now - entry.enqueued_at > self.policy.max_age_s:
            self.outbox.mark_dead(entry.id, f"gave up after {entry.attempts + 1} attempts: {attempt.detail}")
            WEBHOOK_DELIVERIES.labels("dead").inc()
            log.warning("webhook_expired event=%s type=%s reason=%s", entry.id, entry.type, attempt.detail)
        else:
            if entry.attempts == 0 and attempt.retry_after_s is None:
                # Only a first send counts: an event that fails again once released may be one the
                # receiver refuses (a 500 on its payload), and must not be released at every success.
                self._receiver_away = True
            wait = attempt.retry_after_s
            if wait is None:
                wait = backoff_s(entry.attempts, self.policy.backoff_base_s, self.policy.backoff_cap_s, self._rng)
            wait = min(wait, self.policy.max_age_s)
            self.outbox.mark_retry(entry.id, now + wait, attempt.detail)
            WEBHOOK_DELIVERIES.labels("retry").inc()
            log.info("webhook_retry event=%s attempt=%d in_s=%.1f reason=%s", entry.id, entry.attempts + 1, wait,
                     attempt.detail)

    def _receiver_back(self) -> None:
        """After a success that ends a spell of failed sends, every backed-off event is due now."""
        with self._away_lock:
            if not self._receiver_away:
                return
            self._receiver_away = False
        released = self.outbox.retry_now(time.time())
        if released:
            log.info("webhook_receiver_back released=%d", released)
            self._wake.set()
