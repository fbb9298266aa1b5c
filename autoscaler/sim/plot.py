"""The PNG: tasks queued and instances billed over time, one line per policy.

matplotlib is imported here only, when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path

from autoscaler.sim.world import RunResult


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
