"""``service.logs`` in-process: the JSON and text lines, the bound ids, the request id's sanity."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from service import logs
from service.domain import JobState


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger of its own writing through a handler as ``log_config`` builds it (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(service="worker"))
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("tests.logs.unit")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def read(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_the_event_the_fields_and_the_bound_ids(lines) -> None:
    log, stream, _ = lines
    with logs.bind(request_id="req-1", task_id="t1"), logs.bind(scan_id="s1", run_id=None):
        log.info("task_finished worker=%s attempt=%d state=%s warm=%s ratio=%.2f%s", "w 1", 2, JobState.completed,
                 True, float("nan"), " code=timeout")
    log.warning("worker_orphaned worker=%s: the scantide up it ran under is gone; stopping", "w1")
    first, second = read(stream)
    assert first == {"ts": first["ts"], "level": "info", "service": "worker", "logger": "tests.logs.unit",
                     "event": "task_finished", "msg": "task_finished worker=w 1 attempt=2 state=JobState.completed warm=True "
                     "ratio=nan code=timeout", "worker": "w 1", "attempt": 2, "state": "completed", "warm": True,
                     "ratio": "nan", "request_id": "req-1", "task_id": "t1", "scan_id": "s1"}
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["event"] == "worker_orphaned" and "request_id" not in second  # the binding ended with its block


def test_lines_for_people_name_no_event_and_odd_formats_give_no_fields(lines) -> None:
    log, stream, _ = lines
    log.info("scantide up: API on http://%s:%d", "127.0.0.1", 8700)
    log.info("at %d%% of quota=%s", 50, "q")
    log.info("named %(a)s", {"a": 1})
    log.info("width %*d key=%s", 3, 7, "v")
    people, percent, named, width = read(stream)
    assert "event" not in people and people["msg"] == "scantide up: API on http://127.0.0.1:8700"
    assert percent["quota"] == "q" and percent["msg"] == "at 50% of quota=q"
    assert "a" not in named and "key" not in width


def test_a_field_never_takes_the_place_of_the_lines_own_keys(lines) -> None:
    log, stream, _ = lines
    log.info("odd level=%s msg=%s ts=%s", "x", "y", "z")
    (line,) = read(stream)
    assert (line["level"], line["msg"]) == ("info", "odd level=x msg=y ts=z") and line["ts"] != "z"


def test_a_traceback_stays_inside_its_line(lines) -> None:
    log, stream, _ = lines
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("task_crashed task=%s", "t1")
    (line,) = read(stream)
    assert line["level"] == "error" and "RuntimeError: boom" in line["exc"]
    assert len(stream.getvalue().splitlines()) == 1


def test_uvicorns_access_line_becomes_fields() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "POST", "/v1/scans", "1.1", 202), None)
    line = json.loads(logs.JsonFormatter(service="api").format(record))
    assert (line["client"], line["method"], line["path"], line["http_version"], line["status"]) == \
        ("127.0.0.1:5000", "POST", "/v1/scans", "1.1", 202)
    assert "event" not in line


def test_text_lines_add_the_ids_the_message_does_not_name() -> None:
    formatter = logs.TextFormatter()
    record = logging.LogRecord("service.worker", logging.INFO, __file__, 1, "task_started task_id=%s", ("t1",), None)
    record.scantide_ids = {"request_id": "req-1", "task_id": "t1"}
    text = formatter.format(record)
    assert text.endswith(" level=INFO logger=service.worker task_started task_id=t1 request_id=req-1")
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    head, *rest = formatter.format(record).splitlines()
    assert head.endswith("request_id=req-1") and rest[-1] == "ValueError: bad"


def test_binding_is_per_thread_and_checked() -> None:
    seen: list[str | None] = []
    with logs.bind(request_id="outer"):
        thread = threading.Thread(target=lambda: seen.append(logs.current("request_id")))
        thread.start()
        thread.join()
        assert logs.current("request_id") == "outer"
    assert seen == [None] and logs.current("request_id") is None
    with pytest.raises(ValueError, match="unknown log context keys"):
        with logs.bind(worker="w1"):
            pass


@pytest.mark.parametrize("sent", ["req-1", "Root=1-5759e988-bd862e3fe1be46a994272793", "a" * 128,
                                  "9b2e4c1f-7d3a-4e8b-a1c2-3d4e5f6a7b8c"])
def test_a_sane_request_id_is_taken_as_sent(sent: str) -> None:
    assert logs.request_id_from(sent) == sent


@pytest.mark.parametrize("sent", [None, "", "a" * 129, "two words", 'x" level=error', "line\nbreak", "-leading",
                                  "ünïcode"])
def test_any_other_request_id_is_replaced(sent: str | None) -> None:
    made = logs.request_id_from(sent)
    assert made != sent and len(made) == 32 and int(made, 16) >= 0


def test_the_first_sane_id_wins() -> None:
    assert logs.request_id_from("bad id", None, "aws-req-1") == "aws-req-1"


def test_the_format_follows_the_terminal_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert logs.resolve_format(None) == "text" and logs.resolve_format("json") == "json"
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert logs.resolve_format(None) == "json" and logs.resolve_format("text") == "text"
    config = logs.log_config("DEBUG", "json", service="api")
    assert config["formatters"]["scantide"]["()"] is logs.JsonFormatter
    assert all(config["loggers"][name]["handlers"] == [] and config["loggers"][name]["propagate"]
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access"))
