"""Benchmark: the whole video_summary algorithm against OpenCV decode-only, on the same video.

Writes one test video with OpenCV (service/synthetic.py: a panned textured scene with a blurred
and a badly exposed stretch, mp4v), then alternates, ``--repeats`` times, three passes:

- the anchor, OpenCV decode-only: ``cv2.VideoCapture.read()`` until the end (FFMPEG backend,
  OpenCV's default decoder threading), BGR frames at full resolution, as a plain OpenCV
  program reads a video;
- our decoder alone: PyAV, the decoder threads ``run()`` uses, frames left in YUV and dropped
  (no conversion at all): how much of the run is decoding that no analysis can avoid;
- a full ``run()``: decode thread with the small views made from the YUV planes, metrics, the
  network in batches, keyframes, every output file written. ``--analysis`` picks how frames
  are measured (auto: torch on CUDA, OpenCV on the CPU; opencv; torch, on any device) and
  ``--decoder`` the run's video decoder (param ``decoder``: auto, software, hardware = NVDEC).

``ratio`` (the goal's figure) is run fps over the anchor's; ``ratio_vs_own_decoder`` is run
fps over our decoder alone. Alternating makes all three see the same machine load; the best
run of each counts, which filters out moments when other processes took the CPU. Importing
torch and loading the weights happen once per task, not per frame: they are measured apart
(``load_s``, the weights' load into a fresh network) and kept out of the per-frame figures,
after a warm-up run.

    python benchmarks/algorithm.py [--width 640] [--height 480] [--frames 300] [--repeats 5]
                                   [--device auto] [--batch-size 32] [--analysis auto]
                                   [--decoder auto] [--codec mp4v] [--decode-only]

Prints a table, a ratio line and, last, one JSON object:
{"fps", "decode_fps", "ratio", "own_decode_fps", "ratio_vs_own_decoder", "device", "frames",
"width", "height", "repeats", "analysis", "run_decoder", ...} ("analysis" and "run_decoder"
say what the run used, from summary.json's ``processing``; "decoder" names the anchor).

``--codec h264`` re-encodes the test video with libx264 (what scanners write) before measuring.
``--decode-only`` measures decoding alone instead: PyAV's software decoder (frames left in YUV,
as above) against the GPU's decoder through PyAV's hwaccel (frames downloaded as NV12, as
``run()`` gets them; and, for the record, left on the GPU), with the reason when the GPU's
decoder cannot be had; its JSON object has "software_fps", "hardware_fps", "hardware_ratio"
(goal >= HARDWARE_GOAL) and "hardware_reason".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logging

import av
import cv2
from av.codec.hwaccel import HWAccel

from algorithms.video_summary import DEFAULT_WEIGHTS, run
from algorithms.video_summary.decode import decoder_threads
from algorithms.video_summary.hwdecode import decoded_by_hardware, open_container
from algorithms.video_summary.measure import BACKENDS
from algorithms.video_summary.params import DECODERS
from algorithms.video_summary.scorer import FrameScorer
from service.synthetic import write_scan_video

GOAL_RATIO = 0.8
# The GPU's decoder should decode at least this many times as fast as PyAV's software decoder.
HARDWARE_GOAL = 2.0
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


def hardware_decode_only(path: str, keep_on_gpu: bool = False) -> tuple[int, float, str | None]:
    """The GPU's decoder alone, as run() opens it (frames downloaded as NV12), or with the frames
    left on the GPU; return (frames, seconds, None) or (0, 0, why it was not used)."""
    started = time.perf_counter()
    frames = 0
    try:
        if keep_on_gpu:
            container = av.open(path, hwaccel=HWAccel("cuda", allow_software_fallback=True, is_hw_owned=True))
            hardware = container.streams.video[0].codec_context.is_hwaccel
        else:
            container, hardware, refused = open_container(path, "hardware", None)
    except (av.FFmpegError, OSError) as exc:
        return 0, 0.0, f"{type(exc).__name__}: {exc}"
    with container:
        if not hardware:
            return 0, 0.0, refused or "no CUDA decoder for this stream"
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "AUTO", decoder_threads()
        for frame in container.decode(stream):
            if frames == 0 and not keep_on_gpu and not decoded_by_hardware(stream.codec_context, frame):
                return 0, 0.0, f"FFmpeg fell back to software ({frame.format.name} frames)"
            frames += 1
    return frames, time.perf_counter() - started, None


def whole_algorithm(
    path: str, params: dict[str, Any], out_dir: Path, analysis: str = "auto"
) -> tuple[int, float, dict[str, str]]:
    """One full run; return (frames, seconds, {"device", "analysis", "decoder"} as used)."""
    started = time.perf_counter()
    result = run(path, params, out_dir, analysis_backend=analysis)
    elapsed = time.perf_counter() - started
    summary = result.summary
    return summary["frame_count"], elapsed, {"device": summary["model"]["device"], **summary["processing"]}


def test_video(root: Path, args: argparse.Namespace) -> str:
    """The benchmark's video (mp4v from service/synthetic.py), re-encoded to H.264 if asked."""
    blur = (args.frames // 3, args.frames // 3 + args.frames // 10)
    exposure = (2 * args.frames // 3, 2 * args.frames // 3 + args.frames // 10)
    path = write_scan_video(root / "scan.mp4", frames=args.frames, size=(args.width, args.height),
                            blur=blur, exposure=exposure, seed=1)["path"]
    if args.codec == "mp4v":
        return path
    h264 = str(root / "scan-h264.mp4")
    with av.open(path) as source, av.open(h264, "w") as target:
        incoming = source.streams.video[0]
        rate = incoming.average_rate or Fraction(24)
        stream = target.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = incoming.width, incoming.height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        for number, frame in enumerate(source.decode(incoming)):
            frame.pts, frame.time_base = number, 1 / rate  # numbered afresh in the encoder's time base
            target.mux(stream.encode(frame))
        target.mux(stream.encode())
    return h264


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each; the best counts")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--analysis", default="auto", choices=BACKENDS, help="how run() measures frames")
    parser.add_argument("--decoder", default="auto", choices=DECODERS, help="run()'s video decoder")
    parser.add_argument("--codec", default="mp4v", choices=("mp4v", "h264"), help="the test video's codec")
    parser.add_argument("--decode-only", action="store_true", help="PyAV software against hardware decoding")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="scantide-bench-") as folder:
        video = test_video(Path(folder), args)
        if args.decode_only:
            return compare_decoders(video, args)
        return compare_run(video, Path(folder), args)


