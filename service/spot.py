"""The EC2 spot interruption notice, read on the worker's own instance.

Two minutes before EC2 takes a spot instance back, its instance metadata service (IMDS) answers
``GET /latest/meta-data/spot/instance-action`` with ``{"action": "terminate"|"stop"|"hibernate",
"time": "<ISO-8601 UTC>"}``; until then it answers 404. The instances are IMDSv2-only
(``HttpTokens=required``), so every read carries a session token from ``PUT /latest/api/token``
(``X-aws-ec2-metadata-token-ttl-seconds``), sent back as ``X-aws-ec2-metadata-token``.

Polling is off unless ``SCANTIDE_SPOT_NOTICE_URL`` names the metadata service
(``http://169.254.169.254``): the EC2 boot script sets it on spot instances, and nothing else does.
``SpotWatch`` polls it every ``SCANTIDE_SPOT_NOTICE_POLL_S`` on a thread and calls back once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from service.errors import MetadataUnavailable

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
ACTIONS = frozenset({"terminate", "stop", "hibernate"})
INTERRUPTION_CODE = "spot_interruption"  # the error code of a run handed back for a notice


@dataclass(frozen=True)
class Notice:
    action: str  # terminate | stop | hibernate
    time: str  # when EC2 acts, ISO-8601 UTC, as the metadata service says it

    def describe(self) -> str:
        return f"EC2 reclaims this spot instance ({self.action} at {self.time})"


class NoticeReader:
    """Reads the notice from the metadata service at ``base_url`` (IMDSv2).

    timeout_s: seconds for each request; token_ttl_s: the session token's lifetime, renewed a
    minute before it ends or when the service refuses it (401).
    """

    def __init__(self, base_url: str, *, timeout_s: float = 2.0, token_ttl_s: int = 21600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # trust_env=False: a proxy from the environment must never see metadata requests
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, trust_env=False)
        self._ttl_s = token_ttl_s
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0

    def close(self) -> None:
        self._http.close()

    def read(self) -> Notice | None:
        """The notice, or None while there is none. Raises ``MetadataUnavailable``."""
        resp = self._get(NOTICE_PATH, self._session_token())
        if resp.status_code == 401:  # the token ran out early (the service restarted): one more try
            self._token = None
            resp = self._get(NOTICE_PATH, self._session_token())
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise MetadataUnavailable(f"metadata service answered {resp.status_code} for {NOTICE_PATH}")
        try:
            body = json.loads(resp.text)
            action, when = str(body["action"]), str(body["time"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MetadataUnavailable(f"unreadable spot notice {resp.text[:200]!r}: {exc}") from exc
        if action not in ACTIONS:
            raise MetadataUnavailable(f"unknown spot notice action {action!r}")
        return Notice(action=action, time=when)

    def _session_token(self) -> str:
        if self._token is None or self._clock() >= self._renew_at:
            try:
                resp = self._http.put(TOKEN_PATH, headers={TOKEN_TTL_HEADER: str(self._ttl_s)})
            except httpx.HTTPError as exc:
                raise MetadataUnavailable(f"metadata service unreachable: {exc}") from exc
            if resp.status_code != 200 or not resp.text.strip():
                raise MetadataUnavailable(f"metadata service gave no session token ({resp.status_code})")
            self._token = resp.text.strip()
            self._renew_at = self._clock() + max(1.0, self._ttl_s - 60.0)
        return self._token

    def _get(self, path: str, token: str) -> httpx.Response:
        try:
            return self._http.get(path, headers={TOKEN_HEADER: token})
        except httpx.HTTPError as exc:
            raise MetadataUnavailable(f"metadata service unreachable: {exc}") from exc


class SpotWatch:
    """Polls ``reader`` every ``poll_s`` seconds on a daemon thread and calls ``on_notice`` once,
    with the first notice; then stops. A failed read is logged and tried again at the next poll:
    the notice stays up until the instance goes, so a missed poll only delays it."""

    def __init__(self, reader: NoticeReader, on_notice: Callable[[Notice], None], poll_s: float = 5.0) -> None:
        self.reader = reader
        self.on_notice = on_notice
        self.poll_s = poll_s
        self.notice: Notice | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spot-notice", daemon=True)

    def start(self) -> SpotWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.reader.close()

    def _run(self) -> None:
        while True:
            try:
                notice = self.reader.read()
            except MetadataUnavailable as exc:
                log.warning("spot_notice_unreadable error=%s", exc.message)
                notice = None
            if notice is not None:
                self.notice = notice
                log.warning("spot_interruption action=%s at=%s", notice.action, notice.time)
                self.on_notice(notice)
                return
            if self._stop.wait(self.poll_s):
                return


def watch(url: str | None, poll_s: float, on_notice: Callable[[Notice], None]) -> SpotWatch | None:
    """A started ``SpotWatch`` of the metadata service at ``url``; None when ``url`` is unset (off)."""
    if not url:
        return None
    log.info("spot_notice_watch url=%s poll_s=%.1f", url, poll_s)
    return SpotWatch(NoticeReader(url), on_notice, poll_s).start()
