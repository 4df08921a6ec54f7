"""CORE: two official views, the loss formula, checkpoint layouts, an independent forward pass."""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.cnnspot import merge_preprocessing
from detectors.core import CORE, DEFAULT_PREPROCESSING, core_view
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)

# The official CORE model (niyunsheng/CORE src/xception.py, ``xception(num_classes=2)``):
# tstandley's Xception (the Cadene/timm ``legacy_xception`` architecture), 20,806,952
# parameters without a classifier, plus fc = Linear(2048, 2): 4,098. Ours has one logit
# (2,049). DeepfakeBench's networks/xception.py also builds ``adjust_channel``
# (Conv2d(2048, 512, 1) + BatchNorm2d(512): 1,050,112 more), which CORE never calls.
XCEPTION_BODY = 20_806_952
REFERENCE_PARAMETERS = XCEPTION_BODY + 2048 * 2 + 2
assert REFERENCE_PARAMETERS == 20_811_050
DEEPFAKEBENCH_PARAMETERS = REFERENCE_PARAMETERS + (2048 * 512 + 512) + 2 * 512
SMALL = 32  # Xception runs at 32 px (a 1 x 1 final map): fast backward and overfitting


def randomise_batchnorm(module: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that eval-mode BN matters."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def detector() -> CORE:
    torch.manual_seed(0)
    return CORE()


@pytest.fixture(scope="module")
def reference_xception() -> nn.Module:
    """A Cadene/tstandley Xception with a two-class classifier, random weights, eval mode."""
    torch.manual_seed(1)
    model = timm.create_model("legacy_xception", pretrained=False, num_classes=2)
    with torch.no_grad():
        randomise_batchnorm(model, seed=2)
        model.fc.weight.normal_(0.0, 0.05)
        model.fc.bias.copy_(torch.tensor([0.2, -0.3]))
    return model.eval()


def reference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DeepfakeBench's ``features`` (conv1 ... bn4) then ``classifier`` (ReLU, average, linear)."""
    with torch.no_grad():
        h = F.relu(model.bn1(model.conv1(x)))
        h = F.relu(model.bn2(model.conv2(h)))
        for i in range(1, 13):
            h = getattr(model, f"block{i}")(h)
        h = F.relu(model.bn3(model.conv3(h)))
        h = model.bn4(model.conv4(h))
        return model.fc(F.relu(h).mean(dim=(2, 3)))


def deepfakebench_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``core_best.pth``'s layout: backbone.<Xception>, backbone.last_linear, backbone.adjust_channel."""
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("fc.", "last_linear.") if key.startswith("fc.") else key
        state[f"backbone.{key}"] = value.clone()
    adjust = nn.Sequential(nn.Conv2d(2048, 512, 1, 1), nn.BatchNorm2d(512), nn.ReLU(inplace=True))
    state.update({f"backbone.adjust_channel.{k}": v for k, v in adjust.state_dict().items()})
    return state


def test_parameter_count_matches_the_reference(detector: CORE) -> None:
    count = count_parameters(detector)
    assert abs(count - REFERENCE_PARAMETERS) <= 0.01 * REFERENCE_PARAMETERS
    assert count == REFERENCE_PARAMETERS - 2049  # one fake logit instead of two classes
    assert (
        DEEPFAKEBENCH_PARAMETERS == 21_861_162
    )  # what core_best.pth holds, adjust_channel included


def test_native_size_forward_and_two_view_transform(detector: CORE) -> None:
    image = random_images(1, (300, 280))[0]
    sample = {"image": image, "label": 1, "record": None, "index": 0}
    test_view = detector.transform(sample)
    assert set(test_view) == {"image"} and test_view["image"].shape == (3, 256, 256)
    torch.manual_seed(0)
    train_views = detector.transform(sample, train=True)
    assert set(train_views) == {"image", "image_view2"}
    assert train_views["image"].shape == train_views["image_view2"].shape == (3, 256, 256)
    assert not torch.equal(train_views["image"], train_views["image_view2"])
    detector.eval()
    with torch.no_grad():
        logits = detector({"image": test_view["image"][None]})["logits"]
    assert logits.shape == (1,) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("augmentation", "low", "high"), [("RE", 0.65, 0.95), ("RaAug", 0.18, 0.5), ("none", -1, 0)]
)
def test_views_follow_the_official_augmentations(
    augmentation: str, low: float, high: float
) -> None:
    """White images: an erased patch is black (-1 after mean = std = 0.5); RE erases with
    p=0.8, RaAug in one draw of three (the others resize or take a resized crop), none never."""
    preprocessing = merge_preprocessing(DEFAULT_PREPROCESSING, {"size": SMALL})
    white = Image.fromarray(np.full((40, 40, 3), 255, dtype=np.uint8))
    random.seed(0)
    torch.manual_seed(0)
    erased = []
    for _ in range(200):
        view = core_view(white, preprocessing, augmentation)
        assert view.shape == (3, SMALL, SMALL)
        assert torch.all((view == 1.0) | (view == -1.0))
        erased.append(bool((view == -1.0).any()))
    assert low < np.mean(erased) <= high


