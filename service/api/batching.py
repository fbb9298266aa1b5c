"""Group commit for the API: concurrent submissions share one transaction on one writer thread.

Each request still gets its answer only after the commit that holds its task, so a 202 keeps
meaning "this task survives a crash"; but N waiting requests cost one commit, and the event loop
never blocks on the store or hops a thread per request. Each batch goes through
``service.enqueue.submit_items``, which pins the promoted model version first.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from service.backends.base import TaskBackend
from service.domain import Submission, SubmitItem
from service.enqueue import submit_items


class SubmitBatcher:
    def __init__(self, backend: TaskBackend, max_batch: int = 256) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self._pending: list[tuple[SubmitItem, asyncio.Future]] = []
        self._flushing = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")

    async def submit(self, item: SubmitItem) -> Submission:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((item, future))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                try:
                    outcomes = await loop.run_in_executor(self._writer, submit_items, self.backend,
                                                          [item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # the client went away
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flushing = False

    def close(self) -> None:
        self._writer.shutdown(wait=True)