def compare_run(video: str, root: Path, args: argparse.Namespace) -> int:
    """The anchor, our decoder alone and run(), alternated; the table, ratio and JSON lines."""
    params = {"device": args.device, "batch_size": args.batch_size, "decoder": args.decoder}
    whole_algorithm(video, params, root / "warm-up", args.analysis)
    started = time.perf_counter()
    FrameScorer(DEFAULT_WEIGHTS, args.device)
    load_s = time.perf_counter() - started
    decode_s, own_s, algorithm_s = [], [], []
    used = {"device": "cpu", "analysis": "", "decoder": ""}
    for i in range(args.repeats):
        frames, seconds = decode_only(video)
        decode_s.append(seconds)
        own_frames, seconds = own_decode_only(video)
        own_s.append(seconds)
        counted, seconds, used = whole_algorithm(video, params, root / f"run-{i}", args.analysis)
        algorithm_s.append(seconds)
        if not counted == own_frames == frames:
            print(f"frame counts differ: OpenCV {frames}, PyAV {own_frames}, run {counted}", file=sys.stderr)
            return 1

    decode_fps = args.frames / min(decode_s)
    own_decode_fps = args.frames / min(own_s)
    fps = args.frames / min(algorithm_s)
    ratio = fps / decode_fps
    print(f"video {args.width}x{args.height}, {args.frames} frames ({args.codec}), best of {args.repeats}, "
          f"device={used['device']}, analysis={used['analysis']}, run decoder={used['decoder']}, "
          f"cores={os.cpu_count()}, batch={args.batch_size}, anchor={DECODER}, load={os.getloadavg()[0]:.2f}")
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
        "fps": round(fps, 1), "decode_fps": round(decode_fps, 1), "ratio": round(ratio, 3),
        "device": used["device"], "analysis": used["analysis"], "run_decoder": used["decoder"],
        "analysis_requested": args.analysis, "run_decoder_requested": args.decoder, "codec": args.codec,
        "own_decode_fps": round(own_decode_fps, 1), "ratio_vs_own_decoder": round(fps / own_decode_fps, 3),
        "frames": args.frames, "width": args.width, "height": args.height, "repeats": args.repeats,
        "batch_size": args.batch_size, "cores": os.cpu_count(), "goal_ratio": GOAL_RATIO,
        "load_s": round(load_s, 3), "decoder": DECODER, "loadavg_1m": round(os.getloadavg()[0], 2),
    }))
    return 0


def compare_decoders(video: str, args: argparse.Namespace) -> int:
    """PyAV software decoding against the GPU's decoder, alternated; a table and a JSON line."""
    software_s: list[float] = []
    hardware_s: list[float] = []
    on_gpu_s: list[float] = []
    reason = on_gpu_reason = None
    for _ in range(args.repeats):
        frames, seconds = own_decode_only(video)
        software_s.append(seconds)
        decoded, seconds, reason = hardware_decode_only(video)
        if reason is None:
            hardware_s.append(seconds)
            if decoded != frames:
                print(f"frame counts differ: software {frames}, hardware {decoded}", file=sys.stderr)
                return 1
        decoded, seconds, on_gpu_reason = hardware_decode_only(video, keep_on_gpu=True)
        if on_gpu_reason is None:
            on_gpu_s.append(seconds)

    def fps(times: list[float]) -> float | None:
        return round(args.frames / min(times), 1) if times else None

    software_fps, hardware_fps, on_gpu_fps = fps(software_s), fps(hardware_s), fps(on_gpu_s)
    print(f"decoding {args.width}x{args.height}, {args.frames} frames ({args.codec}), best of {args.repeats}, "
          f"cores={os.cpu_count()}, decoder threads={decoder_threads()}")
    for label, value, why in (("PyAV software (YUV)", software_fps, None),
                              ("PyAV hwaccel cuda (NV12 in RAM)", hardware_fps, reason),
                              ("PyAV hwaccel cuda (on GPU)", on_gpu_fps, on_gpu_reason)):
        print(f"{label:34}{value if value is not None else 'n/a':>10} fps" + (f"  ({why})" if why else ""))
    ratio = round(hardware_fps / software_fps, 3) if hardware_fps and software_fps else None
    if ratio is not None:
        verdict = "meets" if ratio >= HARDWARE_GOAL else "below"
        print(f"hardware/software = {ratio:.2f} ({verdict} the goal of >= {HARDWARE_GOAL})")
    print(json.dumps({
        "software_fps": software_fps, "hardware_fps": hardware_fps, "hardware_on_gpu_fps": on_gpu_fps,
        "hardware_ratio": ratio, "hardware_goal": HARDWARE_GOAL, "hardware_reason": reason,
        "codec": args.codec, "frames": args.frames, "width": args.width, "height": args.height,
        "repeats": args.repeats, "cores": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
