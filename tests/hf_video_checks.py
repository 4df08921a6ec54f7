"""Checks TimeSformer, VideoMAE and X-CLIP (DeepfakeBench on transformers' video models) share:
face clips, the cv2 transform, training, the authors' forward pass stored as JSON, strict
loading of DeepfakeBench's ``*_best.pth`` and of the backbone file, the full-size count."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import Detector
from tests.detector_checks import overfit, parameters_without_gradient

OFFICIAL = Path(__file__).parent / "official/video"


def authors(name: str) -> dict[str, Any]:
    """``tests/official/video/<name>_dfb.json``, written by ``tests/official/make_<name>.py``."""
    return json.loads((OFFICIAL / f"{name}_dfb.json").read_text())


def reference_parameters(reference: Mapping[str, Any]) -> int:
    """The authors' full-size count, their 2-row head (768 x 2 + 2) as one row (768 + 1)."""
    return reference["full"]["parameters"] - (768 + 1)


def frames(n: int, seed: int = 0, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def clip_batch(det: Detector, n: int) -> dict[str, torch.Tensor]:
    clips = [det.transform({"frames": frames(det.clip_len, seed=s)})["clip"] for s in range(n)]
    return {"clip": torch.stack(clips), "label": torch.tensor([i % 2 for i in range(n)])}


def check_cv2_transform(det: Detector, frame: int, mean: float, std: float) -> torch.Tensor:
    """DeepfakeBench's ``abstract_dataset.py`` ``load_rgb``: ``cv2.resize`` (``INTER_CUBIC``),
    ``ToTensor``, ``Normalize(mean, std)``, on ``frame`` of a clip; returns the clip."""
    t, size = det.clip_len, det.preprocessing.size
    assert det.input_kind == "clip" and not det.needs_mouth
    clip = det.transform({"frames": frames(t)})["clip"]
    assert clip.shape == (t, 3, size, size) and clip.dtype == torch.float32
    cv2 = pytest.importorskip("cv2")
    resized = cv2.resize(np.asarray(frames(t)[frame]), (size, size), interpolation=cv2.INTER_CUBIC)
    want = (torch.from_numpy(resized).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(clip[frame], want)
    return clip


def check_clip_length_errors(det: Detector) -> None:
    """A clip of the wrong length, or an image sample, is one UserError naming the option."""
    with pytest.raises(UserError, match=re.escape(f"detector.clip_len={det.clip_len}")):
        det.transform({"frames": frames(det.clip_len + 1)})
    with pytest.raises(UserError, match="frames"):
        det.transform({"image": frames(1)[0]})


def check_trains(name: str, small: Mapping[str, Any], lr: float) -> Any:
    """Finite logits, a gradient to every parameter, a tiny batch overfitted, DeepfakeBench's
    Adam (``lr``, betas (0.9, 0.999), eps 1e-8, weight decay 5e-4), a bad shape refused;
    returns the detector and its batch."""
    torch.manual_seed(0)
    det = load_detector(name, **small)
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
        lr,
        (0.9, 0.999),
        1e-8,
        5e-4,
    )
    with pytest.raises(UserError, match=r"\(B, T, 3, H, W\)"):
        det({"clip": batch["clip"][:, 0]})
    return det, batch


def tiny_reference_detector(name: str, reference: Mapping[str, Any], path: Path | None) -> Any:
    """The detector in the authors' tiny configuration, ``path`` loaded as its weights."""
    tiny = reference["tiny"]
    size = tiny["config"]["image_size"]
    return load_detector(
        name,
        weights=path,
        clip_len=tiny.get("clip_len", tiny["config"].get("num_frames")),
        backbone=tiny["config"],
        preprocessing={"size": size, "resize_to": size},
    ).eval()


def check_matches_authors(det: Detector, reference: Mapping[str, Any]) -> None:
    """The authors' keys in order (but the head's two rows) and their logits on the stored input."""
    tiny = reference["tiny"]
    assert list(det.state_dict()) == [k for k, _, _ in tiny["key_spec"]]
    size = tiny["config"]["image_size"]
    torch.manual_seed(0)
    x = torch.randn(2, det.clip_len, 3, size, size)
    with torch.no_grad():
        logits = det({"clip": x})["logits"].double()
    cls = torch.tensor(tiny["cls"], dtype=torch.float64)
    torch.testing.assert_close(logits, cls[:, 1] - cls[:, 0], atol=2e-5, rtol=0)
    prob = torch.tensor(tiny["prob"], dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(logits), prob, atol=1e-6, rtol=0)


def check_strict_and_round_trip(
    name: str,
    reference: Mapping[str, Any],
    tmp_path: Path,
    path: Path,
    state: dict[str, torch.Tensor],
    extra: str,
    missing: str,
    not_this: str,
) -> None:
    """A deepsift state dict round-trips; an ``extra`` key, a ``missing`` one and a foreign
    file (message ``not_this``) are each one UserError naming them."""
    det = tiny_reference_detector(name, reference, path)
    own = tmp_path / "deepsift.pth"
    torch.save(det.state_dict(), own)
    again = tiny_reference_detector(name, reference, own)
    for key, value in det.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    torch.save({**state, extra: torch.zeros(1)}, path)
    with pytest.raises(UserError, match=re.escape("backbone.extra")):
        tiny_reference_detector(name, reference, path)
    torch.save({k: v for k, v in state.items() if k != missing}, path)
    with pytest.raises(UserError, match=re.escape(missing)):
        tiny_reference_detector(name, reference, path)
    torch.save({"fc.weight": torch.zeros(1, 2)}, path)
    with pytest.raises(UserError, match=not_this):
        tiny_reference_detector(name, reference, path)


def check_backbone_file_options(
    name: str, small: Mapping[str, Any], tiny: Any, folder: Path, state: dict[str, Any], extra: str
) -> None:
    """Around a backbone file ``folder/pytorch_model.bin`` holding ``state`` (``tiny`` has
    loaded it): architecture overrides exclude the start, an ``extra`` tensor, a missing file
    and ``pretrained`` without a file are each one UserError naming the option."""
    with pytest.raises(UserError, match=re.escape("detector.pretrained=false")):
        load_detector(name, pretrained=True, backbone_file=str(folder), **small)
    torch.save({**state, extra: torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="extra"):
        tiny.load_backbone(folder)
    with pytest.raises(UserError, match=re.escape("detector.backbone_file")):
        tiny.load_backbone(folder.parent / "missing.bin")
    with pytest.raises(UserError, match=re.escape("detector.backbone_file=")):
        load_detector(name, pretrained=True)


def check_full_size_on_meta(name: str, reference: Mapping[str, Any], parameters: int) -> Any:
    """The full-size detector built on the meta device: the authors' count and keys."""
    with torch.device("meta"):
        det = load_detector(name)
    assert sum(p.numel() for p in det.parameters()) == reference_parameters(reference)
    assert reference_parameters(reference) == parameters
    assert list(det.state_dict()) == reference["full"]["keys"]
    assert det.preprocessing.size == 224
    return det
