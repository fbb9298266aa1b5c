"""Benchmark: the whole video_summary algorithm against OpenCV decode-only, on the same video.

Writes one test video with OpenCV (service/synthetic.py: a panned textured scene with a blurred
and a badly exposed stretch, mp4v), then alternates, ``--repeats`` times, three passes:

- the anchor, OpenCV decode-only: ``cv2.VideoCapture.read()`` until the end (FFMPEG backend,
  OpenCV's default decoder threading), BGR frames at full resolution, as a plain OpenCV
  program reads a video;
- our decoder alone: PyAV, the decoder threads ``run()`` uses, frames left in YUV and dropped
  (no conversion at all): how much of the run is decoding that no analysis can avoid;
- a full ``run()``: decode thread with the small views made from the YUV planes, metrics, the
  network in batches, keyframes, every output file written.

``ratio`` (the goal's figure) is run fps over the anchor's; ``ratio_vs_own_decoder`` is run
fps over our decoder alone. Alternating makes all three see the same machine load; the best
run of each counts, which filters out moments when other processes took the CPU. Importing
torch and loading the weights happen once per task, not per frame: they are measured apart
(``load_s``, the weights' load into a fresh network) and kept out of the per-frame figures,
after a warm-up run.

    python benchmarks/algorithm.py [--width 640] [--height 480] [--frames 300] [--repeats 5]
                                   [--device auto] [--batch-size 32]

Prints a table, a ratio line and, last, one JSON object:
{"fps", "decode_fps", "ratio", "own_decode_fps", "ratio_vs_own_decoder", "device", "frames",
"width", "height", "repeats", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import cv2

from algorithms.video_summary import DEFAULT_WEIGHTS, run
from algorithms.video_summary.decode import decoder_threads
from algorithms.video_summary.scorer import FrameScorer
from service.synthetic import write_scan_video

GOAL_RATIO = 0.8
# The anchor: OpenCV's FFMPEG backend with its default decoder threading (FFmpeg picks its
# thread count from the cores).
DECODER = "OpenCV FFMPEG, default threads"


def decode_only(path: str) -> tuple[int, float]:
    """The anchor: decode every frame to BGR with OpenCV; return (frames, seconds)."""
    started = time.perf_counter()
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    frames = 0
    while True:
        ok, _ = capture.read()
        if not ok:
            break
        frames += 1
    capture.release()
    return frames, time.perf_counter() - started


def own_decode_only(path: str) -> tuple[int, float]:
    """Our decoder alone, as run() opens it, frames left in YUV; return (frames, seconds)."""
    started = time.perf_counter()
    frames = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "AUTO", decoder_threads()
        for _ in container.decode(stream):
            frames += 1
    return frames, time.perf_counter() - started


def whole_algorithm(path: str, params: dict[str, Any], out_dir: Path) -> tuple[int, float, str]:
    """One full run; return (frames, seconds, device)."""
    started = time.perf_counter()
    result = run(path, params, out_dir)
    elapsed = time.perf_counter() - started
    return result.summary["frame_count"], elapsed, result.summary["model"]["device"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each; the best counts")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    params = {"device": args.device, "batch_size": args.batch_size}

    with tempfile.TemporaryDirectory(prefix="scantide-bench-") as folder:
        root = Path(folder)
        blur = (args.frames // 3, args.frames // 3 + args.frames // 10)
        exposure = (2 * args.frames // 3, 2 * args.frames // 3 + args.frames // 10)
        video = write_scan_video(root / "scan.mp4", frames=args.frames, size=(args.width, args.height),
                                 blur=blur, exposure=exposure, seed=1)["path"]
        whole_algorithm(video, params, root / "warm-up")
        started = time.perf_counter()
        FrameScorer(DEFAULT_WEIGHTS, args.device)
        load_s = time.perf_counter() - started
        decode_s, own_s, algorithm_s = [], [], []
        device = "cpu"
        for i in range(args.repeats):
            frames, seconds = decode_only(video)
            decode_s.append(seconds)
            own_frames, seconds = own_decode_only(video)
            own_s.append(seconds)
            counted, seconds, device = whole_algorithm(video, params, root / f"run-{i}")
            algorithm_s.append(seconds)
            if not counted == own_frames == frames:
                print(f"frame counts differ: OpenCV {frames}, PyAV {own_frames}, run {counted}", file=sys.stderr)
                return 1

    decode_fps = args.frames / min(decode_s)
    own_decode_fps = args.frames / min(own_s)
    fps = args.frames / min(algorithm_s)
    ratio = fps / decode_fps
    print(f"video {args.width}x{args.height}, {args.frames} frames (mp4v), best of {args.repeats}, "
          f"device={device}, cores={os.cpu_count()}, batch={args.batch_size}, anchor={DECODER}, "
          f"load={os.getloadavg()[0]:.2f}")
    print(f"{'':28}{'best s':>9}{'median s':>10}{'fps':>9}")
    rows = (("OpenCV decode only (anchor)", decode_s), ("our decoder alone (YUV)", own_s),
            ("video_summary run()", algorithm_s))
    for label, times in rows:
        median = sorted(times)[len(times) // 2]
        print(f"{label:28}{min(times):>9.3f}{median:>10.3f}{args.frames / min(times):>9.0f}")
    verdict = "meets" if ratio >= GOAL_RATIO else "below"
    print(f"ratio run/decode = {ratio:.2f} ({verdict} the goal of >= {GOAL_RATIO} on CPU); "
          f"run/our decoder alone = {fps / own_decode_fps:.2f}; "
          f"loading the weights once per task: {load_s * 1000:.0f} ms")
    print(json.dumps({
        "fps": round(fps, 1), "decode_fps": round(decode_fps, 1), "ratio": round(ratio, 3), "device": device,
        "own_decode_fps": round(own_decode_fps, 1), "ratio_vs_own_decoder": round(fps / own_decode_fps, 3),
        "frames": args.frames, "width": args.width, "height": args.height, "repeats": args.repeats,
        "batch_size": args.batch_size, "cores": os.cpu_count(), "goal_ratio": GOAL_RATIO,
        "load_s": round(load_s, 3), "decoder": DECODER, "loadavg_1m": round(os.getloadavg()[0], 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
