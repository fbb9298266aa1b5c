"""The algorithm's error tree: every failure a caller should see is an ``AlgorithmError``.

Codes are stable strings: the platform branches on them and webhooks expose them. This package
imports nothing of the project, so the tree is its own; the task entry point maps it onto the
service's errors.
"""

from __future__ import annotations


class AlgorithmError(Exception):
    """Root of every error ``run()`` raises on purpose.

    ``code`` is stable (callers branch on it); ``message`` is for a person and says what is wrong.
    """

    code: str = "algorithm_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message: str = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidVideo(AlgorithmError):
    """The scan cannot be analysed: missing, unreadable, empty, truncated or too long."""

    code = "invalid_video"


class InvalidParams(AlgorithmError):
    """A parameter has the wrong type or is out of range."""

    code = "invalid_params"


class InvalidModel(AlgorithmError):
    """A model weights file cannot be used: missing, not a torch file, the wrong architecture or
    shapes, or it produces non-finite scores."""

    code = "invalid_model"
