"""ClipBased: official head file, an independent forward pass, the closed-form fit."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.svm import LinearSVC
from torch import nn
from torchvision import transforms

from deepsift.core.errors import UserError
from detectors import detector_config, load_detector
from detectors.clipbased import ClipBased
from detectors.layers.clip import build_visual
from detectors.layers.closed_form import NotFittedError

open_clip = pytest.importorskip("open_clip")  # PyPI open_clip_torch

TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32}
TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
TINY_EMBED = 16
TINY = {"model_name": "ViT-L-14", "vision_cfg": TINY_VISION, "embed_dim": TINY_EMBED}

#: open_clip ViT-L-14 image encoder: 303,966,208 parameters, of which the projection
#: (1024 x 768) is dropped by next_to_last; the head reads the 1024-d pooled token
REFERENCE_PARAMETERS = 303_966_208
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(TINY_EMBED, TINY_VISION, TINY_TEXT, quick_gelu=False).eval()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(260, 300), (224, 224), (300, 180)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)
    ]


def reference_input(image: Image.Image) -> torch.Tensor:
    """main.py, patch_size Clip224: Resize(224, bicubic), CenterCrop(224), CLIP Normalize."""
    pipeline = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    return pipeline(image)


def reference_features(clip: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """openclipnet.py with next_to_last=True: visual.proj = None, encode_image(normalize=True)."""
    clip.visual.proj = None
    with torch.no_grad():
        return clip.encode_image(x, normalize=True)


def test_vit_l14_parameter_count_and_feature_width() -> None:
    with torch.device("meta"):
        visual = build_visual("ViT-L-14", quick_gelu=False)
    count = sum(p.numel() for p in visual.parameters())
    assert abs(count - REFERENCE_PARAMETERS) <= 0.01 * REFERENCE_PARAMETERS
    det = load_detector("clipbased")  # offline: builds, the encoder is resolved on first use
    assert det.feature_dim == 1024 and tuple(det.fc.weight.shape) == (1, 1024)
    assert detector_config("clipbased").quick_gelu is False


def test_official_head_matches_independent_forward(tmp_path: Path) -> None:
    clip = tiny_clip()
    backbone = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), backbone)
    torch.manual_seed(1)
    head = {"fc.weight": torch.randn(1, 64), "fc.bias": torch.tensor([-0.2])}
    head_file = tmp_path / "weights.pth"
    torch.save({"model": {f"module.{k}": v for k, v in head.items()}}, head_file)

    det = load_detector("clipbased", weights=head_file, backbone_file=str(backbone), **TINY)
    pics = images(3)
    batch = {"image": torch.stack([det.transform({"image": p})["image"] for p in pics])}
    with torch.no_grad():
        got = det(batch)["logits"]

    x = torch.stack([reference_input(p) for p in pics])
    expected = reference_features(clip, x) @ head["fc.weight"].T + head["fc.bias"]
    torch.testing.assert_close(got, expected.squeeze(1), atol=1e-5, rtol=1e-5)


def test_wrong_files_and_offline_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "fc_weights.pth"
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1), "x": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match=r"not a ClipBased head.*backbone_file"):
        load_detector("clipbased", weights=bad, random_init=True, **TINY)
    det = load_detector("clipbased")
    det.fitted.fill_(True)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"detector\.backbone_file="):
        det({"image": torch.zeros(1, 3, 224, 224)})
    assert time.monotonic() - start < 10


def test_unfitted_refuses_to_score() -> None:
    det = ClipBased(random_init=True, **TINY)
    with pytest.raises(NotFittedError):
        det({"image": torch.zeros(1, 3, 224, 224)})
    assert not det.fits_by_gradient


@pytest.mark.parametrize("standardize", [False, True])
def test_closed_form_fit_is_the_svm_hyperplane(standardize: bool) -> None:
    det = ClipBased(random_init=True, C=10.0, standardize=standardize, **TINY)
    pics = images(12, seed=4)
    labels = torch.tensor([0.0, 1.0] * 6)
    x = torch.stack([det.transform({"image": p}, train=True)["image"] for p in pics])
    for start in (0, 6):  # two batches, as the engine would send them
        out = det.training_step({"image": x[start : start + 6], "label": labels[start : start + 6]})
        assert out == {}
    det.on_train_epoch_end()
    assert bool(det.fitted)

    features = det.features(x).double().numpy()
    z = features
    if standardize:
        z = (features - features.mean(0)) / features.std(0)
    svm = LinearSVC(C=10.0, loss="hinge", dual=True, max_iter=10000, random_state=0)
    svm.fit(z, labels.numpy().astype(int))
    with torch.no_grad():
        logits = det({"image": x})["logits"].double().numpy()
    np.testing.assert_allclose(logits, svm.decision_function(z), atol=1e-4)
    if standardize:  # 12 standardised points in 64-d: separable, the SVM fits them all
        assert ((logits > 0) == labels.numpy().astype(bool)).all()

    state = det.state_dict()
    assert set(state) == {"fc.weight", "fc.bias", "fitted"}
    again = ClipBased(random_init=True, **TINY)
    again.load_state_dict(state)
    with torch.no_grad():
        np.testing.assert_allclose(again({"image": x})["logits"].numpy(), logits, atol=1e-5)


def test_features_are_unit_norm_next_to_last() -> None:
    det = ClipBased(random_init=True, **TINY)
    features = det.features(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, 64)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2))
    assert det.backbone.proj is None
    assert [n for n, _ in det.named_parameters()] == ["fc.weight", "fc.bias"]
    assert not any(p.requires_grad for p in det.parameters())


def test_official_head_keeps_main_py_protocol_and_warns_on_an_override(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    head = tmp_path / "weights.pth"
    state = {"module.fc.weight": torch.zeros(1, 64), "module.fc.bias": torch.zeros(1)}
    torch.save({"model": state}, head)
    with caplog.at_level(logging.INFO, logger="detectors.base"):
        det = load_detector("clipbased", weights=head, random_init=True, **TINY)
    assert det.preprocessing.resize == "shorter" and det.preprocessing.interpolation == "bicubic"
    assert any("ClipBased weights.pth weights" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detectors.base"):
        det = load_detector(
            "clipbased",
            weights=head,
            random_init=True,
            preprocessing={"interpolation": "bilinear"},
            **TINY,
        )
    assert det.preprocessing.interpolation == "bilinear"  # the user's choice wins
    assert any("departs from the protocol" in r.getMessage() for r in caplog.records)
