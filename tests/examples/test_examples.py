"""The example algorithms under examples/algorithms/ on videos written by OpenCV at test time:
frame_stats run the way its descriptor says (an argv, ``python`` meaning this interpreter),
motion_peaks imported from its folder the way the python runner does, and both descriptors read
as plain YAML and as registration reads them (service.catalog)."""

from __future__ import annotations

import ast
import csv
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.catalog import AlgorithmDescriptor, command_argv, load_descriptor
from service.errors import InvalidParams
from service.synthetic import write_scan_video

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "algorithms"
FRAME_STATS = EXAMPLES / "frame_stats"
MOTION_PEAKS = EXAMPLES / "motion_peaks"
DESCRIPTOR = "scantide-algorithm.yaml"
# Small and short so each run takes a fraction of a second; 120 frames at 24 fps is 5 seconds.
VIDEO = {"frames": 120, "fps": 24.0, "size": (160, 120)}


def descriptor(folder: Path) -> dict[str, Any]:
    """The descriptor as plain data."""
    return yaml.safe_load((folder / DESCRIPTOR).read_text())


def checked(folder: Path) -> AlgorithmDescriptor:
    """The descriptor as registration reads it."""
    return load_descriptor((folder / DESCRIPTOR).read_text(), DESCRIPTOR)


def params(folder: Path, **given: Any) -> dict[str, Any]:
    """Task params as enqueue passes them on: checked against the descriptor, defaults applied."""
    return checked(folder).validate_params(given)


def scan_inputs(tmp_path: Path, **video: Any) -> tuple[Path, dict[str, Any]]:
    """An inputs directory holding a synthetic scan as scan.mp4, and what write_scan_video wrote."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    return inputs, write_scan_video(inputs / "scan.mp4", **{**VIDEO, **video})


def run_frame_stats(inputs: Path, outputs: Path, **given: Any) -> subprocess.CompletedProcess[str]:
    """Run frame_stats by its descriptor's command as the command runner does: placeholders filled
    in by the catalog, ``python`` as the first word meaning this interpreter."""
    outputs.mkdir(exist_ok=True)
    argv = command_argv(checked(FRAME_STATS), here=str(FRAME_STATS), inputs=str(inputs), outputs=str(outputs),
                        params=params(FRAME_STATS, **given))
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)


def progress_lines(stdout: str) -> list[float]:
    return [float(line.split()[1]) for line in stdout.splitlines() if line.startswith("scantide:progress ")]


# -- frame_stats: a command algorithm -----------------------------------------------------------
def test_frame_stats_describes_the_scan(tmp_path: Path) -> None:
    inputs, written = scan_inputs(tmp_path)
    outputs = tmp_path / "outputs"
    done = run_frame_stats(inputs, outputs)
    assert done.returncode == 0, done.stderr

    result = json.loads((outputs / "result.json").read_text())
    assert result["frame_count"] == written["frames"]
    assert result["fps"] == pytest.approx(written["fps"])
    assert (result["width"], result["height"]) == (written["width"], written["height"])
    assert result["duration_s"] == pytest.approx(written["frames"] / written["fps"])
    per_second = result["brightness_per_second"]
    assert len(per_second) == math.ceil(result["duration_s"])
    assert all(0 <= m <= 255 and m == round(m, 2) for m in per_second)
    assert min(per_second) <= result["mean_brightness"] <= max(per_second)
    assert result["dark_seconds"] == sum(1 for m in per_second if m < result["min_brightness"])
    # The exposure stretch (frames 90..109, over-exposed first) lifts second 3 (frames 72..95).
    assert per_second[3] > per_second[0] + 10

    with open(outputs / "brightness.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["second", "mean_brightness"]
    assert [(int(s), float(m)) for s, m in rows[1:]] == list(enumerate(per_second))

    fractions = progress_lines(done.stdout)
    assert len(fractions) >= 5 and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_frame_stats_counts_every_second_dark_below_255(tmp_path: Path) -> None:
    inputs, _ = scan_inputs(tmp_path)
    done = run_frame_stats(inputs, tmp_path / "outputs", min_brightness=255)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "outputs" / "result.json").read_text())
    assert result["dark_seconds"] == len(result["brightness_per_second"]) == 5


@pytest.mark.parametrize("scan", ["text", "none"], ids=["text_named_scan_mp4", "empty_inputs"])
def test_frame_stats_refuses_invalid_input_with_exit_2(scan: str, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if scan == "text":
        (inputs / "scan.mp4").write_text("this is not a video\n")
    outputs = tmp_path / "outputs"
    done = run_frame_stats(inputs, outputs)
    assert done.returncode == 2
    # One line that names the problem: it becomes the failure's log_tail.
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("frame_stats: ")
    assert not list(outputs.iterdir())


# -- motion_peaks: a python algorithm -----------------------------------------------------------
@pytest.fixture
def motion_peaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The module imported as the python runner does: its folder first on sys.path."""
    monkeypatch.syspath_prepend(str(MOTION_PEAKS))
    sys.modules.pop("motion_peaks", None)
    import motion_peaks

    yield motion_peaks
    sys.modules.pop("motion_peaks", None)


