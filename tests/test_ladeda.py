"""LaDeDa: official key layout and file, an independent forward pass, 9 x 9 patches, training."""

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
from detectors.formats import formats_for
from detectors.ladeda import LaDeDa
from tests.detector_checks import batch_norm, overfit, parameters_without_gradient
from tests.official.weights import key_spec, seeded_state_dict

#: the authors' ``LaDeDa9(num_classes=1)`` with test.py's ``fc = nn.Linear(2048, 1)``,
#: counted by running networks/LaDeDa.py at e734562 (outside the project)
REFERENCE_PARAMETERS = 13_641_793
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
#: (stage planes, blocks, stride of the first block, leading blocks with a 3x3 conv2)
STAGES = ((64, 3, 2, 1), (128, 4, 2, 1), (256, 6, 2, 0), (512, 3, 1, 0))


class ReferenceLayout(nn.Module):
    """The module tree of the reference ``LaDeDa9``, written from networks/LaDeDa.py with
    torchvision's Bottleneck, its ``conv2`` made 1x1 where ``kernel3`` says so."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 1, bias=False)
        self.conv2 = nn.Conv2d(64, 64, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, blocks, stride, kernel3) in enumerate(STAGES, start=1):
            layers = []
            for i in range(blocks):
                down = None
                if i == 0:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * 4),
                    )
                block = Bottleneck(inplanes, planes, stride if i == 0 else 1, down)
                if i >= kernel3:
                    block.conv2 = nn.Conv2d(planes, planes, 1, bias=False)
                layers.append(block)
                inplanes = planes * 4
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, 1)


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return seeded_state_dict(key_spec(ReferenceLayout().state_dict()), seed=3)


def reference_forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """The paper's LaDeDa9, functionally: NPR residual, unpadded convolutions, cropped
    shortcuts, mean over the last map, fc."""
    corner = x[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    x = x - corner
    x = F.relu(batch_norm(F.conv2d(F.conv2d(x, s["conv1.weight"]), s["conv2.weight"]), s, "bn1"))
    for index, (_, blocks, stride, _) in enumerate(STAGES, start=1):
        for i in range(blocks):
            name, step = f"layer{index}.{i}", stride if i == 0 else 1
            out = F.relu(batch_norm(F.conv2d(x, s[f"{name}.conv1.weight"]), s, f"{name}.bn1"))
            out = F.conv2d(out, s[f"{name}.conv2.weight"], stride=step)  # no padding
            out = F.relu(batch_norm(out, s, f"{name}.bn2"))
            out = batch_norm(F.conv2d(out, s[f"{name}.conv3.weight"]), s, f"{name}.bn3")
            short = x
            if i == 0:
                short = F.conv2d(x, s[f"{name}.downsample.0.weight"], stride=step)
                short = batch_norm(short, s, f"{name}.downsample.1")
            diff = short.shape[-1] - out.shape[-1]  # the reference's residual[:, :, :-diff, :-diff]
            if diff:
                short = short[:, :, :-diff, :-diff]
            x = F.relu(out + short)
    x = F.avg_pool2d(x, x.shape[2], stride=1).flatten(1)
    return (x @ s["fc.weight"].T + s["fc.bias"]).squeeze(1)


def reference_input(path: Path, side: int = 256) -> torch.Tensor:
    """test.py's transforms, independently: PIL bilinear Resize((256, 256)), ToTensor, Normalize."""
    image = Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    return (array - MEAN) / STD


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for name, shape in (
        ("wide.png", (90, 131, 3)),
        ("gray.png", (45, 64)),
        ("sq.jpg", (70, 70, 3)),
    ):
        paths.append(folder / name)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1], quality=90)
    return paths


def small(seed: int = 0) -> LaDeDa:
    torch.manual_seed(seed)
    return LaDeDa(blocks=(1, 1, 1, 1))


