"""train.py in a tiny configuration: it runs end to end and the same seed gives the same weights."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from algorithms.video_summary import validate_model

# One short epoch on a handful of drawn scenes; evaluation on a few pairs and a 6-frame video.
TINY = ["--epochs", "1", "--steps", "2", "--batch", "4", "--scenes", "4", "--eval-pairs", "6",
        "--video-frames", "6", "--threads", "1"]


def _train(out: Path, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "algorithms.video_summary.train", "--out", str(out), "--seed", str(seed), *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_training_is_reproducible(tmp_path: Path) -> None:
    outs = {"a": tmp_path / "a" / "w.pt", "b": tmp_path / "b" / "other-name.pt"}
    # Two processes at once (one thread each) keep the test short.
    procs = {"a": _train(outs["a"], 0), "b": _train(outs["b"], 0)}
    for proc in procs.values():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        assert "held-out pairwise accuracy" in output
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in outs.items()}
    assert digests["a"] == digests["b"]  # same seed: same bytes, whatever the file is called

    report = json.loads(outs["a"].with_suffix(".json").read_text())
    assert report["sha256"] == digests["a"]
    assert report["config"]["seed"] == 0 and report["config"]["epochs"] == 1
    assert report["held_out"]["pairs"] == 6 and 0.0 <= report["held_out"]["accuracy"] <= 1.0
    assert report["opencv_video"]["pairs"] == 6
    assert validate_model(outs["a"])["sha256"] == digests["a"]
