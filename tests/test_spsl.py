"""SPSL: phase-only channel, DeepfakeBench checkpoint parity, 4-channel ImageNet stem, training.

``DeepfakeBenchXception`` below is DeepfakeBench's ``training/networks/xception.py``
module tree, written from that file (SeparableConv2d, Block with its ``rep``
list, ``last_linear``, ``adjust_channel``) with its ``features``/``classifier``
forward; tests/test_srm.py reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.spsl import SPSL, phase_only
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)

#: DeepfakeBench Xception(inc=4, num_classes=2, dropout=False), every registered parameter
REFERENCE_TOTAL = 21_861_450
#: its ``adjust_channel`` (Conv 2048 -> 512 with bias, BN 512), never called in mode 'original'
REFERENCE_ADJUST_CHANNEL = 1_050_112
#: what SPSL's forward uses: the total less adjust_channel (2-class head: 4,098)
REFERENCE_USED = REFERENCE_TOTAL - REFERENCE_ADJUST_CHANNEL
#: ours: the same network with a 1-logit head (2,049)
OURS = REFERENCE_USED - 2_049


class RefSeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, pad: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, k, stride, pad, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class RefBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, reps: int, stride: int, relu_first: bool, grow_first: bool
    ):
        super().__init__()
        self.skip = None
        if cout != cin or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)
        rep: list[nn.Module] = []
        width = cin
        if grow_first:
            rep += [nn.ReLU(), RefSeparableConv(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout)]
            width = cout
        for _ in range(reps - 1):
            rep += [nn.ReLU(), RefSeparableConv(width, width, 3, 1, 1), nn.BatchNorm2d(width)]
        if not grow_first:
            rep += [nn.ReLU(), RefSeparableConv(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout)]
        if not relu_first:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        skip = inp if self.skip is None else self.skipbn(self.skip(inp))
        return self.rep(inp) + skip


class DeepfakeBenchXception(nn.Module):
    def __init__(self, inc: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inc, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.block1 = RefBlock(64, 128, 2, 2, relu_first=False, grow_first=True)
        self.block2 = RefBlock(128, 256, 2, 2, relu_first=True, grow_first=True)
        self.block3 = RefBlock(256, 728, 2, 2, relu_first=True, grow_first=True)
        for i in range(4, 12):
            setattr(self, f"block{i}", RefBlock(728, 728, 3, 1, True, True))
        self.block12 = RefBlock(728, 1024, 2, 2, relu_first=True, grow_first=False)
        self.conv3 = RefSeparableConv(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = RefSeparableConv(1536, 2048, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(2048)
        self.last_linear = nn.Linear(2048, num_classes)
        self.adjust_channel = nn.Sequential(
            nn.Conv2d(2048, 512, 1, 1), nn.BatchNorm2d(512), nn.ReLU()
        )

    def fea_part1_0(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def fea_part1_1(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(x)))

    def blocks(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        for i in range(first, last + 1):
            x = getattr(self, f"block{i}")(x)
        return x

    def fea_part5(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fea_part1_1(self.fea_part1_0(x))
        return self.fea_part5(self.blocks(x, 1, 12))

    def classifier(self, features: torch.Tensor) -> torch.Tensor:
        return self.last_linear(F.adaptive_avg_pool2d(F.relu(features), 1).flatten(1))


def randomise(module: nn.Module, seed: int, run: Callable[[], object]) -> None:
    """Fresh random weights, BatchNorm scales and shifts, and statistics measured by ``run()``.

    Running statistics accumulated over one training-mode pass keep eval-mode
    activations well scaled, so outputs differ from image to image.
    """
    torch.manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.reset_parameters()
    for norm in norms:
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_(0.0, 0.1)
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the pass
    module.train()
    with torch.no_grad():
        run()
    for norm in norms:
        norm.momentum = 0.1
    module.eval()


def numpy_phase_only(image: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, 1, H, W): mean over channels, keep the FFT's phase, unit magnitude."""
    gray = image.astype(np.float64).mean(axis=1, keepdims=True)
    spectrum = np.fft.fft2(gray, axes=(-2, -1))
    return np.real(np.fft.ifft2(np.exp(1j * np.angle(spectrum)), axes=(-2, -1)))


