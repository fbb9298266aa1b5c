"""Train the frame network on procedurally drawn scans and write the weights and a report.

    python -m algorithms.video_summary.train --out algorithms/video_summary/weights/frame_quality_v2.pt \
        [--seed 0] [--epochs 6]

Data (synth.py): a pool of drawn scenes; each training sample is a 320x240 view of one (random
crop and flip), a second view shifted by up to 16 pixels with slightly different brightness
(what a neighbouring video frame looks like), and a degraded copy of the first view (blur,
motion blur, noise, over- or under-exposure, or blur plus noise); each view is converted to
I420 planes (picture.i420_planes), the form run() gets a video frame in. Losses:

- pairwise ranking (logistic): the clean view's logit above its degraded copy's;
- binary cross-entropy anchoring the scale: clean views towards 1, degraded towards 0, so
  ``min_quality`` means something on its own;
- NT-Xent (temperature TAU) between the two clean views, the other samples of the batch being
  negatives: neighbouring frames embed together, different parts of a mouth apart.

Optionally (``--compressed-share``) images pass through JPEG after any damage. Evaluation: pairwise accuracy (clean scored above its degraded copy) on scenes
drawn with a different seed, and on two mp4 files written with OpenCV and read back, one clean,
one with each frame degraded once before encoding (codec artefacts on top of the damage). Everything is seeded and runs with a fixed number of
threads and deterministic algorithms, so the same seed gives the same weights file on the same
machine and torch build. The report is written as JSON next to the weights (same name, .json).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from .decode import read_views
from .model import ARCHITECTURE, FrameQualityNet, file_sha256, model_input
from .picture import i420_planes
from .synth import DEGRADATIONS, compress, degrade, render_scene

logger = logging.getLogger(__name__)

VIEW = (320, 240)  # training view (width, height): the default analysis width
_MARGIN = 32  # scenes are drawn this much larger than a view, for crops and shifts
_SHIFT = 16  # largest offset (pixels) between the two clean views of a sample
TAU = 0.1  # NT-Xent temperature
_BCE_WEIGHT = 0.5
_EVAL_SEED_OFFSET = 1_000_003  # held-out data never shares a generator state with training


@dataclass(frozen=True)
class Config:
    """seed: every random choice. epochs x steps: optimiser steps of ``batch`` samples.
    scenes: drawn scenes in the training pool. eval_pairs: held-out pairs. video_frames: frames
    of the OpenCV-written evaluation video (0 skips it). threads: torch intra-op threads.
    compressed_share: share of training images passed through JPEG after any damage. Off by
    default: with half the images compressed, the network grew less sure of blur on textures
    whose fine grain a codec also removes (the project's demo scans), and ranked worse there."""

    seed: int = 0
    epochs: int = 6
    steps: int = 80
    batch: int = 48
    scenes: int = 600
    eval_pairs: int = 600
    video_frames: int = 240
    threads: int = 2
    lr: float = 3e-3
    compressed_share: float = 0.0


def _views(rng: np.random.Generator, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width, height = VIEW
    if rng.random() < 0.5:
        scene = scene[:, ::-1]
    x = int(rng.integers(_SHIFT, _MARGIN - _SHIFT + 1))
    y = int(rng.integers(_SHIFT, _MARGIN - _SHIFT + 1))
    first = np.ascontiguousarray(scene[y : y + height, x : x + width])
    dx, dy = (int(v) for v in rng.integers(-_SHIFT, _SHIFT + 1, 2))
    second = scene[y + dy : y + dy + height, x + dx : x + dx + width].astype(np.float32)
    second = np.clip(second * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)
    return first, second


def _batch(
    rng: np.random.Generator, scenes: list[np.ndarray], size: int, compressed_share: float
) -> tuple[np.ndarray, ...]:
    clean, shifted, damaged = [], [], []
    for _ in range(size):
        first, second = _views(rng, scenes[int(rng.integers(len(scenes)))])
        views = [first, second, degrade(rng, first)[0]]
        if compressed_share > 0:  # no draws otherwise: the default's random stream stays as it was
            views = [compress(rng, v) if rng.random() < compressed_share else v for v in views]
        clean.append(model_input(i420_planes(views[0])))
        shifted.append(model_input(i420_planes(views[1])))
        damaged.append(model_input(i420_planes(views[2])))
    return np.stack(clean), np.stack(shifted), np.stack(damaged)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """N x H x W x C uint8 -> N x C x H x W float in [0, 1] (channels-last memory)."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)


def _draw_scenes(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    return [render_scene(rng, VIEW[0] + _MARGIN, VIEW[1] + _MARGIN) for _ in range(count)]


def train(config: Config) -> FrameQualityNet:
    """Train a FrameQualityNet from scratch as ``config`` says; returned in eval mode."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scenes = _draw_scenes(rng, config.scenes)
    network = FrameQualityNet()
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=1e-4)
    total = max(1, config.epochs * config.steps)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total)
    labels = torch.arange(config.batch)
    network.train()
    for epoch in range(config.epochs):
        sums = np.zeros(3)
        for _ in range(config.steps):
            batch = _batch(rng, scenes, config.batch, config.compressed_share)
            clean, shifted, damaged = (to_tensor(b) for b in batch)
            logits, embedding = network(torch.cat([clean, shifted, damaged]))
            l_clean, l_shifted, l_damaged = logits.split(config.batch)
            e_clean, e_shifted, _ = embedding.split(config.batch)
            rank = F.softplus(l_damaged - l_clean).mean()
            anchor = F.binary_cross_entropy_with_logits(
                torch.cat([l_clean, l_shifted, l_damaged]),
                torch.cat([torch.ones(2 * config.batch), torch.zeros(config.batch)]),
            )
            similarity = e_clean @ e_shifted.T / TAU
            contrast = (F.cross_entropy(similarity, labels) + F.cross_entropy(similarity.T, labels)) / 2
            loss = rank + _BCE_WEIGHT * anchor + contrast
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            sums += (rank.item(), anchor.item(), contrast.item())
        rank_mean, anchor_mean, contrast_mean = sums / max(1, config.steps)
        logger.info("epoch=%d rank=%.4f bce=%.4f ntxent=%.4f", epoch, rank_mean, anchor_mean, contrast_mean)
    return network.eval()


