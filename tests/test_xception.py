"""Xception: the Cadene/FF++ layout, community checkpoints (DeepfakeBench, FF++ pickles), training."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.layers.pickled_module import read_pickled_module
from detectors.layers.xception import xception_backbone
from detectors.xception import XceptionDetector
from tests.detector_checks import overfit, parameters_without_gradient, random_images

#: FaceForensics++ ``TransferModel('xception', num_out_classes=2)``: the Cadene Xception
#: (20,806,952 without its classifier) + ``last_linear`` Linear(2048, 2) (4,098);
#: counted on :class:`TransferModel` below, written from network/xception.py and models.py
REFERENCE_PARAMETERS = 20_811_050
#: ours has one output row instead of two: 2048 weights + 1 bias fewer
OURS = REFERENCE_PARAMETERS - 2049
#: DeepfakeBench's XceptionDetector adds ``adjust_channel`` (Conv2d 2048->512 with bias:
#: 1,049,088; BatchNorm2d(512): 1,024), built but unused in mode "original"
DEEPFAKEBENCH_PARAMETERS = REFERENCE_PARAMETERS + 1_050_112


# -- the reference network, written from FaceForensics++'s network/xception.py ----------
class SeparableConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, pad: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, k, stride, pad, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    def __init__(
        self, cin: int, cout: int, reps: int, stride: int = 1, relu_first=True, grow_first=True
    ) -> None:
        super().__init__()
        self.skip = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None
        )
        self.skipbn = nn.BatchNorm2d(cout) if self.skip is not None else None
        rep: list[nn.Module] = []
        width = cin
        if grow_first:
            rep += [
                nn.ReLU(inplace=True),
                SeparableConv2d(cin, cout, 3, 1, 1),
                nn.BatchNorm2d(cout),
            ]
            width = cout
        for _ in range(reps - 1):
            rep += [nn.ReLU(inplace=True), SeparableConv2d(width, width, 3, 1, 1)]
            rep += [nn.BatchNorm2d(width)]
        if not grow_first:
            rep += [
                nn.ReLU(inplace=True),
                SeparableConv2d(cin, cout, 3, 1, 1),
                nn.BatchNorm2d(cout),
            ]
        rep = rep[1:] if not relu_first else [nn.ReLU(inplace=False), *rep[1:]]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skipbn(self.skip(x)) if self.skip is not None else x
        return self.rep(x) + skip


class ReferenceXception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.block1 = Block(64, 128, 2, 2, relu_first=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        for i in range(4, 12):
            setattr(self, f"block{i}", Block(728, 728, 3, 1))
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = SeparableConv2d(1536, 2048, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(2048)
        self.last_linear = nn.Linear(2048, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 2048-d features (``logits`` before ``last_linear``)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_linear(self.features(x))


class TransferModel(nn.Module):
    """FaceForensics++ network/models.py, with the attribute names of the released pickles."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.modelchoice = "xception"
        self.model = ReferenceXception()
        linear = nn.Linear(2048, 2)
        self.model.last_linear = nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def calibrated(model: nn.Module, size: int = 64, seed: int = 0) -> nn.Module:
    """Random weights whose BatchNorm statistics are those of a random batch (a live signal)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model.eval()


# -- pickles that run code when unpickled normally ----------------------------------------
def write_marker(path: str) -> str:
    Path(path).write_text("unpickling ran code")
    return path


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (write_marker, (self.marker,))


class Booby(nn.Module):
    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.payload = Payload(marker)


@pytest.fixture(scope="module")
def transfer_model() -> TransferModel:
    return calibrated(TransferModel(dropout=0.5))


@pytest.fixture(scope="module")
def detector() -> XceptionDetector:
    torch.manual_seed(0)
    return XceptionDetector()


def test_parameter_count_and_cadene_key_names(
    detector: XceptionDetector, transfer_model: TransferModel
) -> None:
    assert count_parameters(transfer_model) == REFERENCE_PARAMETERS
    assert count_parameters(detector) == OURS
    assert abs(OURS - REFERENCE_PARAMETERS) / REFERENCE_PARAMETERS < 0.01
    assert (DEEPFAKEBENCH_PARAMETERS - OURS) / DEEPFAKEBENCH_PARAMETERS < 0.05
    theirs = {
        k: v.shape for k, v in transfer_model.model.state_dict().items() if "last_linear" not in k
    }
    ours = {k: v.shape for k, v in detector.backbone.state_dict().items()}
    assert ours == theirs
    assert detector.head.weight.shape == (1, 2048)


def test_forward_at_native_size(detector: XceptionDetector) -> None:
    image = random_images(1, (320, 280))[0]
    x = detector.eval_transform({"image": image, "record": None})["image"]
    assert x.shape == (3, 299, 299) and x.min() >= -1.0 and x.max() <= 1.0
    with torch.no_grad():
        out = detector.eval()({"image": x[None]})
    assert out["logits"].shape == (1,) and torch.isfinite(out["logits"]).all()


def test_backward_reaches_every_parameter(detector: XceptionDetector) -> None:
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0.0, 1.0])}
    assert parameters_without_gradient(detector, batch) == []


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    det = XceptionDetector()
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert overfit(det, batch, steps=60, lr=1e-3) < 0.05


def test_config_follows_the_references() -> None:
    det = load_detector("xception")
    assert isinstance(det, XceptionDetector) and det.config_name == "xception"
    p = det.preprocessing
    assert (p.size, p.resize, p.crop, p.mean, p.std) == (
        299,
        "square",
        "none",
        (0.5,) * 3,
        (0.5,) * 3,
    )
    assert (p.hflip, p.blur_prob, p.jpeg_prob, tuple(p.jpeg_quality)) == (0.5, 0.5, 0.5, (40, 100))
    optimizer, scheduler = det.configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-4,
        (0.9, 0.999),
        1e-8,
        5e-4,
    )


def _reference_probability(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=1)[:, 1].numpy()


def test_deepfakebench_checkpoint_matches_softmax_of_the_reference(
    transfer_model: TransferModel, tmp_path: Path
) -> None:
    # XceptionDetector.state_dict() saved from DDP: dropout false, so last_linear is a Linear
    state = {}
    for key, value in transfer_model.model.state_dict().items():
        state[f"module.backbone.{key.replace('last_linear.1.', 'last_linear.')}"] = value
    adjust = nn.Sequential(nn.Conv2d(2048, 512, 1), nn.BatchNorm2d(512))
    state.update({f"module.backbone.adjust_channel.{k}": v for k, v in adjust.state_dict().items()})
    torch.save(state, tmp_path / "xception_best.pth")

    det = load_detector("xception", weights=tmp_path / "xception_best.pth")
    torch.manual_seed(3)
    x = torch.randn(3, 3, 96, 96)
    expected = _reference_probability(transfer_model, x)
    assert expected.std() > 1e-3
    np.testing.assert_allclose(det.predict_batch({"image": x}).numpy(), expected, atol=1e-5)


def test_a_deepfakebench_file_brings_its_input_and_a_users_setting_wins(
    transfer_model: TransferModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = {f"backbone.{k}": v for k, v in transfer_model.model.state_dict().items()}
    state = {k.replace("last_linear.1.", "last_linear."): v for k, v in state.items()}
    torch.save(state, tmp_path / "xception_best.pth")
    with caplog.at_level(logging.INFO, logger="detectors.base"):
        det = load_detector("xception", weights=tmp_path / "xception_best.pth")
    p = det.preprocessing
    # load_rgb: cv2.resize((256, 256), INTER_CUBIC); not the 299 of the FF++ defaults
    assert (p.size, p.resize_to, p.resize, p.interpolation, p.resize_backend) == (
        256,
        256,
        "square",
        "bicubic",
        "cv2",
    )
    assert det.config["preprocessing"]["resize_to"] == 256
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detectors.base"):
        det = load_detector(
            "xception",
            weights=tmp_path / "xception_best.pth",
            preprocessing={"interpolation": "nearest"},
        )
    assert det.preprocessing.interpolation == "nearest" and det.preprocessing.size == 256
    assert "interpolation=nearest departs" in caplog.text


def test_area_is_judged_against_the_backend_of_the_files_protocol(
    transfer_model: TransferModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The defaults resize with PIL, where ``area`` does not exist; a DeepfakeBench file
    switches to cv2, so ``interpolation=area`` with that file is a valid departure."""
    state = {f"backbone.{k}": v for k, v in transfer_model.model.state_dict().items()}
    state = {k.replace("last_linear.1.", "last_linear."): v for k, v in state.items()}
    torch.save(state, tmp_path / "xception_best.pth")
    area = {"preprocessing": {"interpolation": "area"}}
    with caplog.at_level(logging.WARNING, logger="detectors.base"):
        det = load_detector("xception", weights=tmp_path / "xception_best.pth", **area)
    p = det.preprocessing
    assert (p.interpolation, p.resize_backend, p.size) == ("area", "cv2", 256)
    assert "interpolation=area departs" in caplog.text
    with pytest.raises(UserError, match=r"pass preprocessing\.resize_backend=cv2"):
        load_detector("xception", **area)  # no file: the PIL defaults stay


