"""NPR: official key layout and checkpoints, an independent forward pass, shapes, training."""

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
from detectors.npr import NPR
from tests.detector_checks import (
    batch_norm,
    bottleneck,
    lrs_per_epoch,
    overfit,
    parameters_without_gradient,
    step_decay_every_10_epochs,
)

#: the reference networks/resnet.py ``resnet50(num_classes=1)``: 3x3 stem, layer1, layer2, fc1
REFERENCE_PARAMETERS = 1_437_761
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ReferenceLayout(nn.Module):
    """The module tree of the reference ``ResNet(Bottleneck, [3, 4, 6, 3])``, written from
    networks/resnet.py: it only builds conv1, bn1, layer1, layer2 and fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
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
    """Random weights in the official layout, with non-trivial BN statistics."""
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
    state["fc1.weight"].normal_(0.0, 0.5)
    state["fc1.bias"].fill_(-0.2)
    return state


def reference_forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """The paper's NPR detector, functionally: residual against the 2x2 block's corner pixel."""
    height, width = x.shape[-2:]
    x = x[..., : height // 2 * 2, : width // 2 * 2]
    corner = x[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    x = (x - corner) * 2.0 / 3.0
    x = F.relu(batch_norm(F.conv2d(x, s["conv1.weight"], stride=2, padding=1), s, "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for layer, blocks in (("layer1", 3), ("layer2", 4)):
        for i in range(blocks):
            stride = 2 if layer == "layer2" and i == 0 else 1
            x = bottleneck(x, s, f"{layer}.{i}", stride)
    x = x.mean(dim=(-2, -1))
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
    for name, shape in (
        ("odd.png", (255, 317, 3)),
        ("gray.png", (45, 64)),
        ("sq.jpg", (300, 300, 3)),
    ):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        paths.append(folder / name)
        Image.fromarray(array).save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return official_state_dict()


@pytest.fixture(scope="module")
def detector() -> NPR:
    torch.manual_seed(0)
    return NPR()


def test_parameter_count_and_official_keys(detector: NPR) -> None:
    reference = ReferenceLayout()
    assert count_parameters(reference) == REFERENCE_PARAMETERS
    assert count_parameters(detector) == REFERENCE_PARAMETERS
    ours, theirs = detector.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)
    assert ours["conv1.weight"].shape == (64, 3, 3, 3) and ours["fc1.weight"].shape == (1, 512)


def test_forward_at_test_size_and_odd_sizes(detector: NPR) -> None:
    detector.eval()
    with torch.no_grad():
        out = detector({"image": torch.randn(1, 3, 256, 256)})
        odd = detector({"image": torch.randn(2, 3, 65, 47)})
    assert out["logits"].shape == (1,) and out["logits"].dtype == torch.float32
    assert odd["logits"].shape == (2,)


def test_backward_reaches_every_parameter(detector: NPR) -> None:
    assert all(p.requires_grad for p in detector.parameters())
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([0.0, 1.0])}
    assert not parameters_without_gradient(detector, batch)


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    det = NPR()
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert overfit(det, batch, steps=60, lr=1e-3) < 0.05


def test_config_composes_with_the_reference_schedule() -> None:
    det = load_detector("npr")
    assert isinstance(det, NPR) and det.config_name == "npr"
    p, t = det.preprocessing, det.train_preprocessing
    assert (p.resize, p.resize_to, p.interpolation, p.crop) == ("square", 256, "bilinear", "none")
    assert (t.resize, t.resize_to, t.crop, t.size, t.hflip) == ("square", 256, "center", 224, 0.5)
    assert (p.blur_prob, p.jpeg_prob) == (0.0, 0.0)
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    # train.py: lr x0.9 at the end of epoch e (from 0) when e % delr_freq == 0 and e != 0
    official = step_decay_every_10_epochs(2e-4, 0.9, 50)
    np.testing.assert_allclose(lrs_per_epoch(optimizer, scheduler, 50), official, rtol=1e-12)


@pytest.mark.parametrize("layout", ["NPR.pth", "model_epoch_last_3090.pth"])
def test_official_checkpoint_predicts_like_the_reference(
    official: dict[str, torch.Tensor], tmp_path: Path, layout: str
) -> None:
    path = tmp_path / layout
    if layout == "NPR.pth":
        torch.save(official, path)  # a plain state dict
    else:  # a training checkpoint: {'model': ...} with DataParallel prefixes
        torch.save(
            {"model": {f"module.{k}": v for k, v in official.items()}, "total_steps": 9}, path
        )
    paths = write_images(tmp_path)
    with torch.no_grad():
        expected = reference_forward(torch.stack([reference_input(p) for p in paths]), official)
    assert expected.abs().max() < 8 and expected.std() > 1e-3

    det = load_detector("npr", weights=path)
    probs = det.predict(paths, batch_size=2, device="cpu")
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=1e-6, rtol=0)
    batch = torch.stack(
        [det.eval_transform({"image": Image.open(p).convert("RGB")})["image"] for p in paths]
    )
    with torch.no_grad():
        logits = det.eval()({"image": batch})["logits"]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_no_resize_protocol_trims_odd_images(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "NPR.pth"
    torch.save(official, path)
    det = load_detector("npr", weights=path, preprocessing={"resize": "none"})
    image = write_images(tmp_path)[0]  # 255 x 317
    with torch.no_grad():
        expected = reference_forward(reference_input(image, resize=False)[None], official)
    got = det.predict(image, device="cpu")
    np.testing.assert_allclose(got, torch.sigmoid(expected).numpy(), atol=1e-6, rtol=0)


def test_unused_trainer_head_is_ignored_but_nothing_else(
    detector: NPR, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    with_head = {**official, "fc.weight": torch.zeros(1, 2048), "fc.bias": torch.zeros(1)}
    torch.save({"model": with_head}, tmp_path / "old.pth")
    detector.load_weights(tmp_path / "old.pth")
    assert torch.equal(detector.state_dict()["fc1.weight"], official["fc1.weight"])

    other = {**official, "fc.weight": torch.zeros(1, 512)}
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"missing keys: none; unexpected keys: fc\.weight$"):
        detector.load_weights(tmp_path / "other.pth")


def test_wrong_files_name_missing_and_unexpected_keys(
    detector: NPR, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    partial = {k: v for k, v in official.items() if not k.startswith("layer2.3.")}
    partial["classifier.weight"] = torch.zeros(1, 512)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError) as info:
        load_detector("npr", weights=tmp_path / "partial.pth")
    message = str(info.value)
    assert "\n" not in message and message.startswith("weights file")
    assert "missing keys: layer2.3.bn1.bias" in message
    assert "unexpected keys: classifier.weight" in message

    # a CNNSpot file (full ResNet-50): layer3/layer4 unexpected, fc1 missing
    cnnspot_like = {
        **{k: v for k, v in official.items() if not k.startswith("fc1.")},
        "layer3.0.conv1.weight": torch.zeros(256, 512, 1, 1),
        "layer4.0.conv1.weight": torch.zeros(512, 1024, 1, 1),
        "fc.weight": torch.zeros(1, 2048),
        "fc.bias": torch.zeros(1),
    }
    torch.save({"model": cnnspot_like}, tmp_path / "cnnspot.pth")
    with pytest.raises(
        UserError,
        match=r"missing keys: fc1\.bias, fc1\.weight; unexpected keys: layer3\.0\.conv1\.weight, layer4",
    ):
        detector.load_weights(tmp_path / "cnnspot.pth")


def test_official_alternative_protocol(tmp_path: Path) -> None:
    """the GANGen-Detection protocol (test.py no_resize=True), against the authors' code
    (``tests/official/npr.json``, ``alternatives``)."""
    from tests.official.alternatives import check_alternatives

    check_alternatives("npr", tmp_path)
