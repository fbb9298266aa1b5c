"""How every scantide process logs: one format for our lines and uvicorn's, and on each line the ids
of what it is about.

``configure`` sets up the root logger for a process: JSON lines (``JsonFormatter``) by default when
stderr is not a terminal, key=value text (``TextFormatter``) when it is; ``SCANTIDE_LOG_FORMAT``
(json|text) and ``SCANTIDE_LOG_LEVEL`` decide instead when set. uvicorn is given the same
configuration (``log_config``), so its error and access lines come out in our format through the root.

``bind(request_id=…, task_id=…, scan_id=…, run_id=…)`` puts ids in a context variable for the
lines logged within it, in this thread or asyncio task: the API binds each request's id, the
worker, the monitor and the conductor the ids of the task, event or run in hand. The request id is
also kept with the task it made (``SubmitItem.request_id``), so one ``grep <request id>`` over all
processes' logs follows a scan from the request to its webhook.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import math
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum
from types import TracebackType
from typing import Any, Literal

LogFormat = Literal["json", "text"]
CONTEXT_KEYS = ("request_id", "task_id", "scan_id", "run_id")
_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar("scantide_log_context", default={})
# An X-Request-ID taken as sent: short, and nothing that could forge a line or a field.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/@-]{0,127}")
# A %-conversion of a log call's format string, and the key=value name just before one.
_CONVERSION = re.compile(r"%(\(\w+\))?[-#0 +]*(\*|\d+)?(\.(\*|\d+))?[diouxXeEfFgGcrsa%]")
_KEY = re.compile(r"([A-Za-z_]\w*)=$")
# Our lines start with their event's name, then key=value pairs (or a colon and words for people).
_EVENT = re.compile(r"[a-z][a-z0-9_]*(?=$|:| [A-Za-z_]\w*=)")
# uvicorn's access line, '%s - "%s %s HTTP/%s" %d', as fields.
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
_format: LogFormat = "text"  # what configure() chose, for what prints beside the logs (``is_json``)


# -- context --------------------------------------------------------------------------------------
@contextmanager
def bind(**ids: str | None) -> Iterator[None]:
    """Lines logged within carry ``ids`` (those given and not empty) besides the ones bound already."""
    token = _CONTEXT.set(_merged(ids))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_here(**ids: str | None) -> None:
    """Bind ``ids`` for the rest of the current context: an asyncio task (one request) ends with it."""
    _CONTEXT.set(_merged(ids))


def _merged(ids: Mapping[str, str | None]) -> Mapping[str, str]:
    unknown = set(ids) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"unknown log context keys {sorted(unknown)}; known: {CONTEXT_KEYS}")
    return {**_CONTEXT.get(), **{k: str(v) for k, v in ids.items() if v}}


def current(key: str) -> str | None:
    """The id bound as ``key`` here, if any."""
    return _CONTEXT.get().get(key)


def request_id_from(*sent: str | None) -> str:
    """A request's id: the first of ``sent`` (the caller's ``X-Request-ID``, a platform's own id)
    that is sane, 1-128 characters of letters, digits and ``._:+=/@-``; else a new one."""
    for candidate in sent:
        if candidate and _SANE_REQUEST_ID.fullmatch(candidate):
            return candidate
    return uuid.uuid4().hex


# -- formatting -----------------------------------------------------------------------------------
class ContextFilter(logging.Filter):
    """Stamps each record with the ids bound where it was logged (handlers may format elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.scantide_ids = dict(_CONTEXT.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO-8601 UTC), ``level``, ``service``, ``logger``, ``event``
    (the line's first word when it names one: ``task_started``), ``msg`` (the whole message), the
    bound ids, the message's own ``key=value`` arguments as fields of their own (uvicorn's access
    line: ``client``, ``method``, ``path``, ``http_version``, ``status``), and ``exc`` (a traceback)."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname.lower()}
        if self.service:
            line["service"] = self.service
        line["logger"] = record.name
        event = _EVENT.match(message)
        if event:
            line["event"] = event.group(0)
        line["msg"] = message
        fields = {**message_fields(record), **getattr(record, "scantide_ids", {})}
        line.update((k, v) for k, v in fields.items() if k not in line)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<time> level=… logger=… <message>``, then the bound ids the message does not name."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = getattr(record, "scantide_ids", {})
        extra = " ".join(f"{k}={v}" for k, v in ids.items() if f"{k}=" not in record.getMessage())
        if not extra:
            return text
        head, newline, rest = text.partition("\n")  # a traceback stays below the line
        return f"{head} {extra}{newline}{rest}"


def message_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``key=%s`` arguments of a record's format string, by key, as JSON values; {} when the
    format cannot be read that way (a mapping of arguments, a ``*`` width)."""
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == len(ACCESS_FIELDS):
        return {k: _plain(v) for k, v in zip(ACCESS_FIELDS, args)}
    if not isinstance(record.msg, str) or not isinstance(args, tuple) or not args:
        return {}
    fields: dict[str, Any] = {}
    i = 0
    for conversion in _CONVERSION.finditer(record.msg):
        if conversion.group(0) == "%%":
            continue
        if conversion.group(1) or "*" in conversion.group(0) or i >= len(args):
            return {}
        key = _KEY.search(record.msg, 0, conversion.start())
        if key:
            fields[key.group(1)] = _plain(args[i])
        i += 1
    return fields


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- configuration --------------------------------------------------------------------------------
def resolve_format(setting: LogFormat | None) -> LogFormat:
    """``setting``, or when unset: text on a terminal, JSON anywhere else (a file, a pipe, a collector)."""
    if setting is not None:
        return setting
    stream = sys.stderr
    return "text" if stream is not None and stream.isatty() else "json"


def log_config(level: str = "INFO", fmt: LogFormat | None = None, service: str | None = None) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a process: one stderr handler on the root, which uvicorn's
    loggers reach too (they keep no handlers of their own). Give it to ``uvicorn.run(log_config=…)``."""
    formatter = JsonFormatter if resolve_format(fmt) == "json" else TextFormatter
    via_root = {"level": level, "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,  # module loggers made at import keep working
        "filters": {"ids": {"()": ContextFilter}},
        "formatters": {"scantide": {"()": formatter, "service": service}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "scantide", "filters": ["ids"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {"uvicorn": via_root, "uvicorn.error": via_root, "uvicorn.access": via_root,
                    "httpx": {"level": "WARNING"}},  # a line per request would drown the CLI's output
    }


def configure(level: str = "INFO", fmt: LogFormat | None = None, service: str | None = None) -> dict[str, Any]:
    """Set up this process's logging (``log_config``); returns the configuration, for uvicorn. With
    JSON, Python's warnings and uncaught exceptions are logged too, so every line on stderr is JSON.

    Like ``logging.basicConfig``, it leaves a root logger that has handlers already as it is: a
    program that runs a command in its own process (a test harness, a notebook) keeps its logging."""
    global _format
    config = log_config(level, fmt, service)
    if logging.getLogger().handlers:
        return config
    _format = resolve_format(fmt)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    if _format == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = lambda args: _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)
    return config


def is_json() -> bool:
    """Whether ``configure`` chose JSON: what a command would print for people goes in a line then."""
    return _format == "json"


def _log_uncaught(kind: type[BaseException], value: BaseException | None, tb: TracebackType | None) -> None:
    if issubclass(kind, SystemExit):  # a thread's exit, which threading's own hook ignores too
        return
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value or kind(), tb)
        return
    logging.getLogger("scantide").critical("uncaught_exception type=%s", kind.__name__, exc_info=(kind, value, tb))


def configure_lambda(level: str = "INFO") -> None:
    """JSON lines at ``level`` in AWS Lambda: the runtime's own handler (which adds the invocation's
    framing) keeps writing, with our formatter; outside Lambda a stderr handler is added."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter(service="lambda"))
        handler.addFilter(ContextFilter())
    root.setLevel(level)
