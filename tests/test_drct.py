"""DRCT: official key layout and file, albumentations' crop, an independent forward, the loss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.drct import DRCT, albumentations_center_crop, contrastive_loss
from detectors.formats import formats_for
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.weights import key_spec, load_reference, seeded_state_dict

#: the authors' ``get_models("convnext_base_in22k", num_classes=2, embedding_size=1024)``
#: under timm 0.6.12, counted by running network/models.py at 01aa7d0 (outside the project)
REFERENCE_PARAMETERS = 88_618_114
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SMALL = {"backbone": "convnext_atto", "embedding_size": 16}


def small(seed: int = 0, **kwargs: object) -> DRCT:
    torch.manual_seed(seed)
    return DRCT(**{**SMALL, **kwargs})


def layer_norm_channels(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-6)
    return x.permute(0, 3, 1, 2)


def pointwise(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    weight = s[f"{name}.weight"].reshape(s[f"{name}.weight"].shape[0], -1)
    return torch.einsum("bchw,oc->bohw", x, weight) + s[f"{name}.bias"].view(1, -1, 1, 1)


def reference_forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """The paper's ConvNeXt (Liu et al., CVPR 2022) written out, then DRCT's two heads:
    4x4 patchify stem + LayerNorm; per stage a LayerNorm + 2x2 stride-2 downsampling (not
    the first), blocks ``x + gamma * fc2(GELU(fc1(LN(dwconv7x7(x)))))``; mean pool,
    LayerNorm, ``head.fc`` (the embedding), ``fc``; softmax's fake probability as a logit."""
    x = F.conv2d(x, s["model.stem.0.weight"], s["model.stem.0.bias"], stride=4)
    x = layer_norm_channels(x, s, "model.stem.1")
    stage = 0
    while f"model.stages.{stage}.blocks.0.gamma" in s:
        p = f"model.stages.{stage}"
        if f"{p}.downsample.1.weight" in s:
            x = layer_norm_channels(x, s, f"{p}.downsample.0")
            x = F.conv2d(x, s[f"{p}.downsample.1.weight"], s[f"{p}.downsample.1.bias"], stride=2)
        block = 0
        while f"{p}.blocks.{block}.gamma" in s:
            b = f"{p}.blocks.{block}"
            w = s[f"{b}.conv_dw.weight"]
            y = F.conv2d(x, w, s[f"{b}.conv_dw.bias"], padding=3, groups=w.shape[0])
            y = pointwise(F.gelu(pointwise(layer_norm_channels(y, s, f"{b}.norm"), s, f"{b}.mlp.fc1")), s, f"{b}.mlp.fc2")  # fmt: skip
            x = x + s[f"{b}.gamma"].view(1, -1, 1, 1) * y
            block += 1
        stage += 1
    z = F.layer_norm(x.mean(dim=(-2, -1)), x.shape[1:2], s["model.head.norm.weight"], s["model.head.norm.bias"], eps=1e-6)  # fmt: skip
    z = z @ s["model.head.fc.weight"].T + s["model.head.fc.bias"]
    out = z @ s["fc.weight"].T + s["fc.bias"]
    return out[:, 1] - out[:, 0]


