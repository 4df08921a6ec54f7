"""FreqNet: official key layout and checkpoints, an independent forward pass, shapes, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models.resnet import Bottleneck

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.freqnet import FreqNet
from tests.detector_checks import (
    bottleneck,
    lrs_per_epoch,
    overfit,
    parameters_without_gradient,
    step_decay_every_10_epochs,
)

#: the reference networks/freqnet.py ``freqnet()``: weight1..4/bias1..4, realconv/imagconv
#: 1..4, ResNet-50 layer1 and layer2, fc1 512 -> 1
REFERENCE_PARAMETERS = 1_850_433
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ReferenceLayout(nn.Module):
    """The module tree of the reference ``FreqNet(Bottleneck, [3, 4])``, written from
    networks/freqnet.py (its raw kernels are created with ``.cuda()``; here on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight1 = nn.Parameter(torch.randn(64, 3, 1, 1))
        self.bias1 = nn.Parameter(torch.randn(64))
        self.realconv1 = nn.Conv2d(64, 64, 1, bias=False)
        self.imagconv1 = nn.Conv2d(64, 64, 1, bias=False)
        self.weight2 = nn.Parameter(torch.randn(64, 64, 1, 1))
        self.bias2 = nn.Parameter(torch.randn(64))
        self.realconv2 = nn.Conv2d(64, 64, 1, bias=False)
        self.imagconv2 = nn.Conv2d(64, 64, 1, bias=False)
        self.weight3 = nn.Parameter(torch.randn(256, 256, 1, 1))
        self.bias3 = nn.Parameter(torch.randn(256))
        self.realconv3 = nn.Conv2d(256, 256, 1, bias=False)
        self.imagconv3 = nn.Conv2d(256, 256, 1, bias=False)
        self.weight4 = nn.Parameter(torch.randn(256, 256, 1, 1))
        self.bias4 = nn.Parameter(torch.randn(256))
        self.realconv4 = nn.Conv2d(256, 256, 1, bias=False)
        self.imagconv4 = nn.Conv2d(256, 256, 1, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 64, 3, 1)
        self.layer2 = self._layer(256, 128, 4, 2)
        self.fc1 = nn.Linear(512, 1)

    @staticmethod
    def _layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
        layers = [Bottleneck(inplanes, planes, stride, down)]
        layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout, with non-trivial BN statistics and kernels
    scaled so that activations stay O(1) through the 4 frequency stages."""
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in ReferenceLayout().state_dict().items()}
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith(".weight") and value.ndim == 1:  # BatchNorm scales
            value.uniform_(0.5, 1.5)
        elif key.endswith(".bias") and not key.startswith("fc1."):
            value.normal_(0.0, 0.1)
        elif key[:6] == "weight" or "conv" in key[:9]:
            value.normal_(0.0, (2.0 / value.shape[1]) ** 0.5)
        elif key[:4] == "bias":
            value.normal_(0.0, 0.1)
    state["fc1.weight"].normal_(0.0, 0.5)
    state["fc1.bias"].fill_(-4.8)  # logits near 0
    return state


# -- an independent forward pass, written from the paper and networks/freqnet.py --------
def _centred_band(n: int, scale: int = 4) -> torch.Tensor:
    """1 where a frequency survives, on the *unshifted* FFT grid: the centred band
    [n//2 - n//scale, n//2 + n//scale) of the shifted spectrum is removed."""
    keep = torch.ones(n)
    keep[n // 2 - n // scale : n // 2 + n // scale] = 0
    return torch.roll(keep, shifts=-(n // 2))  # undo fftshift (a roll by n//2)


def _hf_space(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    # the reference zeroes a square (rows AND columns in the band), not a cross
    keep = 1 - (1 - _centred_band(h))[:, None] * (1 - _centred_band(w))[None, :]
    return F.relu(torch.fft.ifft2(torch.fft.fft2(x, norm="ortho") * keep, norm="ortho").real)


def _hf_channels(x: torch.Tensor) -> torch.Tensor:
    keep = _centred_band(x.shape[1]).view(1, -1, 1, 1)
    spectrum = torch.fft.fft(x, dim=1, norm="ortho") * keep
    return F.relu(torch.fft.ifft(spectrum, dim=1, norm="ortho").real)


def _fcl(x: torch.Tensor, s: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    # a 1x1 convolution commutes with fftshift (it mixes channels only), so the shift is moot
    spectrum = torch.fft.fft2(x, norm="ortho")
    real = torch.einsum("oc,bchw->bohw", s[f"realconv{i}.weight"][:, :, 0, 0], spectrum.real)
    imag = torch.einsum("oc,bchw->bohw", s[f"imagconv{i}.weight"][:, :, 0, 0], spectrum.imag)
    return F.relu(torch.fft.ifft2(torch.complex(real, imag), norm="ortho").real)


def _point(x: torch.Tensor, s: dict[str, torch.Tensor], i: int, stride: int) -> torch.Tensor:
    x = x[..., ::stride, ::stride]
    out = torch.einsum("oc,bchw->bohw", s[f"weight{i}"][:, :, 0, 0], x)
    return F.relu(out + s[f"bias{i}"].view(1, -1, 1, 1))


def _layer(x: torch.Tensor, s: dict[str, torch.Tensor], layer: str, blocks: int) -> torch.Tensor:
    for i in range(blocks):
        x = bottleneck(x, s, f"{layer}.{i}", 2 if layer == "layer2" and i == 0 else 1)
    return x


def reference_forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    x = _fcl(_hf_channels(_point(_hf_space(x), s, 1, 1)), s, 1)
    x = _fcl(_hf_channels(_point(_hf_space(x), s, 2, 2)), s, 2)
    x = _layer(F.max_pool2d(x, 3, 2, 1), s, "layer1", 3)
    x = _fcl(_point(_hf_space(x), s, 3, 1), s, 3)
    x = _fcl(_point(_hf_space(x), s, 4, 2), s, 4)
    x = _layer(x, s, "layer2", 4).mean(dim=(-2, -1))
    return (x @ s["fc1.weight"].T + s["fc1.bias"]).squeeze(1)


def reference_input(path: Path, resize: bool = True) -> torch.Tensor:
    """test.py's transforms, independently: PIL bilinear Resize((256, 256)), ToTensor, Normalize."""
    image = Image.open(path).convert("RGB")
    if resize:
        image = image.resize((256, 256), Image.BILINEAR)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    return (array - MEAN) / STD


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for name, shape in (("odd.png", (255, 317, 3)), ("gray.jpg", (45, 64))):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        paths.append(folder / name)
        Image.fromarray(array).save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return official_state_dict()


@pytest.fixture(scope="module")
def detector() -> FreqNet:
    torch.manual_seed(0)
    return FreqNet()


def test_parameter_count_and_official_keys(detector: FreqNet) -> None:
    reference = ReferenceLayout()
    assert count_parameters(reference) == REFERENCE_PARAMETERS
    assert count_parameters(detector) == REFERENCE_PARAMETERS
    ours, theirs = detector.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)


def test_high_pass_zeroes_the_centred_band() -> None:
    from detectors.freqnet import high_freq_channels, high_freq_spatial

    # a constant image is pure DC: nothing survives; a Nyquist checkerboard survives whole
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(high_freq_spatial(flat), torch.zeros_like(flat), atol=1e-6)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    checker = checker.expand(1, 3, 8, 8)
    torch.testing.assert_close(high_freq_spatial(checker), checker.clamp(min=0))
    x = torch.randn(2, 64, 5, 7)
    torch.testing.assert_close(high_freq_spatial(x), _hf_space(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(high_freq_channels(x), _hf_channels(x), atol=1e-6, rtol=0)


def test_forward_at_small_and_odd_sizes(detector: FreqNet) -> None:
    detector.eval()
    with torch.no_grad():
        out = detector({"image": torch.randn(1, 3, 64, 64)})
        odd = detector({"image": torch.randn(2, 3, 45, 37)})
    assert out["logits"].shape == (1,) and out["logits"].dtype == torch.float32
    assert odd["logits"].shape == (2,) and torch.isfinite(odd["logits"]).all()


def test_backward_reaches_every_parameter(detector: FreqNet) -> None:
    assert all(p.requires_grad for p in detector.parameters())
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0.0, 1.0])}
    assert not parameters_without_gradient(detector, batch)


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    det = FreqNet()
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert overfit(det, batch, steps=60, lr=1e-3) < 0.05


def test_config_composes_with_the_reference_schedule() -> None:
    det = load_detector("freqnet")
    assert isinstance(det, FreqNet) and det.config_name == "freqnet"
    p, t = det.preprocessing, det.train_preprocessing
    assert (p.resize, p.resize_to, p.interpolation, p.crop) == ("square", 256, "bilinear", "none")
    assert (t.resize, t.resize_to, t.crop, t.size, t.hflip) == ("square", 256, "center", 224, 0.5)
    assert (p.blur_prob, p.jpeg_prob) == (0.0, 0.0)
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    # train.py: lr x0.8 at the end of epoch e (from 0) when e % delr_freq == 0 and e != 0
    official = step_decay_every_10_epochs(1e-3, 0.8, 85)
    np.testing.assert_allclose(lrs_per_epoch(optimizer, scheduler, 85), official, rtol=1e-12)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("freqnet_images"))


def test_official_checkpoint_predicts_like_the_reference(
    official: dict[str, torch.Tensor], images: list[Path], tmp_path: Path
) -> None:
    path = tmp_path / "4-classes-freqnet.pth"
    torch.save(official, path)  # a plain state dict, what test.py loads strictly
    with torch.no_grad():
        expected = reference_forward(torch.stack([reference_input(p) for p in images]), official)
    assert expected.abs().max() < 2 and (expected[0] - expected[1]).abs() > 1e-3

    det = load_detector("freqnet", weights=path)
    probs = det.predict(images, batch_size=2, device="cpu")
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=1e-6, rtol=0)
    logits = torch.logit(torch.from_numpy(probs).double()).float()  # |logit| < 2: exact enough
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_training_checkpoint_layout_loads(
    detector: FreqNet, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    # {'model': ...} with DataParallel prefixes, as the reference trainer's save_networks
    path = tmp_path / "model_epoch_best.pth"
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "total_steps": 3}, path)
    detector.load_weights(path)
    ours = detector.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in official.items())


def test_no_resize_protocol_keeps_odd_sizes(
    official: dict[str, torch.Tensor], images: list[Path], tmp_path: Path
) -> None:
    path = tmp_path / "w.pth"
    torch.save(official, path)
    det = load_detector("freqnet", weights=path, preprocessing={"resize": "none"})
    image = images[1]  # 45 x 64 grey
    with torch.no_grad():
        expected = reference_forward(reference_input(image, resize=False)[None], official)
        got = det.eval()(
            {
                "image": det.eval_transform({"image": Image.open(image).convert("RGB")})["image"][
                    None
                ]
            }
        )
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=0)


def test_wrong_files_name_missing_and_unexpected_keys(
    detector: FreqNet, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    partial = {k: v for k, v in official.items() if not k.startswith("imagconv4")}
    partial["fc.weight"] = torch.zeros(1, 2048)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError) as info:
        detector.load_weights(tmp_path / "partial.pth")
    message = str(info.value)
    assert "\n" not in message and message.startswith("weights file")
    assert "missing keys: imagconv4.weight" in message
    assert "unexpected keys: fc.weight" in message


def test_official_alternative_protocol(tmp_path: Path) -> None:
    """the GANGen-Detection protocol (test.py no_resize=True), against the authors' code
    (``tests/official/freqnet.json``, ``alternatives``)."""
    from tests.official.alternatives import check_alternatives

    check_alternatives("freqnet", tmp_path)
