"""The conductor, killed with SIGKILL by itself at one chosen point of a run, for crash tests.

``python -m tests.support.crashing_conductor POINT`` runs ``scantide conductor``'s loop over the
settings in the environment and kills itself (``kill -9``: no cleanup, no flush) the first time it
reaches POINT:

- ``mid-submit``: a step's task was just created in the task store, the run not yet saved;
- ``step-completed``: a run was just saved with a step newly completed;
- ``mid-webhook``: a run's outcome event was just put in the outbox, the run not yet saved as ended.
"""

from __future__ import annotations

import os
import signal
import sys

from conductor import conductor as module
from conductor.daemon import ConductorDaemon
from service.backends import open_backend
from service.pipelines.store import PipelineStore
from service.settings import load_settings


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(point: str) -> int:
    settings = load_settings()
    daemon = ConductorDaemon(open_backend(settings), settings)
    if point == "mid-submit":
        real_submit = module.submit_items

        def submit_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            real_submit(*args, **kwargs)
            die()

        module.submit_items = submit_then_die
    elif point == "step-completed":
        real_save = PipelineStore.save_run

        def save_then_die(self, run):  # noqa: ANN001, ANN202
            before = self.get_run(run.run_id)
            saved = real_save(self, run)
            done = {n for n, s in run.steps.items() if s.state == "completed"}
            if saved is not None and done - {n for n, s in before.steps.items() if s.state == "completed"}:
                die()
            return saved

        PipelineStore.save_run = save_then_die
    elif point == "mid-webhook":
        outbox = daemon.conductor.outbox
        real_append = outbox.append

        def append_then_die(events, **kwargs):  # noqa: ANN001, ANN003, ANN202
            added = real_append(events, **kwargs)
            if events:
                die()
            return added

        outbox.append = append_then_die
    else:
        raise SystemExit(f"unknown point {point!r}")
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