def test_full_size_parameter_count_and_official_keys() -> None:
    with torch.device("meta"):
        full, reference = LaDeDa(), ReferenceLayout()
    assert count_parameters(reference) == REFERENCE_PARAMETERS
    assert count_parameters(full) == REFERENCE_PARAMETERS
    ours, theirs = full.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)
    assert ours["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert ours["layer2.1.conv2.weight"].shape == (128, 128, 1, 1)
    assert full.bn1.momentum == 0.001


def test_each_patch_logit_sees_a_9x9_window_and_the_image_logit_is_their_mean() -> None:
    det = small().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = det.patch_logits(x)
        assert base.shape == (1, 7, 7)
        torch.testing.assert_close(det({"image": x})["logits"], base.mean(dim=(1, 2)))
        for row, col in ((21, 40), (24, 9), (63, 0)):
            y = x.clone()
            y[..., row, col] += 5.0
            changed = (det.patch_logits(y) - base).abs()[0] > 1e-6
            # the NPR residual moves with its 2x2 block's top-left pixel
            rows = {row} if row % 2 else {row, row + 1}
            cols = {col} if col % 2 else {col, col + 1}
            expected = torch.tensor(
                [[any(8 * i <= r < 8 * i + 9 for r in rows) for _ in range(7)] for i in range(7)]
            ) & torch.tensor([[any(8 * j <= c < 8 * j + 9 for c in cols) for j in range(7)]] * 7)
            assert torch.equal(changed, expected), (row, col)


def test_forward_shapes_odd_and_non_square_sizes() -> None:
    det = small().eval()
    with torch.no_grad():
        assert det({"image": torch.randn(2, 3, 41, 67)})["logits"].shape == (2,)
        assert det.patch_logits(torch.randn(1, 3, 10, 11)).shape == (1, 1, 1)
        with pytest.raises(ValueError, match="at least 10 x 10 pixels"):
            det({"image": torch.randn(1, 3, 9, 64)})


def test_backward_reaches_every_parameter_and_overfits() -> None:
    det = small()
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert not parameters_without_gradient(det, batch)
    assert overfit(det, batch, steps=60, lr=1e-3) < 0.05


def test_config_composes_with_the_reference_defaults() -> None:
    det = load_detector("ladeda")
    assert isinstance(det, LaDeDa) and det.config_name == "ladeda"
    assert count_parameters(det) == REFERENCE_PARAMETERS
    p, t = det.preprocessing, det.train_preprocessing
    assert (p.resize, p.resize_to, p.interpolation, p.crop) == ("square", 256, "bilinear", "none")
    assert (t.resize, t.resize_to, t.crop, t.size, t.hflip) == ("square", 256, "center", 224, 0.5)
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 2e-4
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_official_file_predicts_like_the_reference(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "WildRF_LaDeDa.pth"
    torch.save(official, path)  # test.py: torch.load(model_path) is the state dict itself
    assert [f.name for f in formats_for(official)] == ["LaDeDa (LaDeDa9)"]
    paths = write_images(tmp_path)
    with torch.no_grad():
        expected = reference_forward(torch.stack([reference_input(p, 64) for p in paths]), official)
    assert expected.abs().max() < 8 and expected.std() > 1e-3
    # the official 256 x 256 protocol at 64 px, to keep the full-size network quick on CPU
    det = load_detector("ladeda", weights=path, preprocessing={"resize_to": 64})
    probs = det.predict(paths, batch_size=2, device="cpu")
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=1e-6, rtol=0)
    with torch.no_grad():
        at_256 = reference_forward(reference_input(paths[0])[None], official)
    default = load_detector("ladeda", weights=path)
    got = default.predict(paths[0], device="cpu")
    np.testing.assert_allclose(got, torch.sigmoid(at_256).numpy(), atol=1e-6, rtol=0)


def test_wrong_files_name_missing_and_unexpected_keys(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    det = small()
    with pytest.raises(UserError) as info:
        torch.save(official, tmp_path / "full.pth")
        det.load_weights(tmp_path / "full.pth")  # 3-4-6-3 blocks into a 1-1-1-1 network
    assert "unexpected keys: layer1.1." in str(info.value) and "\n" not in str(info.value)

    # a CNNDetection ResNet-50 (7x7 stem, no conv2): not LaDeDa, and it says which keys
    cnndetection = {k: v for k, v in official.items() if k != "conv2.weight"}
    cnndetection["conv1.weight"] = torch.zeros(64, 3, 7, 7)
    assert "LaDeDa (LaDeDa9)" not in [f.name for f in formats_for(cnndetection)]
    torch.save({"model": cnndetection}, tmp_path / "cnn.pth")
    with pytest.raises(UserError, match=r"missing keys: conv2\.weight"):
        load_detector("ladeda", weights=tmp_path / "cnn.pth")