def test_unknown_augmentation_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="RaAug"):
        CORE(augmentation="DFDC_selim")


def test_loss_is_weighted_cross_entropy_plus_cosine_consistency(detector: CORE) -> None:
    det = copy.deepcopy(detector).eval()  # eval: BatchNorm statistics fixed, so terms compare
    det.consistency_weight = 1.7
    batch = transformed_batch(det, random_images(3, 40, seed=3), [0, 1, 1], train=True)
    batch = {k: F.interpolate(v, size=SMALL) if v.ndim == 4 else v for k, v in batch.items()}
    with torch.no_grad():
        out = det.training_step(batch)
        x = torch.cat([batch["image"], batch["image_view2"]])
        feats = det.backbone.forward_features(x).mean(dim=(2, 3))  # after the last ReLU
        z = feats @ det.head.weight.T + det.head.bias  # fake logit = z1 - z0 of a 2-class head
        two_class = torch.cat([torch.zeros_like(z), z], dim=1)
        labels = torch.cat([batch["label"], batch["label"]]).long()
        ce = nn.CrossEntropyLoss(weight=torch.tensor([4.0, 1.0]))(two_class, labels)
        f = F.normalize(feats, dim=1)
        cos = torch.einsum("nc,nc->n", f[:3], f[3:]).unsqueeze(-1)
        consistency = nn.MSELoss()(cos, torch.ones_like(cos))
    torch.testing.assert_close(out["loss_cls"], ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_consistency"], consistency, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], ce + 1.7 * consistency, rtol=1e-5, atol=1e-6)
    assert consistency > 0  # two different views


def test_missing_second_view_warns_once_and_trains(
    detector: CORE, caplog: pytest.LogCaptureFixture
) -> None:
    det = copy.deepcopy(detector)
    batch = transformed_batch(det, random_images(2, 40), [0, 1])  # test-time: image only
    batch["image"] = F.interpolate(batch["image"], size=SMALL)
    det.train()
    with caplog.at_level(logging.WARNING, logger="detectors.core"):
        first = det.training_step(batch)
        det.training_step(batch)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "image_view2" in caplog.records[0].message
    assert first["loss_consistency"] == 0 and first["loss"].requires_grad


def test_backward_reaches_every_parameter_and_overfits(detector: CORE) -> None:
    det = copy.deepcopy(detector)
    det.preprocessing.size = SMALL
    det.preprocessing.resize_to = SMALL
    torch.manual_seed(0)
    batch = transformed_batch(det, random_images(4, 40, seed=1), [0, 1, 0, 1], train=True)
    assert batch["image"].shape == batch["image_view2"].shape == (4, 3, SMALL, SMALL)
    assert parameters_without_gradient(det, batch) == []
    assert overfit(det, batch, steps=60, lr=1e-3, target=0.05) < 0.05


def test_deepfakebench_checkpoint_matches_an_independent_forward(
    detector: CORE, reference_xception: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "core_best.pth"
    torch.save({f"module.{k}": v for k, v in deepfakebench_state(reference_xception).items()}, path)
    det = copy.deepcopy(detector)
    det.load_weights(path)
    det.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        got = torch.sigmoid(det({"image": x})["logits"])
    expected = torch.softmax(reference_logits(reference_xception, x), dim=1)[:, 1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_official_checkpoint_loads(
    detector: CORE, reference_xception: nn.Module, tmp_path: Path
) -> None:
    """niyunsheng/CORE trainer.py saves {'model': Xception state dict (fc: 2 classes), ...}."""
    path = tmp_path / "epoch_9_acc_99.000_auc_99.000.pth"
    torch.save({"model": reference_xception.state_dict(), "acc": 0.99, "epoch": 9}, path)
    det = load_detector("core", weights=path)
    det.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = torch.sigmoid(det({"image": x})["logits"])
    expected = torch.softmax(reference_logits(reference_xception, x), dim=1)[:, 1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_wrong_checkpoint_names_missing_and_unexpected_keys(
    detector: CORE, reference_xception: nn.Module, tmp_path: Path
) -> None:
    state = deepfakebench_state(reference_xception)
    del state["backbone.block3.skip.weight"]
    state["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    det = copy.deepcopy(detector)
    with pytest.raises(
        UserError,
        match=r"missing keys: backbone\.block3\.skip\.weight.*unexpected keys: backbone\.extra\.weight",
    ):
        det.load_weights(path)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=r"does not match CORE: missing keys: backbone\."):
        det.load_weights(path)
