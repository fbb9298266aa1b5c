"""frame_stats: brightness statistics per second of a scan video.

A scantide ``command`` algorithm, and a plain program: ``python frame_stats.py [--min-brightness N]
INPUTS OUTPUTS`` reads the one ``scan.*`` in INPUTS and writes ``result.json`` and
``brightness.csv`` into OUTPUTS. It needs numpy and OpenCV and nothing of scantide's.

Exit status, as the run contract reads it: 0 done; 2 invalid input (no scan, or a file OpenCV
cannot read a frame from), which scantide never retries; anything else is a crash.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

# Keep FFmpeg's own complaints about a broken file out of the log: the one line this script
# writes on stderr is what the task's log_tail should show. Set before cv2 is imported.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402 - after the log settings above
import numpy as np  # noqa: E402

EXIT_INVALID_INPUT = 2
# Progress is reported at every tenth of the expected frame count.
_PROGRESS_STEPS = 10


class InvalidInput(Exception):
    """The input is missing or is not a readable video; the message is the one line for stderr."""


def find_scan(inputs: Path) -> Path:
    """The single ``scan.<ext>`` file in ``inputs``; InvalidInput when there is none or several."""
    if not inputs.is_dir():
        raise InvalidInput(f"inputs directory {inputs} does not exist")
    scans = sorted(p for p in inputs.glob("scan.*") if p.is_file())
    if not scans:
        raise InvalidInput(f"no scan.* file in {inputs}")
    if len(scans) > 1:
        raise InvalidInput(f"more than one scan.* file in {inputs}: {', '.join(p.name for p in scans)}")
    return scans[0]


def progress(fraction: float) -> None:
    """One ``scantide:progress`` line (fraction 0..1), flushed so the worker sees it now."""
    print(f"scantide:progress {min(max(fraction, 0.0), 1.0):.2f}", flush=True)


def frame_means(scan: Path) -> tuple[np.ndarray, float, int, int]:
    """Mean grey level (0..255) of every frame, the frame rate (frames per second), width, height.

    Raises InvalidInput when OpenCV cannot open the file, it holds no frame, or its frame rate
    is unusable (seconds cannot be told apart without one).
    """
    capture = cv2.VideoCapture(str(scan))
    try:
        if not capture.isOpened():
            raise InvalidInput(f"{scan.name} is not a readable video")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        # The container's frame count is only an estimate (and 0 for some streams): used for
        # progress, never for the result.
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        next_report = 1
        means: list[float] = []
        width = height = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if not means:
                height, width = frame.shape[:2]
            grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            means.append(float(cv2.mean(grey)[0]))
            while (expected > 0 and next_report < _PROGRESS_STEPS
                   and len(means) >= expected * next_report / _PROGRESS_STEPS):
                progress(next_report / _PROGRESS_STEPS)
                next_report += 1
    finally:
        capture.release()
    if not means:
        raise InvalidInput(f"{scan.name} is not a readable video (no frames)")
    if not math.isfinite(fps) or fps <= 0:
        raise InvalidInput(f"{scan.name} has no usable frame rate (fps={fps})")
    return np.asarray(means, dtype=np.float64), fps, int(width), int(height)


def summarise(means: np.ndarray, fps: float, width: int, height: int, min_brightness: float) -> dict:
    """The result: per-second means are over the frames whose index / fps falls in that second."""
    seconds = (np.arange(means.size) / fps).astype(np.int64)
    sums = np.bincount(seconds, weights=means)
    counts = np.bincount(seconds)
    # A variable-rate stream may leave a second without frames; it has no mean and is skipped.
    per_second = [round(float(s / c), 2) for s, c in zip(sums, counts) if c > 0]
    return {
        "frame_count": int(means.size),
        "fps": round(fps, 3),
        "duration_s": round(means.size / fps, 3),
        "width": width,
        "height": height,
        "mean_brightness": round(float(means.mean()), 2),
        "brightness_per_second": per_second,
        "min_brightness": min_brightness,
        "dark_seconds": sum(1 for m in per_second if m < min_brightness),
    }


def write_outputs(result: dict, outputs: Path) -> None:
    outputs.mkdir(parents=True, exist_ok=True)
    with open(outputs / "brightness.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["second", "mean_brightness"])
        writer.writerows(enumerate(result["brightness_per_second"]))
    (outputs / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-brightness", type=float, default=10.0,
                        help="seconds whose mean grey level (0..255) is below this count as dark (default 10)")
    parser.add_argument("inputs", type=Path, help="directory holding the scan as scan.<ext>")
    parser.add_argument("outputs", type=Path, help="directory for result.json and brightness.csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scan = find_scan(args.inputs)
        means, fps, width, height = frame_means(scan)
    except InvalidInput as exc:
        print(f"frame_stats: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    result = summarise(means, fps, width, height, args.min_brightness)
    write_outputs(result, args.outputs)
    progress(1.0)
    print(f"frame_stats: {result['frame_count']} frames, {result['duration_s']} s, "
          f"mean brightness {result['mean_brightness']}, {result['dark_seconds']} dark seconds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
