"""The PNGs: tasks queued and instances billed over time, one line per policy; and a sweep's
cost/p95 frontier.

matplotlib is imported here only, when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autoscaler.sim.world import RunResult

if TYPE_CHECKING:
    from autoscaler.simulate import Sweep


def plot_runs(runs: list[RunResult], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_q, ax_f) = plt.subplots(2, 1, sharex=True, figsize=(12, 6), constrained_layout=True)
    for run in runs:
        if not run.series:
            continue
        label = run.policy + (" + warm pool" if run.warm_pool else "")
        hours = [t / 3600 for t, _, _ in run.series] + [run.end_s / 3600]
        queued = [q for _, q, _ in run.series]
        fleet = [f for _, _, f in run.series]
        ax_q.step(hours, queued + queued[-1:], where="post", label=label, linewidth=0.9)
        ax_f.step(hours, fleet + fleet[-1:], where="post", label=label, linewidth=0.9)
    ax_q.set_ylabel("tasks queued")
    ax_f.set_ylabel("instances billed")
    ax_f.set_xlabel("hours")
    ax_q.legend(loc="upper right")
    if title:
        ax_q.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(sweep: Sweep, path: Path) -> None:
    """Cost against p95 wait: the default policy at each target (labelled), the baseline's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    xs = [max(p.ours.p95_wait_s, 1.0) for p in sweep.points]  # a log axis has no 0
    ys = [p.ours.cost_usd for p in sweep.points]
    label = "default" + (" + warm pool" if sweep.warm_pool else "")
    ax.plot(xs, ys, marker="o", label=f"{label}, by p95 target")
    for p, x, y in zip(sweep.points, xs, ys):
        ax.annotate(f"{p.label} s" if p.label != "baseline" else "target = ClearML's p95", (x, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot([max(sweep.baseline.p95_wait_s, 1.0)], [sweep.baseline.cost_usd], marker="s", linestyle="",
            color="tab:red", label="clearml")
    ax.set_xscale("log")
    ax.set_xlabel("p95 queue wait, s")
    ax.set_ylabel("GPU cost, $")
    ax.set_title(f"{sweep.trace.name} (seed {sweep.seed}): cost against p95 wait")
    ax.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
