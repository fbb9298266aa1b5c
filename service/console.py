"""Terminal display helpers for the CLI (rich)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from service.domain import JobState, TaskInfo


def follow(task_ids: list[str], get_task: Callable[[str], TaskInfo], console: Console | None = None,
           poll_s: float = 0.5, timeout_s: float | None = None) -> list[TaskInfo]:
    """Show a progress bar per task until every task has ended (or ``timeout_s`` passed).

    Returns the tasks as last seen.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.fields[state]:<10}"),
                  TimeElapsedColumn(), console=console) as bar:
        rows = {tid: bar.add_task(tid[:8], total=1.0, state="queued") for tid in task_ids}
        while True:
            tasks = [get_task(tid) for tid in task_ids]
            for t in tasks:
                done = 1.0 if t.state is JobState.completed else (t.progress or 0.0)
                bar.update(rows[t.task_id], completed=done, description=t.scan_id, state=t.state.value)
            if all(t.state.terminal for t in tasks) or (deadline is not None and time.monotonic() > deadline):
                return tasks
            time.sleep(poll_s)
