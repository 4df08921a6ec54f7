"""X-CLIP (DeepfakeBench): clip transform, official layouts, the authors' forward pass."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.formats import formats_for
from detectors.xclip import XCLIP
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

SMALL = TINY["xclip"]
T, SIZE = SMALL["clip_len"], SMALL["preprocessing"]["size"]
AUTHORS = json.loads((Path(__file__).parent / "official/video/xclip_dfb.json").read_text())
#: DeepfakeBench's XCLIPDetector at full size (make_xclip.py): its 2-row head
#: (768 x 2 + 2) is one row (768 + 1) here
REFERENCE_PARAMETERS = AUTHORS["full"]["parameters"] - (768 + 1)


def frames(n: int, seed: int = 0, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def clip_batch(det: XCLIP, n: int) -> dict[str, torch.Tensor]:
    clips = [det.transform({"frames": frames(T, seed=s)})["clip"] for s in range(n)]
    return {"clip": torch.stack(clips), "label": torch.tensor([i % 2 for i in range(n)])}


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
    assert det.input_kind == "clip" and det.clip_len == T and not det.needs_mouth
    clip = det.transform({"frames": frames(T)})["clip"]
    assert clip.shape == (T, 3, SIZE, SIZE) and clip.dtype == torch.float32
    cv2 = pytest.importorskip("cv2")
    first = cv2.resize(np.asarray(frames(T)[0]), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    want = (torch.from_numpy(first).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(clip[0], want)
    # xclip.yaml: use_data_augmentation false
    torch.testing.assert_close(det.transform({"frames": frames(T)}, train=True)["clip"], clip)
    with pytest.raises(UserError, match=re.escape("detector.clip_len=4")):
        det.transform({"frames": frames(T + 1)})
    with pytest.raises(UserError, match="frames"):
        det.transform({"image": frames(1)[0]})


def test_forward_gradients_overfit_and_optimiser() -> None:
    torch.manual_seed(0)
    det = load_detector("xclip", **SMALL)
    batch = clip_batch(det, 4)
    det.eval()
    out = det(batch)["logits"]
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert parameters_without_gradient(det, batch) == []
    assert overfit(det, batch, steps=80, lr=1e-3) < 0.05
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (2e-4, 5e-4)
    with pytest.raises(UserError, match=r"\(B, T, 3, H, W\)"):
        det({"clip": batch["clip"][:, 0]})
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


def tiny_reference_detector(path: Path | None) -> XCLIP:
    config = AUTHORS["tiny"]["config"]
    size = config["image_size"]
    return load_detector(
        "xclip",
        weights=path,
        clip_len=AUTHORS["tiny"]["clip_len"],
        backbone=config,
        preprocessing={"size": size, "resize_to": size},
    ).eval()


@pytest.mark.parametrize(("legacy", "prefix"), [(True, ""), (True, "module."), (False, "")])
def test_matches_the_authors_code(tmp_path: Path, legacy: bool, prefix: str) -> None:
    """DeepfakeBench's XCLIPDetector run by tests/official/make_xclip.py (clips of 8 frames
    on num_frames 4: two message groups); its file in transformers 4's or 5's names."""
    path, saved = _authors_file(tmp_path, legacy, prefix)
    assert any(".vision_model." in k for k in saved) == legacy
    assert [f.name for f in formats_for(saved)] == ["DeepfakeBench X-CLIP"]
    det = tiny_reference_detector(path)
    assert list(det.state_dict()) == [k for k, _, _ in AUTHORS["tiny"]["key_spec"]]
    config = AUTHORS["tiny"]["config"]
    torch.manual_seed(0)
    x = torch.randn(2, AUTHORS["tiny"]["clip_len"], 3, config["image_size"], config["image_size"])
    with torch.no_grad():
        logits = det({"clip": x})["logits"].double()
    cls = torch.tensor(AUTHORS["tiny"]["cls"], dtype=torch.float64)
    torch.testing.assert_close(logits, cls[:, 1] - cls[:, 0], atol=2e-5, rtol=0)
    prob = torch.tensor(AUTHORS["tiny"]["prob"], dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(logits), prob, atol=1e-6, rtol=0)


def test_deepfakebench_layout_is_strict_and_deepsift_state_dicts_round_trip(
    tmp_path: Path,
) -> None:
    path, state = _authors_file(tmp_path, legacy=True)
    det = tiny_reference_detector(path)
    own = tmp_path / "deepsift.pth"
    torch.save(det.state_dict(), own)
    again = tiny_reference_detector(own)
    for key, value in det.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    torch.save({**state, "backbone.vision_model.extra": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=re.escape("backbone.extra")):
        tiny_reference_detector(path)
    missing = {k: v for k, v in state.items() if k != "fc_norm.bias"}
    torch.save(missing, path)
    with pytest.raises(UserError, match=re.escape("fc_norm.bias")):
        tiny_reference_detector(path)
    torch.save({"fc.weight": torch.zeros(1, 2)}, path)
    with pytest.raises(UserError, match="not an X-CLIP file"):
        tiny_reference_detector(path)


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
    with pytest.raises(UserError, match=re.escape("detector.pretrained=false")):
        load_detector("xclip", pretrained=True, backbone_file=str(folder), **SMALL)
    tiny = XCLIP(clip_len=T, backbone=SMALL["backbone"], preprocessing=SMALL["preprocessing"])
    tiny.load_backbone(folder)
    torch.testing.assert_close(
        tiny.backbone.embeddings.class_embedding, det.backbone.embeddings.class_embedding + 1
    )
    torch.save({**state, "vision_model.extra": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="extra"):
        tiny.load_backbone(folder)
    with pytest.raises(UserError, match=re.escape("detector.backbone_file")):
        tiny.load_backbone(tmp_path / "missing.bin")
    with pytest.raises(UserError, match=re.escape("detector.backbone_file=")):
        load_detector("xclip", pretrained=True)


def test_full_size_parameter_count_and_keys_on_meta() -> None:
    with torch.device("meta"):
        det = load_detector("xclip")
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS == 122_912_257
    assert list(det.state_dict()) == AUTHORS["full"]["keys"]
    assert det.clip_len == 8 and det.preprocessing.size == 224
