"""The one seam between scantide and the ``clearml`` SDK: a fail-fast SDK session that sends the
SDK's typed API requests and turns every way a call can fail into our errors.

The SDK's defaults suit a training script, not a service: 240 retries with backoff up to 120 s,
endless waiting on 503 ("the server is being upgraded") and a 300 s read timeout, so one call
to a dead server blocks for hours. Here the session reads the SDK's standard configuration chain
(``CLEARML_API_HOST`` / ``CLEARML_API_ACCESS_KEY`` / ``CLEARML_API_SECRET_KEY``, then
``clearml.conf``) and overrides only how it retries: ``retries`` retries with backoff
``backoff_s``, 2·``backoff_s``, …, no endless 503 wait, timeouts of ``timeout_s``. A call that still
fails raises ``BackendUnavailable`` (the API answers 503, daemons back off and try again).

The session is created on first use, not at start-up, so a service started while ClearML is down
comes up and answers 503 until it is back.
"""

from __future__ import annotations

import logging
import socket
import threading
import warnings
from typing import Any

import requests
from clearml.backend_api import Session, load_config
from clearml.backend_api.session import Request
from clearml.backend_api.session.defs import MissingConfigError
from clearml.backend_api.session.session import LoginError
from clearml.backend_config import ConfigurationError

from service.errors import BackendUnavailable, ClearMLRefused, ConfigError, ScantideError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# The SDK's configuration parser (its bundled pyhocon) keeps global state: one session is set up at a time.
_SETUP_LOCK = threading.Lock()


class _FailFastSession(Session):
    """The SDK's session with our timeouts; the SDK reads these attributes on every request."""

    def __init__(self, timeout_s: float, **kwargs: Any) -> None:
        timeouts = (min(CONNECT_TIMEOUT_S, timeout_s), timeout_s)  # (connect, read) seconds
        self._session_initial_timeout = self._session_timeout = self._write_session_timeout = timeouts
        super().__init__(**kwargs)


class ClearMLClient:
    """Sends the SDK's typed requests (the API 2.23 schemas, ``clearml.backend_api.services.v2_23``:
    the server must speak API 2.23 or later); thread-safe.

    timeout_s: read timeout of one HTTP request, seconds. retries: how many times the SDK retries a
    request that could not connect, timed out or got 502/503/429, before we give up.
    """

    def __init__(self, *, timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.25) -> None:
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._session: Session | None = None
        self._lock = threading.Lock()

    def session(self) -> Session:
        with self._lock:
            if self._session is None:
                with _SETUP_LOCK:
                    self._session = self._connect()
            return self._session

    def _connect(self) -> Session:
        retries = {"total": self.retries, "connect": self.retries, "read": self.retries, "redirect": 2,
                   "status": self.retries, "backoff_factor": self.backoff_s}
        try:
            with warnings.catch_warnings():  # the SDK's bundled HOCON parser warns about pyparsing names
                warnings.simplefilter("ignore", DeprecationWarning)
                config = load_config()  # the SDK's API defaults, then clearml.conf; CLEARML_* variables win
                config.set_overrides({"api": {"http": {"wait_on_maintenance_forever": False}}})
            return _FailFastSession(self.timeout_s, config=config, http_retries_config=retries,
                                    worker=socket.gethostname(), logger=log, verbose=False)
        except ConfigurationError as exc:
            raise ConfigError(f"cannot read the ClearML configuration: {exc}") from exc
        except MissingConfigError as exc:
            raise ConfigError("ClearML is not configured: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY and "
                              "CLEARML_API_SECRET_KEY (or write clearml.conf with `clearml-init`)") from exc
        except LoginError as exc:
            raise _login_error(exc) from exc
        except requests.RequestException as exc:
            raise BackendUnavailable(f"cannot reach the ClearML API server: {exc}") from exc
        except ValueError as exc:  # no host configured, or the host is not a ClearML API server
            raise ConfigError(f"ClearML is misconfigured: {exc}") from exc

    def send(self, request: Request) -> dict[str, Any]:
        """Send one request; its answer's ``data``. Raises ``BackendUnavailable`` when the server
        cannot be reached or fails, ``ClearMLRefused`` when it refuses the call."""
        endpoint = f"{request._service}.{request._action}"
        session = self.session()
        try:
            result = session.send(request)
        except LoginError as exc:  # the token ran out and could not be renewed
            raise _login_error(exc) from exc
        except (requests.RequestException, ValueError) as exc:  # ValueError: an answer without an envelope
            raise BackendUnavailable(f"ClearML {endpoint} failed: {exc}") from exc
        meta = result.meta
        if meta.result_code == 200:
            return result.response_data or {}
        if meta.result_code in (401, 403):
            raise ConfigError(f"ClearML refused our credentials for {endpoint}: {meta.result_msg}")
        if meta.result_code >= 500 or not meta.is_valid:
            raise BackendUnavailable(f"ClearML {endpoint} failed: {meta.result_code} {meta.result_msg}")
        raise ClearMLRefused(endpoint, meta.result_code, meta.result_subcode or 0, meta.result_msg or "")

    def close(self) -> None:
        with self._lock:
            self._session = None


def _login_error(exc: LoginError) -> ScantideError:
    if "error 401" in str(exc) or "error 403" in str(exc):
        return ConfigError(f"ClearML refused our credentials: {exc}")
    return BackendUnavailable(f"cannot log in to the ClearML API server: {exc}")
