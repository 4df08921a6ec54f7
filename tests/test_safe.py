"""SAFE: official key layout and checkpoint, the wavelet band, an independent forward pass."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.formats import formats_for
from detectors.safe import SAFE, dwt_hh
from tests.detector_checks import batch_norm, bottleneck, overfit, parameters_without_gradient
from tests.official.weights import key_spec, seeded_state_dict

#: the reference models/resnet.py ``resnet50(num_classes=2)``: 3x3 stem, layer1, layer2, fc1
REFERENCE_PARAMETERS = 1_438_274
#: ``pywt.Wavelet("bior1.3").dec_hi``
DEC_HI = np.array([0.0, 0.0, -1.0, 1.0, 0.0, 0.0]) / np.sqrt(2.0)


class ReferenceLayout(nn.Module):
    """The module tree of the reference ``resnet50(num_classes=2)``: torchvision's ResNet-50
    stem (with a 3x3 stride-2 ``conv1``), ``layer1``, ``layer2``, and ``fc1`` 512 -> 2."""

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1, self.layer1, self.layer2 = net.bn1, net.layer1, net.layer2
        self.fc1 = nn.Linear(512, 2)


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    state = seeded_state_dict(key_spec(ReferenceLayout().state_dict()), seed=5)
    state["fc1.weight"] = state["fc1.weight"] * 8  # a head that separates the images
    return state


def numpy_hh(x: np.ndarray) -> np.ndarray:
    """pywt's ``dwt2(..., "bior1.3", mode="symmetric")`` diagonal band, written out: along
    each axis, the signal mirrored by 5 samples (edge repeated), fully convolved with
    ``dec_hi``, odd samples kept."""

    def high(a: np.ndarray, axis: int) -> np.ndarray:
        a = np.moveaxis(a, axis, -1)
        ext = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(5, 5)], mode="symmetric")
        out = np.apply_along_axis(lambda v: np.convolve(v, DEC_HI)[5:-5][1::2], -1, ext)
        return np.moveaxis(out, -1, axis)

    return high(high(x, -1), -2)


def reference_forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """The paper's SAFE, functionally: HH band resized back (bilinear), truncated ResNet-50,
    softmax's fake probability as a logit difference."""
    band = torch.from_numpy(numpy_hh(x.double().numpy())).float()
    x = F.interpolate(band, size=x.shape[-2:], mode="bilinear", align_corners=False)
    x = F.relu(batch_norm(F.conv2d(x, s["conv1.weight"], stride=2, padding=1), s, "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for layer, blocks in (("layer1", 3), ("layer2", 4)):
        for i in range(blocks):
            x = bottleneck(x, s, f"{layer}.{i}", 2 if layer == "layer2" and i == 0 else 1)
    out = x.mean(dim=(-2, -1)) @ s["fc1.weight"].T + s["fc1.bias"]
    return out[:, 1] - out[:, 0]


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(2)
    paths = []
    for name, shape in (("big.png", (300, 281, 3)), ("small.png", (200, 180, 3))):
        paths.append(folder / name)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    return paths


def test_wavelet_band_matches_pywts_definition() -> None:
    x = torch.rand(2, 3, 37, 50, dtype=torch.float64)
    band = dwt_hh(x)
    assert band.shape == (2, 3, 21, 27)  # (n + 5) // 2
    np.testing.assert_allclose(band.numpy(), numpy_hh(x.numpy()), atol=1e-12, rtol=0)
    tiny = torch.rand(1, 1, 2, 3, dtype=torch.float64)  # shorter than the filter's extension
    np.testing.assert_allclose(dwt_hh(tiny).numpy(), numpy_hh(tiny.numpy()), atol=1e-12, rtol=0)


def test_full_size_parameter_count_and_official_keys() -> None:
    with torch.device("meta"):
        det, reference = SAFE(), ReferenceLayout()
    assert count_parameters(reference) == REFERENCE_PARAMETERS
    assert count_parameters(det) == REFERENCE_PARAMETERS
    ours, theirs = det.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)


def test_backward_reaches_every_parameter_and_overfits() -> None:
    torch.manual_seed(0)
    det = SAFE(label_smoothing=0.0)
    batch = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert not parameters_without_gradient(det, batch)
    assert overfit(det, batch, steps=60, lr=1e-3) < 0.05


def test_label_smoothing_is_the_two_class_smoothed_cross_entropy() -> None:
    torch.manual_seed(0)
    det = SAFE().eval()
    batch = {"image": torch.rand(3, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0])}
    out = det.class_logits(batch["image"])
    logp = out.log_softmax(1)
    target = batch["label"].long()
    # timm's LabelSmoothingCrossEntropy(0.1): 0.9 * nll + 0.1 * mean over classes of -log p
    expected = (0.9 * -logp.gather(1, target[:, None])[:, 0] + 0.1 * -logp.mean(1)).mean()
    torch.testing.assert_close(det.training_step(batch)["loss"], expected)


def test_config_composes_with_the_reference_defaults() -> None:
    det = load_detector("safe")
    assert isinstance(det, SAFE) and det.config_name == "safe"
    p, t = det.preprocessing, det.train_preprocessing
    assert (p.size, p.resize, p.crop) == (256, "none", "center")
    assert (t.size, t.crop, t.hflip) == (256, "center", 0.5)
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == 5e-3
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


def test_official_checkpoint_predicts_like_the_reference(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "checkpoint-best.pth"
    args = argparse.Namespace(model="SAFE", input_size=256, transform_mode="crop", blr=1e-2)
    # utils.save_model's container; main_finetune loads checkpoint['model']
    torch.save(
        {"model": official, "optimizer": {}, "epoch": "best", "scaler": {}, "args": args}, path
    )
    assert [f.name for f in formats_for(official)] == ["SAFE"]
    paths = write_images(tmp_path)
    crop = transforms.Compose([transforms.CenterCrop([256, 256]), transforms.ToTensor()])
    images = torch.stack([crop(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        expected = reference_forward(images, official)
    assert expected.abs().max() < 8 and (expected[0] - expected[1]).abs() > 1e-3
    det = load_detector("safe", weights=path)
    probs = det.predict(paths, batch_size=2, device="cpu")
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=2e-6, rtol=0)


def test_wrong_files_name_missing_and_unexpected_keys(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    npr_like = {**official, "fc1.weight": official["fc1.weight"][:1]}
    npr_like["fc1.bias"] = official["fc1.bias"][:1]
    assert "SAFE" not in [f.name for f in formats_for(npr_like)]
    torch.save(npr_like, tmp_path / "NPR.pth")
    with pytest.raises(UserError, match="fc1") as info:
        load_detector("safe", weights=tmp_path / "NPR.pth")
    assert "\n" not in str(info.value)
    partial = {k: v for k, v in official.items() if not k.startswith("layer2.3.")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"missing keys: layer2\.3\.bn1\.bias"):
        load_detector("safe", weights=tmp_path / "partial.pth")