def test_phase_only_on_crafted_images_matches_numpy() -> None:
    # a delta has a flat magnitude: its phase-only image is a unit delta at the same place
    delta = torch.zeros(1, 3, 8, 8)
    delta[0, :, 2, 5] = torch.tensor([3.0, 6.0, 9.0])  # gray value 6
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 2, 5] = 1.0
    torch.testing.assert_close(phase_only(delta), expected, atol=1e-6, rtol=0)
    # a positive constant: only DC is non-zero, angle(0) = 0 elsewhere -> a delta at (0, 0)
    constant = phase_only(torch.full((1, 3, 6, 10), 0.7))
    assert constant[0, 0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    assert constant.flatten()[1:].abs().max() < 1e-6
    # images whose spectra have no (near-)zero coefficient, where the phase is well defined
    crafted = np.random.default_rng(0).uniform(-1, 1, (2, 3, 12, 16)).astype(np.float32)
    crafted[:, :, 3, 4] += 4.0  # a bright point
    spectrum = np.fft.fft2(crafted.astype(np.float64).mean(axis=1), axes=(-2, -1))
    assert np.abs(spectrum).min() > 0.05
    ours = phase_only(torch.from_numpy(crafted)).numpy()
    np.testing.assert_allclose(ours, numpy_phase_only(crafted), atol=2e-6, rtol=0)
    assert ours.shape == (2, 1, 12, 16) and np.abs(ours).max() > 0.05


def test_phase_is_per_image_and_equals_the_references_fftn_for_one_image() -> None:
    torch.manual_seed(0)
    batch = torch.randn(3, 3, 16, 16)
    ours = phase_only(batch)
    for i in range(3):
        single = batch[i : i + 1]
        torch.testing.assert_close(ours[i : i + 1], phase_only(single))
        # DeepfakeBench's first phase_without_amplitude: fftn over every axis of (1, 1, H, W)
        gray = single.mean(dim=1, keepdim=True)
        reference = torch.real(torch.fft.ifftn(torch.exp(1j * torch.angle(torch.fft.fftn(gray)))))
        torch.testing.assert_close(ours[i : i + 1], reference, atol=1e-6, rtol=0)
    # since its v2: fftn(gray, dim=(-1, -2)), per image on a whole batch
    gray = batch.mean(dim=1, keepdim=True)
    spectrum = torch.exp(1j * torch.angle(torch.fft.fftn(gray, dim=(-1, -2))))
    v2 = torch.real(torch.fft.ifftn(spectrum, dim=(-1, -2)))
    torch.testing.assert_close(ours, v2, atol=1e-6, rtol=0)
    # float64 in, float64 out (the float64 parity checks); float32 otherwise
    assert phase_only(batch.double()).dtype == torch.float64
    assert phase_only(batch.half()).dtype == torch.float32


@pytest.fixture(scope="module")
def reference() -> DeepfakeBenchXception:
    """DeepfakeBench's SPSL backbone (inc 4) with random weights, in eval mode."""
    model = DeepfakeBenchXception(inc=4)
    randomise(model, 1, lambda: model.features(torch.randn(8, 4, 64, 64)))
    return model


@pytest.fixture(scope="module")
def det() -> SPSL:
    torch.manual_seed(0)
    return SPSL()


def test_parameter_count_and_deepfakebench_keys(
    reference: DeepfakeBenchXception, det: SPSL
) -> None:
    assert count_parameters(reference) == REFERENCE_TOTAL
    assert count_parameters(reference.adjust_channel) == REFERENCE_ADJUST_CHANNEL
    assert count_parameters(det) == OURS
    assert abs(count_parameters(det) - REFERENCE_USED) / REFERENCE_USED < 0.01
    ours = {k.removeprefix("backbone."): v.shape for k, v in det.state_dict().items()}
    theirs = {
        k: v.shape
        for k, v in reference.state_dict().items()
        if not k.startswith(("adjust_channel.", "last_linear."))
    }
    assert {k: s for k, s in ours.items() if not k.startswith("head.")} == theirs
    assert ours["conv1.weight"] == (32, 4, 3, 3) and ours["head.weight"] == (1, 2048)
    shallow = SPSL(shallow=True)
    middle = sum(count_parameters(getattr(reference, f"block{i}")) for i in range(4, 12))
    assert count_parameters(shallow) == OURS - middle
    with torch.no_grad():
        assert shallow.eval()({"image": torch.randn(1, 3, 32, 32)})["logits"].shape == (1,)


def test_deepfakebench_checkpoint_predicts_like_the_reference(
    reference: DeepfakeBenchXception, det: SPSL, tmp_path: Path
) -> None:
    # DeepfakeBench saves the detector's state dict; here with DataParallel's prefix
    path = tmp_path / "spsl_best.pth"
    torch.save({f"module.backbone.{k}": v for k, v in reference.state_dict().items()}, path)
    det.load_weights(path)
    det.eval()
    torch.manual_seed(2)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        phase = torch.from_numpy(numpy_phase_only(images.numpy())).float()
        two_class = reference.classifier(reference.features(torch.cat([images, phase], 1)))
        expected = torch.softmax(two_class, dim=1)[:, 1]
        got = torch.sigmoid(det({"image": images})["logits"])
    assert expected.std() > 1e-3 and expected.min() > 1e-4 and expected.max() < 1 - 1e-4
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_wrong_files_name_missing_and_unexpected_keys(
    reference: DeepfakeBenchXception, det: SPSL, tmp_path: Path
) -> None:
    state = {f"backbone.{k}": v for k, v in reference.state_dict().items()}
    partial = {k: v for k, v in state.items() if k != "backbone.block7.rep.5.weight"}
    partial["backbone.extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError) as info:
        det.load_weights(tmp_path / "partial.pth")
    message = str(info.value)
    assert "\n" not in message and message.startswith("weights file")
    assert "missing keys: backbone.block7.rep.5.weight;" in message
    assert "unexpected keys: backbone.extra.weight" in message
    rgb = {**state, "backbone.conv1.weight": state["backbone.conv1.weight"][:, :3]}
    torch.save(rgb, tmp_path / "xception_best.pth")  # an RGB Xception is not SPSL's
    with pytest.raises(
        UserError, match=r"conv1\.weight: file \(32, 3, 3, 3\) vs model \(32, 4, 3, 3\)"
    ):
        det.load_weights(tmp_path / "xception_best.pth")


def test_imagenet_stem_is_initialised_as_the_reference(
    reference: DeepfakeBenchXception, tmp_path: Path
) -> None:
    # Cadene's xception-b5690688.pth layout: RGB stem, 2-D pointwise weights, an 'fc' head
    imagenet = {
        k: v
        for k, v in reference.state_dict().items()
        if not k.startswith(("last_linear.", "adjust_channel."))
    }
    imagenet["conv1.weight"] = (
        imagenet["conv1.weight"][:, :3] * torch.tensor([0.5, 1.0, 2.0])[:, None, None]
    )
    cadene = {k: (v[:, :, 0, 0] if "pointwise" in k else v) for k, v in imagenet.items()}
    cadene["fc.weight"], cadene["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(cadene, tmp_path / "xception-b5690688.pth")
    det = SPSL(pretrained_file=str(tmp_path / "xception-b5690688.pth"))
    ours = det.backbone.state_dict()
    stem = imagenet["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 4, 1, 1)
    torch.testing.assert_close(ours["conv1.weight"], stem, atol=0, rtol=0)
    for key in ("block5.rep.4.pointwise.weight", "bn4.running_var", "block12.skip.weight"):
        torch.testing.assert_close(ours[key], imagenet[key], atol=0, rtol=0)
    with pytest.raises(UserError, match=r"detector\.pretrained_file .*missing\.pth does not exist"):
        SPSL(pretrained_file=str(tmp_path / "missing.pth"))


def test_config_and_forward_at_native_size() -> None:
    det = load_detector("spsl")
    assert isinstance(det, SPSL) and not det.shallow
    p, t = det.preprocessing, det.train_preprocessing
    assert (p.size, p.resize, p.interpolation, p.crop) == (256, "square", "bicubic", "none")
    assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.5, 0.5, 0.5) and p.hflip == 0
    assert (t.hflip, t.blur_prob, t.jpeg_prob, tuple(t.jpeg_quality)) == (0.5, 0.5, 0.5, (40, 100))
    optimizer, scheduler = det.configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-4,
        (0.9, 0.999),
        1e-8,
        5e-4,
    )
    batch = transformed_batch(det, random_images(1, (300, 280)), [1])
    assert batch["image"].shape == (1, 3, 256, 256)
    with torch.no_grad():
        logits = det.eval()(batch)["logits"]
    assert logits.shape == (1,) and torch.isfinite(logits).all()


def test_backward_reaches_every_parameter_and_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    det = SPSL(preprocessing={"size": 32})
    labels = [0, 1, 1, 0]
    batch = transformed_batch(det, random_images(4, 40, seed=5), labels, train=True)
    assert batch["image"].shape == (4, 3, 32, 32)
    assert parameters_without_gradient(det, batch) == []
    assert overfit(det, batch, steps=40) < 0.05