def test_motion_peaks_finds_the_exposure_jumps(motion_peaks: Any, tmp_path: Path) -> None:
    inputs, written = scan_inputs(tmp_path)
    fractions: list[float] = []
    summary = motion_peaks.run(inputs / "scan.mp4", params(MOTION_PEAKS), tmp_path / "out",
                               progress=fractions.append)

    assert summary["frame_count"] == written["frames"]
    # The scene pans gently; the exposure stretch [90, 110) jumps in at 90, from over- to
    # under-exposed at 100 (the largest jump) and back at 110: those are the peaks.
    assert [p["frame"] for p in summary["peaks"]] == [100, 90, 110]
    assert [p["time_s"] for p in summary["peaks"]] == pytest.approx([100 / 24, 90 / 24, 110 / 24], abs=1e-3)
    assert summary["max_motion"] == summary["peaks"][0]["motion"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 5

    with open(tmp_path / "out" / "motion.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == written["frames"]
    assert float(rows[100]["motion"]) == pytest.approx(summary["peaks"][0]["motion"], abs=1e-3)
    assert json.loads(json.dumps(summary)) == summary, "the result must be plain JSON"


def test_motion_peaks_top_and_gap_bound_the_peaks(motion_peaks: Any, tmp_path: Path) -> None:
    inputs, _ = scan_inputs(tmp_path)
    one = motion_peaks.run(inputs / "scan.mp4", params(MOTION_PEAKS, top=1), tmp_path / "one")
    assert [p["frame"] for p in one["peaks"]] == [100]
    # A one-second gap merges the three jumps (10 frames apart) into the strongest.
    merged = motion_peaks.run(inputs / "scan.mp4", params(MOTION_PEAKS, min_gap_s=1.0), tmp_path / "gap")
    assert [p["frame"] for p in merged["peaks"]] == [100]


@pytest.mark.parametrize("content", [b"this is not a video\n", b""], ids=["text", "empty"])
def test_motion_peaks_raises_value_error_on_garbage(content: bytes, motion_peaks: Any, tmp_path: Path) -> None:
    scan = tmp_path / "scan.mp4"
    scan.write_bytes(content)
    with pytest.raises(ValueError):
        motion_peaks.run(scan, params(MOTION_PEAKS), tmp_path / "out")
    with pytest.raises(ValueError):
        motion_peaks.run(tmp_path / "missing.mp4", params(MOTION_PEAKS), tmp_path / "out")


# -- the descriptors and the code they name ------------------------------------------------------
@pytest.mark.parametrize("folder", [FRAME_STATS, MOTION_PEAKS], ids=lambda p: p.name)
def test_descriptor_loads(folder: Path) -> None:
    d = descriptor(folder)
    assert d["name"] == folder.name
    assert isinstance(d["version"], str) and d["version"]
    loaded = checked(folder)  # raises InvalidDescriptor, naming each field, if registration would refuse it
    assert (loaded.name, loaded.version, loaded.queue) == (d["name"], d["version"], "cpu")
    assert loaded.inputs.accepts("scan.mp4") and not loaded.inputs.accepts("scan.txt")


def test_enqueue_refuses_params_the_descriptor_refuses() -> None:
    """The refusal docs/algorithms.md shows, word for word, and an unknown parameter."""
    with pytest.raises(InvalidParams) as out_of_bounds:
        params(FRAME_STATS, min_brightness=300)
    assert (out_of_bounds.value.code, str(out_of_bounds.value)) == (
        "invalid_params", "params.min_brightness: 300 is greater than the maximum of 255")
    with pytest.raises(InvalidParams, match=r"^params\.treshold: unknown parameter"):
        params(MOTION_PEAKS, treshold=5)


def test_python_runner_target_exists() -> None:
    module, _, function = descriptor(MOTION_PEAKS)["python"].partition(":")
    source = (MOTION_PEAKS / f"{module}.py").read_text()
    functions = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    assert function in functions


@pytest.mark.parametrize("script", [FRAME_STATS / "frame_stats.py", MOTION_PEAKS / "motion_peaks.py"],
                         ids=lambda p: p.stem)
def test_examples_import_nothing_of_scantide(script: Path) -> None:
    """An algorithm runs wherever the worker runs it; it may need numpy and cv2, not our packages."""
    allowed = {"numpy", "cv2"} | set(sys.stdlib_module_names)
    imported = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= allowed, imported - allowed
