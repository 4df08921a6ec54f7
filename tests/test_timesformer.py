"""TimeSformer (DeepfakeBench): clip transform, official layouts, the authors' forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detectors import load_detector
from detectors.formats import formats_for
from detectors.timesformer import TimeSformer
from tests.hf_video_checks import (
    authors,
    check_backbone_file_options,
    check_clip_length_errors,
    check_cv2_transform,
    check_full_size_on_meta,
    check_matches_authors,
    check_strict_and_round_trip,
    check_trains,
    clip_batch,
    frames,
    tiny_reference_detector,
)
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

SMALL = TINY["timesformer"]
T = SMALL["clip_len"]
AUTHORS = authors("timesformer")


def test_transform_is_deepfakebench_cv2_resize_and_normalise() -> None:
    det = load_detector("timesformer", **SMALL)
    assert det.clip_len == T
    clip = check_cv2_transform(det, frame=T - 1, mean=0.45, std=0.225)
    # timesformer.yaml: use_data_augmentation false, so training sees the same clip
    torch.testing.assert_close(det.transform({"frames": frames(T)}, train=True)["clip"], clip)
    check_clip_length_errors(det)


def test_forward_gradients_overfit_and_optimiser() -> None:
    check_trains("timesformer", SMALL, lr=2e-5)


def test_the_frames_are_attended_over_time() -> None:
    """Permuting the frames changes the logit (time embeddings + temporal attention), and a
    clip longer than the backbone's num_frames runs (time embeddings interpolated)."""
    torch.manual_seed(0)
    det = load_detector("timesformer", **SMALL).eval()
    with torch.no_grad():
        det.backbone.embeddings.time_embeddings.normal_()
        clip = clip_batch(det, 2)["clip"]
        logits = det({"clip": clip})["logits"]
        reversed_ = det({"clip": clip.flip(1)})["logits"]
        longer = det({"clip": torch.cat([clip, clip], dim=1)})["logits"]
    assert (logits - reversed_).abs().max() > 1e-4
    assert longer.shape == (2,) and torch.isfinite(longer).all()


def _authors_file(tmp_path: Path, prefix: str = "") -> tuple[Path, dict[str, torch.Tensor]]:
    tiny = AUTHORS["tiny"]
    spec = [[k, shape, dtype] for k, shape, dtype in tiny["key_spec"]]
    state = seeded_state_dict(spec, AUTHORS["seed"])
    path = tmp_path / "timesformer_best.pth"
    torch.save({f"{prefix}{k}": v for k, v in state.items()}, path)
    return path, state


@pytest.mark.parametrize("prefix", ["", "module."])
def test_matches_the_authors_code(tmp_path: Path, prefix: str) -> None:
    """DeepfakeBench's TimeSformerDetector run by tests/official/make_timesformer.py."""
    path, state = _authors_file(tmp_path, prefix)
    assert [f.name for f in formats_for(state)] == ["DeepfakeBench TimeSformer"]
    check_matches_authors(tiny_reference_detector("timesformer", AUTHORS, path), AUTHORS)


def test_deepfakebench_layout_is_strict_and_deepsift_state_dicts_round_trip(
    tmp_path: Path,
) -> None:
    path, state = _authors_file(tmp_path)
    check_strict_and_round_trip(
        "timesformer",
        AUTHORS,
        tmp_path,
        path,
        state,
        extra="backbone.extra",
        missing="backbone.layernorm.bias",
        not_this="not a TimeSformer file",
    )


def test_kinetics_backbone_file_loads_strictly_and_is_required(tmp_path: Path) -> None:
    """``TimesformerForVideoClassification``'s file: ``timesformer.*`` + ``classifier.*``."""
    torch.manual_seed(1)
    det = load_detector("timesformer", **SMALL)
    state = {f"timesformer.{k}": v + 1 for k, v in det.backbone.state_dict().items()}
    state |= {"classifier.weight": torch.zeros(400, 32), "classifier.bias": torch.zeros(400)}
    folder = tmp_path / "timesformer-base-finetuned-k400"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    tiny = TimeSformer(clip_len=T, backbone=SMALL["backbone"], preprocessing=SMALL["preprocessing"])
    tiny.load_backbone(folder)
    torch.testing.assert_close(
        tiny.backbone.embeddings.cls_token, det.backbone.embeddings.cls_token + 1
    )
    check_backbone_file_options("timesformer", SMALL, tiny, folder, state, "timesformer.extra")


def test_full_size_parameter_count_and_keys_on_meta() -> None:
    det = check_full_size_on_meta("timesformer", AUTHORS, 121_259_521)
    assert det.clip_len == 8
