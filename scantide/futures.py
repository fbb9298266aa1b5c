"""The machinery behind ``Client.map`` and ``Knot.map``: futures resolved by one poller thread.

Each client has at most one ``Poller``. Its daemon thread runs only while some future is pending:
every round (every ``poll_s`` seconds) it reads each pending task once (``GET /v1/tasks/{id}``)
and resolves the futures of tasks that ended. It exits when nothing is left and ``track`` starts
it again; ``close`` stops it and fails what is still pending, since nothing would resolve it.

``TaskFuture.cancel`` asks the server first: only a task still queued can be stopped, and only
then is the future cancelled (standard ``Future`` semantics: a running one answers False).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

from scantide.client import TERMINAL_STATES
from scantide.errors import ScantideError, TaskFailed, Unavailable

if TYPE_CHECKING:
    from scantide.client import Client

logger = logging.getLogger(__name__)

Decode = Callable[[dict[str, Any]], Any]


class TaskFuture(Future):
    """The future of one server task; ``task_id`` names it."""

    def __init__(self, client: Client, task_id: str, decode: Decode) -> None:
        super().__init__()
        self.task_id = task_id
        self._client = client
        self._decode = decode
        # Held across "ask the server, then cancel the future" so the poller cannot resolve the
        # future in between (it would see the task stopped and raise TaskFailed instead).
        # Re-entrant: done-callbacks run under it and may call cancel() themselves.
        self._resolving = threading.RLock()

    def cancel(self) -> bool:
        with self._resolving:
            if self.done():
                return self.cancelled()
            try:
                stopped = self._client.cancel(self.task_id)
            except ScantideError as exc:  # Future.cancel never raises: "could not cancel" is False
                logger.warning("cancel_failed task_id=%s code=%s message=%s", self.task_id, exc.code, exc.message)
                return False
            return super().cancel() if stopped else False

    def _resolve(self, data: dict[str, Any]) -> None:
        """Settle the future from the ended task's body."""
        with self._resolving:
            if self.done():
                return
            try:
                if data.get("state") == "completed":
                    outcome: Any = self._decode(data)
                else:
                    outcome = TaskFailed.from_task(data)
            # A result that cannot be decoded (a missing module for an unpickled value) belongs
            # to this future, not to the poller: it must not stop the others from resolving.
            except Exception as exc:  # noqa: BLE001
                outcome = exc
            self._settle(outcome)

    def _fail(self, exc: BaseException) -> None:
        with self._resolving:
            if not self.done():
                self._settle(exc)

    def _settle(self, outcome: Any) -> None:
        try:
            if isinstance(outcome, BaseException):
                self.set_exception(outcome)
            else:
                self.set_result(outcome)
        except InvalidStateError:  # cancelled by a caller that bypassed our lock (Future internals)
            pass


class Poller:
    """Polls the client's pending tasks in one daemon thread; see the module docstring."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._pending: list[TaskFuture] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

    def track(self, task_id: str, decode: Decode) -> TaskFuture:
        future = TaskFuture(self._client, task_id, decode)
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            self._pending.append(future)
            # The thread clears _thread under this lock as it exits, so a future added after it
            # looked for work always finds either a live thread or none.
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scantide-poller", daemon=True)
                self._thread.start()
        return future

    def close(self) -> None:
        """Stop the thread; futures still pending fail with ``Unavailable`` (code ``client_closed``)."""
        with self._lock:
            self._closed = True
            thread, pending, self._pending = self._thread, self._pending, []
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(self._client.poll_s * 2, 5.0))
        for future in pending:
            future._fail(Unavailable(f"the client was closed before task {future.task_id} ended",
                                     code="client_closed", status=None))

    def _run(self) -> None:
        while True:
            with self._lock:
                self._pending = [f for f in self._pending if not f.done()]
                if self._closed or not self._pending:
                    self._thread = None
                    return
                round_ = list(self._pending)
            try:
                self._poll(round_)
            # The loop's edge: an unexpected error (a bug, or the HTTP pool closed under us) must
            # not end the thread silently with futures that nothing would ever resolve.
            except Exception as exc:  # noqa: BLE001
                if not self._closed:
                    logger.exception("poll_round_failed futures=%d", len(round_))
                    for future in round_:
                        future._fail(exc)
            self._wake.wait(self._client.poll_s)

    def _poll(self, futures: list[TaskFuture]) -> None:
        """One round: each distinct task once; stops early when the server is unreachable."""
        by_task: dict[str, list[TaskFuture]] = {}
        for future in futures:
            by_task.setdefault(future.task_id, []).append(future)
        for task_id, waiting in by_task.items():
            if self._closed:
                return
            try:
                data = self._client.task(task_id).data
            except Unavailable as exc:
                # The client already retried; the tasks go on running on the server, so keep the
                # futures and try again next round rather than fail work that may well succeed.
                logger.warning("poll_unavailable task_id=%s code=%s message=%s", task_id, exc.code, exc.message)
                return
            except ScantideError as exc:  # not found, not allowed: asking again will not help
                for future in waiting:
                    future._fail(exc)
                continue
            if data.get("state") in TERMINAL_STATES:
                for future in waiting:
                    future._resolve(data)
