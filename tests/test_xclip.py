"""X-CLIP (DeepfakeBench): clip transform, official layouts, the authors' forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.formats import formats_for
from detectors.xclip import XCLIP
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

SMALL = TINY["xclip"]
T = SMALL["clip_len"]
AUTHORS = authors("xclip")


def legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4's names (what DeepfakeBench trained under): ``XCLIPVisionModel``'s
    tensors sat under ``vision_model.``."""
    return {
        (
            f"backbone.vision_model.{k.removeprefix('backbone.')}"
            if k.startswith("backbone.")
            else k
        ): v
        for k, v in state.items()
    }


def test_transform_is_deepfakebench_cv2_resize_without_augmentation() -> None:
    det = load_detector("xclip", **SMALL)
    assert det.clip_len == T
    clip = check_cv2_transform(det, frame=0, mean=0.5, std=0.5)
    # xclip.yaml: use_data_augmentation false
    torch.testing.assert_close(det.transform({"frames": frames(T)}, train=True)["clip"], clip)
    check_clip_length_errors(det)


def test_forward_gradients_overfit_and_optimiser() -> None:
    det, batch = check_trains("xclip", SMALL, lr=2e-4)
    with pytest.raises(UserError, match="num_frames=2"):
        det({"clip": batch["clip"][:, :3]})
    with pytest.raises(UserError, match="num_frames=2"):
        load_detector("xclip", **{**SMALL, "clip_len": 3})


def test_message_tokens_mix_frames_within_a_group_only() -> None:
    """Changing frame 0 changes frame 1's pooled token (same message group of 2) but not
    frame 2's (next group): the cross-frame attention DeepfakeBench's clips get."""
    torch.manual_seed(0)
    det = load_detector("xclip", **SMALL).eval()
    clip = clip_batch(det, 1)["clip"]
    other = clip.clone()
    other[0, 0] = torch.randn_like(other[0, 0])
    with torch.no_grad():
        a = det.backbone(pixel_values=clip.flatten(0, 1)).pooler_output
        b = det.backbone(pixel_values=other.flatten(0, 1)).pooler_output
    assert (a[1] - b[1]).abs().max() > 1e-5
    torch.testing.assert_close(a[2:], b[2:])


def _authors_file(tmp_path: Path, legacy: bool, prefix: str = "") -> tuple[Path, dict]:
    spec = [[k, shape, dtype] for k, shape, dtype in AUTHORS["tiny"]["key_spec"]]
    state = seeded_state_dict(spec, AUTHORS["seed"])
    path = tmp_path / "xclip_best.pth"
    saved = legacy_names(state) if legacy else state
    torch.save({f"{prefix}{k}": v for k, v in saved.items()}, path)
    return path, saved


@pytest.mark.parametrize(("legacy", "prefix"), [(True, ""), (True, "module."), (False, "")])
def test_matches_the_authors_code(tmp_path: Path, legacy: bool, prefix: str) -> None:
    """DeepfakeBench's XCLIPDetector run by tests/official/make_xclip.py (clips of 8 frames
    on num_frames 4: two message groups); its file in transformers 4's or 5's names."""
    path, saved = _authors_file(tmp_path, legacy, prefix)
    assert any(".vision_model." in k for k in saved) == legacy
    assert [f.name for f in formats_for(saved)] == ["DeepfakeBench X-CLIP"]
    check_matches_authors(tiny_reference_detector("xclip", AUTHORS, path), AUTHORS)


def test_deepfakebench_layout_is_strict_and_deepsift_state_dicts_round_trip(
    tmp_path: Path,
) -> None:
    path, state = _authors_file(tmp_path, legacy=True)
    check_strict_and_round_trip(
        "xclip",
        AUTHORS,
        tmp_path,
        path,
        state,
        extra="backbone.vision_model.extra",
        missing="fc_norm.bias",
        not_this="not an X-CLIP file",
    )


def test_xclip_model_file_loads_its_vision_tower_strictly(tmp_path: Path) -> None:
    """``XCLIPModel``'s file: ``vision_model.*`` next to the text tower, MIT and prompts."""
    torch.manual_seed(1)
    det = load_detector("xclip", **SMALL)
    state = {f"vision_model.{k}": v + 1 for k, v in det.backbone.state_dict().items()}
    state |= {
        "vision_model.embeddings.position_ids": torch.arange(17)[None],
        "text_model.embeddings.token_embedding.weight": torch.zeros(8, 16),
        "mit.position_embedding": torch.zeros(1, 2, 16),
        "visual_projection.weight": torch.zeros(16, 32),
        "logit_scale": torch.zeros(()),
    }
    folder = tmp_path / "xclip-base-patch32"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    tiny = XCLIP(clip_len=T, backbone=SMALL["backbone"], preprocessing=SMALL["preprocessing"])
    tiny.load_backbone(folder)
    torch.testing.assert_close(
        tiny.backbone.embeddings.class_embedding, det.backbone.embeddings.class_embedding + 1
    )
    check_backbone_file_options("xclip", SMALL, tiny, folder, state, "vision_model.extra")


def test_full_size_parameter_count_and_keys_on_meta() -> None:
    det = check_full_size_on_meta("xclip", AUTHORS, 122_912_257)
    assert det.clip_len == 8
