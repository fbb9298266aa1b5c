"""The conductor's Prometheus series. Its outcome events are counted with the monitor's
(``scantide_events_total{type="pipeline.completed"}``), as it puts them in the same outbox."""

from __future__ import annotations

from prometheus_client import Counter

PIPELINE_RUNS = Counter("scantide_pipeline_runs", "Pipeline runs that ended, by pipeline and outcome (completed, "
                        "failed).", ["pipeline", "state"])
STEPS_SUBMITTED = Counter("scantide_pipeline_steps_submitted", "Pipeline step tasks submitted, by the compute "
                          "target they run on.", ["compute"])
