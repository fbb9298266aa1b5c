"""What a run does next, decided from its steps' states alone (pure).

Rules: a step runs when every step it needs has ended completed or skipped; its ``when``, if any,
is then evaluated over the upstream results and the scan, and a false one skips it. A failed step
fails the run: nothing new starts, every step still pending is skipped, and the run ends (failed,
with the error of the first failed step in step order) once the steps already queued or running
have ended. A run whose steps have all ended without a failure is completed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.catalog.pipeline import PipelineDescriptor, step_order
from service.pipelines.store import ENDED, Run


@dataclass
class Plan:
    submit: list[str] = field(default_factory=list)  # steps to submit now, in order
    skip: dict[str, str] = field(default_factory=dict)  # step -> why
    outcome: str | None = None  # "completed" | "failed" when the run has ended
    failed_step: str | None = None


def context(run: Run) -> dict[str, Any]:
    """What a ``when`` reads: ``steps.<name>.{state,result}`` and ``scan.{scan_id,metadata}``."""
    return {"steps": {name: {"state": s.state, "result": s.result} for name, s in run.steps.items()},
            "scan": {"scan_id": run.scan_id, "metadata": run.metadata}}


def plan(pipeline: PipelineDescriptor, run: Run) -> Plan:
    """The next actions for ``run``; applies nothing (the conductor does, then saves the run)."""
    out = Plan()
    states = {name: s.state for name, s in run.steps.items()}
    failed = [name for name in step_order(pipeline) if states[name] == "failed"]
    ctx = context(run)
    for name in step_order(pipeline):
        if states[name] != "pending":
            continue
        step = pipeline.step(name)
        if failed:
            out.skip[name] = f"step {failed[0]} failed"
        elif all(states[n] in ("completed", "skipped") for n in step.needs):
            if step.when is not None and not step.when.evaluate(ctx):
                out.skip[name] = f"when is false: {step.when.text}"
            else:
                out.submit.append(name)
                continue
        else:
            continue
        states[name] = "skipped"  # later steps in this order see it
        ctx["steps"][name]["state"] = "skipped"
    if all(state in ENDED for state in states.values()) and not out.submit:
        out.outcome = "failed" if failed else "completed"
        out.failed_step = failed[0] if failed else None
    return out
