"""How a task fails: one error, light to import, so the process an algorithm runs in loads nothing else."""

from __future__ import annotations

from service.errors import ScantideError


class EntryError(ScantideError):
    """Why a task failed: ``code`` as recorded on the task and sent in webhooks, ``message`` for a person."""

    def __init__(self, code: str, message: str, log_tail: str = "") -> None:
        super().__init__(message, code=code)
        self.log_tail = log_tail  # the algorithm's last output, when it ran as a process of its own
