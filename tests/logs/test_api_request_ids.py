"""The API's request ids, on uvicorn: even an unhandled error is answered, and logged (by us and by
uvicorn), with one."""

from __future__ import annotations

import logging

import pytest

from service import logs
from service.backends.base import TaskBackend
from service.settings import Settings
from tests.conftest import ApiServer


def test_an_unhandled_error_is_answered_and_logged_with_the_request_id(
        settings: Settings, backend: TaskBackend, caplog: pytest.LogCaptureFixture) -> None:
    server = ApiServer(settings, backend)

    def boom() -> None:
        raise RuntimeError("a bug")

    server.server.config.app.add_api_route("/boom", boom)
    caplog.handler.addFilter(logs.ContextFilter())
    uvicorn_log = logging.getLogger("uvicorn")  # its own handler under the test server: it does not propagate
    uvicorn_log.addHandler(caplog.handler)
    server.start()
    try:
        with server.client() as client, caplog.at_level(logging.ERROR, logger="service.api.errors"):
            answer = client.get("/boom", headers={"X-Request-ID": "req-boom"})
    finally:
        server.stop()
        uvicorn_log.removeHandler(caplog.handler)
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["X-Request-ID"] == "req-boom"
    [ours] = [r for r in caplog.records if r.getMessage() == "unhandled_error"]
    [uvicorns] = [r for r in caplog.records if r.name == "uvicorn.error" and r.exc_info]  # raised on to the server
    assert ours.scantide_ids == uvicorns.scantide_ids == {"request_id": "req-boom"}
