"""VideoMAE (DeepfakeBench): clip transform, official layouts, the authors' forward pass."""

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
from detectors.videomae import VideoMAE
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

SMALL = TINY["videomae"]
T, SIZE = SMALL["clip_len"], SMALL["preprocessing"]["size"]
AUTHORS = json.loads((Path(__file__).parent / "official/video/videomae_dfb.json").read_text())
#: DeepfakeBench's VideoMAEDetector at full size (make_videomae.py): its 2-row head
#: (768 x 2 + 2) is one row (768 + 1) here
REFERENCE_PARAMETERS = AUTHORS["full"]["parameters"] - (768 + 1)


def frames(n: int, seed: int = 0, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def clip_batch(det: VideoMAE, n: int) -> dict[str, torch.Tensor]:
    clips = [det.transform({"frames": frames(T, seed=s)})["clip"] for s in range(n)]
    return {"clip": torch.stack(clips), "label": torch.tensor([i % 2 for i in range(n)])}


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
    assert det.input_kind == "clip" and det.clip_len == T and not det.needs_mouth
    clip = det.transform({"frames": frames(T)})["clip"]
    assert clip.shape == (T, 3, SIZE, SIZE) and clip.dtype == torch.float32
    # abstract_dataset.py load_rgb: cv2.resize (INTER_CUBIC), ToTensor, Normalize(0.5, 0.5)
    cv2 = pytest.importorskip("cv2")
    first = cv2.resize(np.asarray(frames(T)[0]), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    want = (torch.from_numpy(first).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(clip[0], want)
    same = frames(1, seed=4) * T  # T copies of one frame: every frame must get the same draw
    torch.manual_seed(0)
    views = [det.transform({"frames": same}, train=True)["clip"] for _ in range(8)]
    plain = det.transform({"frames": same})["clip"]
    for view in views:
        for t in range(1, T):
            torch.testing.assert_close(view[t], view[0])
    assert any(not torch.allclose(view, plain) for view in views)  # the augmentation does act
    with pytest.raises(UserError, match=re.escape("detector.clip_len=4")):
        det.transform({"frames": frames(T + 1)})
    with pytest.raises(UserError, match="frames"):
        det.transform({"image": same[0]})


def test_forward_gradients_overfit_and_optimiser() -> None:
    torch.manual_seed(0)
    det = load_detector("videomae", **SMALL)
    batch = clip_batch(det, 4)
    det.eval()
    out = det(batch)["logits"]
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert parameters_without_gradient(det, batch) == []
    assert overfit(det, batch, steps=80, lr=1e-3) < 0.05
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-4,
        (0.9, 0.999),
        1e-8,
        5e-4,
    )
    with pytest.raises(UserError, match=r"\(B, T, 3, H, W\)"):
        det({"clip": batch["clip"][:, 0]})


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


def tiny_reference_detector(path: Path | None) -> VideoMAE:
    config = AUTHORS["tiny"]["config"]
    size = config["image_size"]
    return load_detector(
        "videomae",
        weights=path,
        clip_len=config["num_frames"],
        backbone=config,
        preprocessing={"size": size, "resize_to": size},
    ).eval()


@pytest.mark.parametrize(("legacy", "prefix"), [(True, ""), (True, "module."), (False, "")])
def test_matches_the_authors_code(tmp_path: Path, legacy: bool, prefix: str) -> None:
    """DeepfakeBench's VideoMAEDetector run by tests/official/make_videomae.py; its file in
    transformers 4's names (as trained) or 5's (as the reference ran)."""
    path, saved = _authors_file(tmp_path, legacy, prefix)
    assert any(k.endswith(".q_bias") for k in saved) == legacy
    assert [f.name for f in formats_for(saved)] == ["DeepfakeBench VideoMAE"]
    det = tiny_reference_detector(path)
    assert list(det.state_dict()) == [k for k, _, _ in AUTHORS["tiny"]["key_spec"]]
    config = AUTHORS["tiny"]["config"]
    torch.manual_seed(0)
    x = torch.randn(2, config["num_frames"], 3, config["image_size"], config["image_size"])
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
    torch.save({**state, "backbone.extra": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=re.escape("backbone.extra")):
        tiny_reference_detector(path)
    missing = {k: v for k, v in state.items() if k != "fc_norm.bias"}
    torch.save(missing, path)
    with pytest.raises(UserError, match=re.escape("fc_norm.bias")):
        tiny_reference_detector(path)
    torch.save({"fc.weight": torch.zeros(1, 2)}, path)
    with pytest.raises(UserError, match="not a VideoMAE file"):
        tiny_reference_detector(path)


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
    with pytest.raises(UserError, match=re.escape("detector.pretrained=false")):
        load_detector("videomae", pretrained=True, backbone_file=str(folder), **SMALL)
    tiny = VideoMAE(clip_len=T, backbone=SMALL["backbone"], preprocessing=SMALL["preprocessing"])
    tiny.load_backbone(folder)
    layer = "encoder.layer.0.attention.attention"
    torch.testing.assert_close(
        tiny.backbone.state_dict()[f"{layer}.query.bias"],
        det.backbone.state_dict()[f"{layer}.query.bias"] + 1,
    )
    torch.save({**state, "videomae.extra": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="extra"):
        tiny.load_backbone(folder)
    with pytest.raises(UserError, match=re.escape("detector.backbone_file")):
        tiny.load_backbone(tmp_path / "missing.bin")
    with pytest.raises(UserError, match=re.escape("detector.backbone_file=")):
        load_detector("videomae", pretrained=True)


def test_full_size_parameter_count_and_keys_on_meta() -> None:
    with torch.device("meta"):
        det = load_detector("videomae")
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS == 86_229_505
    assert list(det.state_dict()) == AUTHORS["full"]["keys"]
    assert det.clip_len == 16 and det.preprocessing.size == 224
