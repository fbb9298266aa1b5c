"""The client's one error tree, rooted at ``ScantideError``.

Every error keeps the server's stable ``code`` (clients branch on it, never on the message) and
the HTTP ``status`` it came with (``None`` when no response came back). ``Unavailable`` stays apart
from the rest: it is the only kind worth retrying, and the client has already retried it.
"""

from __future__ import annotations

from typing import Any


class ScantideError(Exception):
    """Root of every error the client raises on purpose; ``str()`` is the message."""

    code = "scantide_error"
    status: int | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class InvalidRequest(ScantideError):
    """The server will never accept the request as it is (400, 413, 422)."""

    code = "invalid_request"
    status = 422


class AuthError(ScantideError):
    """The token is missing, unknown (401) or lacks the scope (403)."""

    code = "unauthorized"
    status = 401


class NotFound(ScantideError):
    code = "not_found"
    status = 404


class Conflict(ScantideError):
    code = "conflict"
    status = 409


class Unavailable(ScantideError):
    """The server could not be reached (``status`` None) or asked to come back later (503, 429),
    after every retry."""

    code = "unavailable"
    status = None


class SignatureError(ScantideError):
    """A webhook request that is not genuine: ``invalid_signature``, or ``stale_signature``."""

    code = "invalid_signature"
    status = 400


class TaskFailed(ScantideError):
    """A task ended ``failed`` or ``stopped``; ``log_tail`` is the end of its log (the remote
    traceback for a crashed algorithm)."""

    code = "task_failed"
    status = None
    LOG_LINES_SHOWN = 15

    def __init__(self, task_id: str, code: str, message: str, log_tail: str = "", state: str = "failed") -> None:
        super().__init__(message, code=code)
        self.task_id = task_id
        self.log_tail = log_tail or ""
        self.state = state

    @classmethod
    def from_task(cls, data: dict[str, Any]) -> TaskFailed:
        """The error for a task body (``GET /v1/tasks/{id}``) whose state is ``failed`` or ``stopped``."""
        error = data.get("error") or {}
        state = str(data.get("state", "failed"))
        return cls(str(data.get("task_id", "?")), str(error.get("code") or f"task_{state}"),
                   str(error.get("message") or f"the task ended {state}"), str(error.get("log_tail") or ""), state)

    def __str__(self) -> str:
        text = f"task {self.task_id} {self.state}: {self.code}: {self.message}"
        lines = self.log_tail.rstrip().splitlines()[-self.LOG_LINES_SHOWN:]
        if lines:
            text += "\n--- last lines of the task's log ---\n" + "\n".join(lines)
        return text


_BY_STATUS: dict[int, type[ScantideError]] = {
    400: InvalidRequest, 413: InvalidRequest, 422: InvalidRequest,
    401: AuthError, 403: AuthError,
    404: NotFound,
    409: Conflict,
    429: Unavailable, 502: Unavailable, 503: Unavailable, 504: Unavailable,
}


def error_from_response(status: int, body: Any, text: str = "") -> ScantideError:
    """The typed error for an HTTP error answer, keeping the server's ``code`` and ``message``.

    ``body`` is the decoded JSON (``{"error": {"code", "message"}}`` from a scantide server; anything
    else, such as a proxy's HTML page, falls back on ``text`` and the status's default code).
    """
    error = body.get("error") if isinstance(body, dict) else None
    code = message = None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidRequest if 400 <= status < 500 else ScantideError
    if not message:
        snippet = " ".join(text.split())[:200]
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    return cls(str(message), code=str(code) if code else None, status=status)