def numpy_pad_and_crop(array: np.ndarray, size: int) -> np.ndarray:
    """albumentations 1.3: ``PadIfNeeded`` puts ``int((size - n) / 2)`` zeros before a
    short side (the rest after); ``CenterCrop`` starts at ``(n - size) // 2``."""
    pads = [(int((size - n) / 2), size - n - int((size - n) / 2)) if n < size else (0, 0) for n in array.shape[:2]]  # fmt: skip
    array = np.pad(array, [*pads, (0, 0)])
    top, left = ((n - size) // 2 for n in array.shape[:2])
    return array[top : top + size, left : left + size]


def reference_input(array: np.ndarray, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(numpy_pad_and_crop(array, size).copy()).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


def test_full_size_parameter_count_and_official_keys() -> None:
    reference = load_reference("drct_convnext_base")
    with torch.device("meta"):
        det = DRCT()
    assert count_parameters(det) == REFERENCE_PARAMETERS
    assert sum(math.prod(shape) for _, shape, _ in reference["keys"]) == REFERENCE_PARAMETERS
    assert key_spec(det.state_dict()) == reference["keys"]  # names, order, shapes, dtypes


@pytest.mark.parametrize("width, height", [(299, 299), (207, 301), (224, 150), (640, 481)])
def test_crop_is_albumentations_pad_if_needed_then_center_crop(width: int, height: int) -> None:
    rng = np.random.default_rng(width + height)
    array = rng.integers(1, 256, (height, width, 3), dtype=np.uint8)
    got = np.asarray(albumentations_center_crop(Image.fromarray(array), 224))
    np.testing.assert_array_equal(got, numpy_pad_and_crop(array, 224))


def test_contrastive_loss_is_the_pairwise_margin_loss() -> None:
    torch.manual_seed(0)
    z, labels = torch.randn(6, 5), torch.tensor([0, 1, 1, 0, 1, 1])
    u = z / z.norm(dim=1, keepdim=True)
    pos, neg = [], []
    for i in range(6):
        for j in range(6):
            d = float((u[i] - u[j]).norm())
            if i != j and labels[i] == labels[j]:
                pos.append(max(d - 0.2, 0.0))
            elif labels[i] != labels[j]:
                neg.append(max(1.3 - d, 0.0))
    expected = sum(np.mean([v for v in terms if v > 0]) for terms in (pos, neg))
    assert expected > 0
    got = contrastive_loss(z, labels, pos_margin=0.2, neg_margin=1.3)
    assert float(got) == pytest.approx(expected, abs=1e-5)
    far = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # every term zero
    assert float(contrastive_loss(far, torch.tensor([0, 0, 1]))) == 0.0


def test_training_loss_mixes_cross_entropy_and_the_contrastive_loss() -> None:
    det = small(alpha=0.3).eval()
    batch = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    labels = batch["label"].long()
    with torch.no_grad():
        z = det.embed(batch["image"])
        expected = 0.7 * F.cross_entropy(det.fc(z), labels) + 0.3 * contrastive_loss(z, labels)
        torch.testing.assert_close(det.training_step(batch)["loss"], expected)


def test_forward_shapes_backward_and_overfit() -> None:
    det = small()
    assert det({"image": torch.rand(3, 3, 64, 48)})["logits"].shape == (3,)
    batch = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert not parameters_without_gradient(det, batch)
    assert overfit(small(1), batch, steps=40, lr=1e-3) < 0.05


def test_config_composes_with_the_reference_defaults() -> None:
    det = load_detector("drct", **SMALL)
    assert isinstance(det, DRCT) and det.config_name == "drct"
    p = det.preprocessing
    assert (p.size, p.resize, p.crop, tuple(p.mean)) == (224, "none", "center", (0.485, 0.456, 0.406))  # fmt: skip
    assert det.alpha == 0.3 and (det.pos_margin, det.neg_margin) == (0.0, 1.0)
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == 1e-4
    assert optimizer.param_groups[0]["weight_decay"] == 4e-5


def test_official_layout_file_predicts_like_the_independent_forward(tmp_path: Path) -> None:
    layout = key_spec(small().state_dict())
    official = seeded_state_dict(layout, seed=3)
    assert [f.name for f in formats_for(official)] == ["DRCT (ConvNeXt-B)"]
    path = tmp_path / "14_acc0.9996.pth"
    torch.save(official, path)  # train.py: torch.save(model.state_dict(), save_path)
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((301, 299), (200, 207))]
    with torch.no_grad():
        expected = reference_forward(torch.stack([reference_input(a) for a in arrays]), official)
    assert (expected[0] - expected[1]).abs() > 1e-3
    det = load_detector("drct", weights=path, **SMALL)
    probs = det.predict([Image.fromarray(a) for a in arrays], batch_size=2, device="cpu")
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=2e-6, rtol=0)


def test_wrong_files_and_pretrained_file(tmp_path: Path) -> None:
    official = seeded_state_dict(key_spec(small().state_dict()), seed=3)
    bare = {k.removeprefix("model."): v for k, v in official.items() if k.startswith("model.")}
    assert "DRCT (ConvNeXt-B)" not in [f.name for f in formats_for(bare)]
    torch.save(bare, tmp_path / "timm.pth")
    with pytest.raises(UserError, match=r"missing keys: .*fc\.bias") as info:
        load_detector("drct", weights=tmp_path / "timm.pth", **SMALL)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"detector\.pretrained_file"):
        load_detector("drct", pretrained_file=str(tmp_path / "absent.pth"), **SMALL)
    # a timm ImageNet file (its own head.fc) initialises everything but head.fc
    imagenet = {**bare, "head.fc.weight": torch.zeros(7, 320), "head.fc.bias": torch.zeros(7)}
    torch.save(imagenet, tmp_path / "convnext_atto.pth")
    det = small(pretrained_file=str(tmp_path / "convnext_atto.pth"))
    torch.testing.assert_close(det.model.stem[0].weight, bare["stem.0.weight"])
    assert det.model.head.fc.weight.shape == (16, 320) and det.model.head.fc.weight.abs().sum() > 0
    del imagenet["stages.3.blocks.1.gamma"]
    torch.save(imagenet, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"stages\.3\.blocks\.1\.gamma"):
        small(pretrained_file=str(tmp_path / "partial.pth"))
