"""The frame network's weights: the committed artifact, validate_model, and run() with other weights."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from algorithms.video_summary import (
    DEFAULT_WEIGHTS,
    AlgorithmError,
    InvalidModel,
    InvalidParams,
    run,
    validate_model,
)
from algorithms.video_summary.decode import read_views
from algorithms.video_summary.model import ARCHITECTURE, FrameQualityNet, model_input, model_inputs
from algorithms.video_summary.picture import i420_planes, planes_bgr
from algorithms.video_summary.scorer import FrameScorer
from algorithms.video_summary.synth import DEGRADATIONS, degrade
from service.synthetic import write_scan_video

SMALL = {"keyframes": 3, "segments": 3}


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_scan_video(tmp_path_factory.mktemp("scan") / "scan.mp4", frames=24, blur=None, exposure=None, seed=5)


def test_committed_weights_are_small_and_described() -> None:
    report = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    data = DEFAULT_WEIGHTS.read_bytes()
    assert len(data) <= 5 * 1024 * 1024
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["architecture"] == ARCHITECTURE
    # The training report's held-out figures: the weights meet the goal they were trained for.
    assert report["held_out"]["accuracy"] >= 0.9 and report["held_out"]["pairs"] >= 300
    assert report["opencv_video"]["accuracy"] >= 0.9


def test_validate_model_describes_good_weights() -> None:
    info = validate_model(DEFAULT_WEIGHTS)
    assert info["architecture"] == ARCHITECTURE
    assert info["parameters"] == sum(p.numel() for p in FrameQualityNet().parameters())
    assert info["sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert info["bytes"] == DEFAULT_WEIGHTS.stat().st_size


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere.pt"


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("not a model\n")
    return path


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "cut.pt"
    path.write_bytes(DEFAULT_WEIGHTS.read_bytes()[:5000])
    return path


def _not_a_state_dict(tmp_path: Path) -> Path:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    return path


def _wrong_shapes(tmp_path: Path) -> Path:
    state = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    state["embedding.weight"] = torch.zeros(16, state["embedding.weight"].shape[1])
    path = tmp_path / "shapes.pt"
    torch.save(state, path)
    return path


def _missing_layer(tmp_path: Path) -> Path:
    state = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    del state["quality.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    return path


def _non_finite(tmp_path: Path) -> Path:
    state = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    state["quality.bias"] = torch.full_like(state["quality.bias"], float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    return path


BROKEN = {
    _missing: "not found",
    _text: "not a loadable torch weights file",
    _truncated: "not a loadable torch weights file",
    _not_a_state_dict: "does not hold a state_dict",
    _wrong_shapes: "does not fit FrameQualityNet",
    _missing_layer: "does not fit FrameQualityNet",
    _non_finite: "non-finite",
}


@pytest.mark.parametrize("make", list(BROKEN), ids=lambda f: f.__name__[1:])
def test_validate_model_refuses_broken_files(make: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match=BROKEN[make]) as info:
        validate_model(make(tmp_path))
    assert info.value.code == "invalid_model" and isinstance(info.value, AlgorithmError)


def test_run_refuses_broken_weights(scan: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="does not fit"):
        run(scan["path"], {"model_path": str(_wrong_shapes(tmp_path))}, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any output


def test_run_with_named_weights(scan: dict[str, Any], tmp_path: Path) -> None:
    # A copy of the committed weights elsewhere (as a registry would fetch them): same outputs,
    # the version echoed, the path not.
    copy = tmp_path / "v9.pt"
    shutil.copyfile(DEFAULT_WEIGHTS, copy)
    named = run(scan["path"], {**SMALL, "model_path": str(copy), "model_version": "9"}, tmp_path / "named")
    default = run(scan["path"], SMALL, tmp_path / "default")
    assert named.summary["model"]["version"] == "9" and default.summary["model"]["version"] is None
    assert named.summary["model"]["sha256"] == default.summary["model"]["sha256"]
    assert named.summary["keyframes"] == default.summary["keyframes"]
    assert str(copy) not in json.dumps(named.summary)


def test_batch_size_does_not_change_results(scan: dict[str, Any], tmp_path: Path) -> None:
    # Batches change the order of float sums inside the convolutions, not what is chosen: the
    # same keyframes, scores and embeddings equal to the rounding of the summary.
    one = run(scan["path"], {**SMALL, "batch_size": 1}, tmp_path / "one").summary
    many = run(scan["path"], {**SMALL, "batch_size": 7}, tmp_path / "many").summary
    assert [k["index"] for k in one["keyframes"]] == [k["index"] for k in many["keyframes"]]
    for a, b in zip(one["keyframes"] + one["segments"], many["keyframes"] + many["segments"], strict=True):
        assert a["quality" if "quality" in a else "quality_mean"] == pytest.approx(
            b["quality" if "quality" in b else "quality_mean"], abs=2e-4)
        assert np.asarray(a["embedding"]) == pytest.approx(np.asarray(b["embedding"]), abs=2e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_gpu_is_a_param_error(scan: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidParams, match="no CUDA GPU"):
        run(scan["path"], {"device": "cuda"}, tmp_path / "out")


def test_network_ranks_clean_demo_frames_above_degraded_copies(tmp_path: Path) -> None:
    # Frames of the project's demo scans (service/synthetic.py, a texture the network was not
    # trained on), written by OpenCV and decoded as run() decodes them, each degraded once per
    # kind by synth.degrade.
    video = write_scan_video(tmp_path / "demo.mp4", frames=24, size=(640, 480), blur=None, exposure=None, seed=8)
    rng = np.random.default_rng(0)
    clean, damaged, kinds = [], [], []
    for planes in read_views(video["path"], 320):
        for kind in DEGRADATIONS:
            clean.append(model_input(planes))
            damaged.append(model_input(i420_planes(degrade(rng, planes_bgr(planes), kind)[0])))
            kinds.append(kind)
    scorer = FrameScorer(DEFAULT_WEIGHTS, "cpu")
    with scorer.session():
        wins = scorer.score(np.stack(clean))[0] > scorer.score(np.stack(damaged))[0]
    assert len(wins) == 24 * len(DEGRADATIONS)
    by_kind = {k: float(np.mean(wins[np.asarray(kinds) == k])) for k in DEGRADATIONS}
    assert float(np.mean(wins)) >= 0.9 and min(by_kind.values()) >= 0.75, by_kind


@pytest.mark.parametrize("size, width", [((640, 480), 320), ((1280, 720), 250), ((90, 40), 320)])
def test_batch_inputs_are_frame_by_frame_inputs(tmp_path: Path, size: tuple[int, int], width: int) -> None:
    # Frames stacked into one image for each step must give each frame exactly its own input:
    # no 2x2 block or bilinear tap may reach into a neighbouring frame (90x40: the small-frame path).
    video = write_scan_video(tmp_path / "v.mp4", frames=9, size=size, blur=None, exposure=None)
    views = read_views(video["path"], width)
    batch = model_inputs(views)
    assert batch.shape == (9, 48, 64, 6)
    assert all(np.array_equal(batch[i], model_input(v)) for i, v in enumerate(views))
    mixed = model_inputs([views[0], i420_planes(cv2.resize(planes_bgr(views[1]), (160, 120)))])
    assert np.array_equal(mixed[0], batch[0])  # a stream that changed size mid-batch


def test_a_warm_process_keeps_weights_by_content_and_the_last_two_versions(tmp_path: Path) -> None:
    """Each task gets its own copy of the weights: the same content is loaded once; another version
    loads afresh, and the least recently used of three goes."""
    from algorithms.video_summary.scorer import scorer_for

    first, copy = tmp_path / "a" / "w.pt", tmp_path / "b" / "w.pt"
    for path in (first, copy):
        path.parent.mkdir()
        shutil.copyfile(DEFAULT_WEIGHTS, path)
    other = tmp_path / "other.pt"
    state = FrameQualityNet().state_dict()
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other)
    third = tmp_path / "third.pt"
    torch.save({k: v + 2 if v.is_floating_point() else v for k, v in state.items()}, third)

    scorer = scorer_for(first, "cpu")
    assert scorer_for(copy, "cpu") is scorer
    assert scorer_for(other, "cpu") is not scorer
    assert scorer_for(first, "cpu") is scorer  # still kept: two versions
    scorer_for(third, "cpu")  # the least recently used, `other`, goes
    assert scorer_for(first, "cpu") is scorer
