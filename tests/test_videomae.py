"""VideoMAE (DeepfakeBench): clip transform, official layouts, the authors' forward pass."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.formats import formats_for
from detectors.videomae import VideoMAE
from tests.hf_video_checks import (
    authors,
    check_backbone_file_options,
    check_clip_length_errors,
    check_cv2_transform,
    check_full_size_on_meta,
    check_matches_authors,
    check_strict_and_round_trip,
    check_trains,
    frames,
    tiny_reference_detector,
)
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

SMALL = TINY["videomae"]
T = SMALL["clip_len"]
AUTHORS = authors("videomae")


def legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4's names (what DeepfakeBench's and the hub's files hold): the
    attention's ``query.bias`` / ``value.bias`` were ``q_bias`` / ``v_bias``."""
    return {
        re.sub(
            r"attention\.attention\.(query|value)\.bias$",
            lambda m: f"attention.attention.{m.group(1)[0]}_bias",
            k,
        ): v
        for k, v in state.items()
    }


def test_transform_is_deepfakebench_cv2_resize_and_one_augmentation_per_clip() -> None:
    det = load_detector("videomae", **SMALL)
    assert det.clip_len == T
    check_cv2_transform(det, frame=0, mean=0.5, std=0.5)
    same = frames(1, seed=4) * T  # T copies of one frame: every frame must get the same draw
    torch.manual_seed(0)
    views = [det.transform({"frames": same}, train=True)["clip"] for _ in range(8)]
    plain = det.transform({"frames": same})["clip"]
    for view in views:
        for t in range(1, T):
            torch.testing.assert_close(view[t], view[0])
    assert any(not torch.allclose(view, plain) for view in views)  # the augmentation does act
    check_clip_length_errors(det)


def test_forward_gradients_overfit_and_optimiser() -> None:
    check_trains("videomae", SMALL, lr=2e-4)


def test_clip_shape_options_are_checked_in_one_line() -> None:
    with pytest.raises(UserError, match="tubelet"):
        load_detector("videomae", **{**SMALL, "clip_len": 3})
    with pytest.raises(UserError, match=re.escape("detector.backbone.num_frames=8")):
        load_detector("videomae", **{**SMALL, "backbone": {**SMALL["backbone"], "num_frames": 8}})


def _authors_file(tmp_path: Path, legacy: bool, prefix: str = "") -> tuple[Path, dict]:
    spec = [[k, shape, dtype] for k, shape, dtype in AUTHORS["tiny"]["key_spec"]]
    state = seeded_state_dict(spec, AUTHORS["seed"])
    path = tmp_path / "videomae_best.pth"
    saved = legacy_names(state) if legacy else state
    torch.save({f"{prefix}{k}": v for k, v in saved.items()}, path)
    return path, saved


@pytest.mark.parametrize(("legacy", "prefix"), [(True, ""), (True, "module."), (False, "")])
def test_matches_the_authors_code(tmp_path: Path, legacy: bool, prefix: str) -> None:
    """DeepfakeBench's VideoMAEDetector run by tests/official/make_videomae.py; its file in
    transformers 4's names (as trained) or 5's (as the reference ran)."""
    path, saved = _authors_file(tmp_path, legacy, prefix)
    assert any(k.endswith(".q_bias") for k in saved) == legacy
    assert [f.name for f in formats_for(saved)] == ["DeepfakeBench VideoMAE"]
    check_matches_authors(tiny_reference_detector("videomae", AUTHORS, path), AUTHORS)


def test_deepfakebench_layout_is_strict_and_deepsift_state_dicts_round_trip(
    tmp_path: Path,
) -> None:
    path, state = _authors_file(tmp_path, legacy=True)
    check_strict_and_round_trip(
        "videomae",
        AUTHORS,
        tmp_path,
        path,
        state,
        extra="backbone.extra",
        missing="fc_norm.bias",
        not_this="not a VideoMAE file",
    )


def test_videomae_base_file_loads_strictly_without_its_decoder(tmp_path: Path) -> None:
    """``VideoMAEForPreTraining``'s file: ``videomae.*`` (transformers 4 names) + decoder."""
    torch.manual_seed(1)
    det = load_detector("videomae", **SMALL)
    encoder = {f"videomae.{k}": v + 1 for k, v in det.backbone.state_dict().items()}
    state = legacy_names(encoder) | {
        "encoder_to_decoder.weight": torch.zeros(16, 32),
        "mask_token": torch.zeros(1, 1, 16),
        "decoder.head.weight": torch.zeros(8, 16),
    }
    folder = tmp_path / "videomae-base"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    tiny = VideoMAE(clip_len=T, backbone=SMALL["backbone"], preprocessing=SMALL["preprocessing"])
    tiny.load_backbone(folder)
    layer = "encoder.layer.0.attention.attention"
    torch.testing.assert_close(
        tiny.backbone.state_dict()[f"{layer}.query.bias"],
        det.backbone.state_dict()[f"{layer}.query.bias"] + 1,
    )
    check_backbone_file_options("videomae", SMALL, tiny, folder, state, "videomae.extra")


def test_full_size_parameter_count_and_keys_on_meta() -> None:
    det = check_full_size_on_meta("videomae", AUTHORS, 86_229_505)
    assert det.clip_len == 16
