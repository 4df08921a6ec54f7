"""TimeSformer (DeepfakeBench): clip transform, official layouts, the authors' forward pass."""

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
from detectors.timesformer import TimeSformer
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

SMALL = TINY["timesformer"]
T, SIZE = SMALL["clip_len"], SMALL["preprocessing"]["size"]
AUTHORS = json.loads((Path(__file__).parent / "official/video/timesformer_dfb.json").read_text())
#: DeepfakeBench's TimeSformerDetector at full size (make_timesformer.py): its 2-row head
#: (768 x 2 + 2) is one row (768 + 1) here
REFERENCE_PARAMETERS = AUTHORS["full"]["parameters"] - (768 + 1)


def frames(n: int, seed: int = 0, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def clip_batch(det: TimeSformer, n: int) -> dict[str, torch.Tensor]:
    clips = [det.transform({"frames": frames(T, seed=s)})["clip"] for s in range(n)]
    return {"clip": torch.stack(clips), "label": torch.tensor([i % 2 for i in range(n)])}


def test_transform_is_deepfakebench_cv2_resize_and_normalise() -> None:
    det = load_detector("timesformer", **SMALL)
    assert det.input_kind == "clip" and det.clip_len == T and not det.needs_mouth
    clip = det.transform({"frames": frames(T)})["clip"]
    assert clip.shape == (T, 3, SIZE, SIZE) and clip.dtype == torch.float32
    # abstract_dataset.py load_rgb: cv2.resize (INTER_CUBIC), ToTensor, Normalize(0.45, 0.225)
    cv2 = pytest.importorskip("cv2")
    last = cv2.resize(np.asarray(frames(T)[-1]), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    want = (torch.from_numpy(last).permute(2, 0, 1).float() / 255 - 0.45) / 0.225
    torch.testing.assert_close(clip[-1], want)
    # timesformer.yaml: use_data_augmentation false, so training sees the same clip
    torch.testing.assert_close(det.transform({"frames": frames(T)}, train=True)["clip"], clip)
    with pytest.raises(UserError, match="clip_len=4"):
        det.transform({"frames": frames(T - 1)})
    with pytest.raises(UserError, match="frames"):
        det.transform({"image": frames(1)[0]})


def test_forward_gradients_overfit_and_optimiser() -> None:
    torch.manual_seed(0)
    det = load_detector("timesformer", **SMALL)
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
        2e-5,
        (0.9, 0.999),
        1e-8,
        5e-4,
    )
    with pytest.raises(UserError, match=r"\(B, T, 3, H, W\)"):
        det({"clip": batch["clip"][:, 0]})


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


def tiny_reference_detector(path: Path | None) -> TimeSformer:
    config = AUTHORS["tiny"]["config"]
    size = config["image_size"]
    return load_detector(
        "timesformer",
        weights=path,
        clip_len=config["num_frames"],
        backbone=config,
        preprocessing={"size": size, "resize_to": size},
    ).eval()


@pytest.mark.parametrize("prefix", ["", "module."])
def test_matches_the_authors_code(tmp_path: Path, prefix: str) -> None:
    """DeepfakeBench's TimeSformerDetector run by tests/official/make_timesformer.py."""
    path, state = _authors_file(tmp_path, prefix)
    assert [f.name for f in formats_for(state)] == ["DeepfakeBench TimeSformer"]
    det = tiny_reference_detector(path)
    # the authors' keys are the detector's, in order, but the head's two rows
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
    path, state = _authors_file(tmp_path)
    det = tiny_reference_detector(path)
    own = tmp_path / "deepsift.pth"
    torch.save(det.state_dict(), own)
    again = tiny_reference_detector(own)
    for key, value in det.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    torch.save({**state, "backbone.extra": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=re.escape("backbone.extra")):
        tiny_reference_detector(path)
    missing = {k: v for k, v in state.items() if k != "backbone.layernorm.bias"}
    torch.save(missing, path)
    with pytest.raises(UserError, match=re.escape("backbone.layernorm.bias")):
        tiny_reference_detector(path)
    torch.save({"fc.weight": torch.zeros(1, 2)}, path)
    with pytest.raises(UserError, match="not a TimeSformer file"):
        tiny_reference_detector(path)


def test_kinetics_backbone_file_loads_strictly_and_is_required(tmp_path: Path) -> None:
    """``TimesformerForVideoClassification``'s file: ``timesformer.*`` + ``classifier.*``."""
    torch.manual_seed(1)
    det = load_detector("timesformer", **SMALL)
    state = {f"timesformer.{k}": v + 1 for k, v in det.backbone.state_dict().items()}
    state |= {"classifier.weight": torch.zeros(400, 32), "classifier.bias": torch.zeros(400)}
    folder = tmp_path / "timesformer-base-finetuned-k400"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    # architecture overrides and the Kinetics start exclude each other (the file would not fit)
    with pytest.raises(UserError, match=re.escape("detector.pretrained=false")):
        load_detector("timesformer", pretrained=True, backbone_file=str(folder), **SMALL)
    tiny = TimeSformer(clip_len=T, backbone=SMALL["backbone"], preprocessing=SMALL["preprocessing"])
    tiny.load_backbone(folder)
    torch.testing.assert_close(
        tiny.backbone.embeddings.cls_token, det.backbone.embeddings.cls_token + 1
    )
    torch.save({**state, "timesformer.extra": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="extra"):
        tiny.load_backbone(folder)
    with pytest.raises(UserError, match=re.escape("detector.backbone_file")):
        tiny.load_backbone(tmp_path / "missing.bin")
    with pytest.raises(UserError, match=re.escape("detector.backbone_file=")):
        load_detector("timesformer", pretrained=True)


def test_full_size_parameter_count_and_keys_on_meta() -> None:
    with torch.device("meta"):
        det = load_detector("timesformer")
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS == 121_259_521
    assert list(det.state_dict()) == AUTHORS["full"]["keys"]
    assert det.clip_len == 8 and det.preprocessing.size == 224