def test_faceforensics_pickled_transfer_model(
    detector: XceptionDetector,
    transfer_model: TransferModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "full_c23.p"
    torch.save(transfer_model, path)  # what the FF++ release is: a whole pickled model
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(path, weights_only=True)

    name, state = read_pickled_module(path)
    assert name.endswith("TransferModel")
    assert "model.last_linear.1.weight" in state and "model.block12.skipbn.running_var" in state

    detector.load_weights(path)
    torch.manual_seed(4)
    x = torch.randn(3, 3, 80, 80)
    expected = _reference_probability(transfer_model, x)
    assert expected.std() > 1e-3
    np.testing.assert_allclose(detector.predict_batch({"image": x}).numpy(), expected, atol=1e-5)
    # the file keeps FF++'s input (the default); a size the user set wins, with a warning
    sized = XceptionDetector(preprocessing={"size": 256})
    with caplog.at_level(logging.WARNING, logger="detectors.base"):
        sized.load_weights(path)
    assert sized.preprocessing.size == 256
    assert "departs from the protocol of FaceForensics++ weights" in caplog.text


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_module_is_read_without_running_its_code(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "marker"
    torch.manual_seed(0)
    model = Booby(marker)
    path = tmp_path / "booby.p"
    torch.save(model, path, _use_new_zipfile_serialization=zip_format)  # FF++'s are pre-1.6
    torch.load(path, weights_only=False)  # an ordinary unpickling runs the payload
    assert marker.exists()
    marker.unlink()

    name, state = read_pickled_module(path)
    assert not marker.exists()
    assert name.endswith("Booby")
    expected = model.state_dict()
    assert list(state) == list(expected)  # the non-persistent buffer is left out, as there
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_imagenet_start_from_a_cadene_file(
    detector: XceptionDetector, transfer_model: TransferModel, tmp_path: Path
) -> None:
    imagenet = transfer_model.model
    state = {  # xception-b5690688.pth keeps pointwise kernels 2-D and calls the head fc
        k: (v.flatten(1) if "pointwise" in k else v)
        for k, v in imagenet.state_dict().items()
        if "last_linear" not in k
    }
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, tmp_path / "xception-b5690688.pth")

    backbone = xception_backbone(pretrained_file=str(tmp_path / "xception-b5690688.pth")).eval()
    torch.manual_seed(5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), imagenet.eval().features(x), atol=1e-5, rtol=1e-5)
    # a 12-channel stem starts from the RGB kernel on each group of three, divided by 4
    wide = xception_backbone(12, str(tmp_path / "xception-b5690688.pth"))
    torch.testing.assert_close(wide.conv1.weight, imagenet.conv1.weight.repeat(1, 4, 1, 1) / 4)

    with pytest.raises(UserError, match=r"pretrained_file .* does not exist"):
        xception_backbone(pretrained_file=str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match=r"classifier of shape \(1000, 2048\).*pretrained_file"):
        detector.load_weights(tmp_path / "xception-b5690688.pth")


def test_wrong_files_name_missing_and_unexpected_keys(
    detector: XceptionDetector, transfer_model: TransferModel, tmp_path: Path
) -> None:
    state = {f"backbone.{k}": v for k, v in transfer_model.model.state_dict().items()}
    del state["backbone.block7.rep.4.pointwise.weight"]
    state["backbone.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(UserError) as info:
        detector.load_weights(tmp_path / "broken.pth")
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys: backbone.block7.rep.4.pointwise.weight;" in message
    assert "unexpected keys: backbone.extra.weight" in message

    (tmp_path / "junk.p").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match=r"junk\.p"):
        detector.load_weights(tmp_path / "junk.p")