def pairwise_accuracy(network: FrameQualityNet, pairs: list[tuple[np.ndarray, np.ndarray, str]]) -> dict[str, Any]:
    """Share of (clean, degraded, kind) pairs where the clean input scores higher, overall and by kind."""
    if not pairs:
        return {"pairs": 0, "accuracy": None, "by_kind": {}}
    clean = to_tensor(np.stack([p[0] for p in pairs]))
    damaged = to_tensor(np.stack([p[1] for p in pairs]))
    with torch.inference_mode():
        wins = (network(clean)[0] > network(damaged)[0]).numpy()
    kinds = np.array([p[2] for p in pairs])
    by_kind = {k: round(float(wins[kinds == k].mean()), 4) for k in DEGRADATIONS if (kinds == k).any()}
    return {"pairs": len(pairs), "accuracy": round(float(wins.mean()), 4), "by_kind": by_kind}


def held_out_pairs(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``count`` (clean, degraded, kind) model inputs from scenes drawn with another seed."""
    rng = np.random.default_rng(seed + _EVAL_SEED_OFFSET)
    pairs = []
    for i in range(count):
        scene = render_scene(rng, VIEW[0] + _MARGIN, VIEW[1] + _MARGIN)
        view, _ = _views(rng, scene)
        damaged, kind = degrade(rng, view, DEGRADATIONS[i % len(DEGRADATIONS)])
        pairs.append((model_input(i420_planes(view)), model_input(i420_planes(damaged)), kind))
    return pairs


def video_pairs(seed: int, frames: int, folder: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Pairs from two mp4 (mp4v) files written by OpenCV and decoded again as run() decodes
    them (decode.read_views): a pan across one large drawn scene, and the same frames each
    degraded once (kinds in turn) before encoding, so the codec's artefacts land on the damage
    as they would in a real scan."""
    if frames <= 0:
        return []
    rng = np.random.default_rng(seed + 2 * _EVAL_SEED_OFFSET)
    width, height = VIEW
    scene = render_scene(rng, width + 2 * frames + 8, height + 40)
    kinds = [DEGRADATIONS[i % len(DEGRADATIONS)] for i in range(frames)]
    clean_path, damaged_path = folder / "clean.mp4", folder / "damaged.mp4"
    writers = [cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (width, height))
               for p in (clean_path, damaged_path)]
    for i in range(frames):
        y = int(20 + 18 * np.sin(i / 15))
        frame = np.ascontiguousarray(scene[y : y + height, 2 * i : 2 * i + width])
        writers[0].write(frame)
        writers[1].write(degrade(rng, frame, kinds[i])[0])
    for writer in writers:
        writer.release()
    decoded = [read_views(clean_path, width), read_views(damaged_path, width)]
    return [(model_input(a), model_input(b), kind) for a, b, kind in zip(*decoded, kinds, strict=False)]


def save_weights(network: FrameQualityNet, path: Path) -> None:
    """Write the state_dict. Through a buffer: torch.save names the archive's folder after the
    file, and the bytes (hence the sha256) must not depend on the file name."""
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    path.write_bytes(buffer.getvalue())


def build_report(network: FrameQualityNet, config: Config, weights: Path, train_s: float) -> dict[str, Any]:
    """The JSON written next to the weights: config, evaluation, size and sha256."""
    with tempfile.TemporaryDirectory() as folder:
        video = pairwise_accuracy(network, video_pairs(config.seed, config.video_frames, Path(folder)))
    return {
        "architecture": ARCHITECTURE,
        "config": vars(config),
        "torch": torch.__version__,
        "train_seconds": round(train_s, 1),
        "held_out": pairwise_accuracy(network, held_out_pairs(config.seed, config.eval_pairs)),
        "opencv_video": video,
        "bytes": weights.stat().st_size,
        "sha256": file_sha256(weights),
    }


def main(argv: list[str] | None = None) -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(description="Train the video_summary frame network.")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    for name in ("seed", "epochs", "steps", "batch", "scenes", "eval_pairs", "video_frames", "threads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--compressed-share", type=float, default=defaults.compressed_share)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = Config(**{k: v for k, v in vars(args).items() if k != "out"})
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)

    started = time.perf_counter()
    network = train(config)
    train_s = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(network, args.out)

    report = build_report(network, config, args.out, train_s)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    held_out, video = report["held_out"], report["opencv_video"]
    logger.info("held-out pairwise accuracy: %s (%s pairs)", held_out["accuracy"], held_out["pairs"])
    logger.info("OpenCV video pairwise accuracy: %s (%s pairs)", video["accuracy"], video["pairs"])
    logger.info("weights: %s (%s bytes, sha256 %s)", args.out, report["bytes"], report["sha256"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
