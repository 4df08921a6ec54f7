"""CNNSpot: official key layout and checkpoints, shapes, gradients, fitting, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.cnnspot import CNNSpot
from tests.detector_checks import overfit

#: torchvision ``resnet50(num_classes=1)``, which CNNDetection's networks/resnet.py copies
REFERENCE_PARAMETERS = 23_510_081


@pytest.fixture(scope="module")
def detector() -> CNNSpot:
    torch.manual_seed(0)
    return CNNSpot()


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ``resnet50(num_classes=1)`` state dict (the official files' layout) with
    non-trivial BN statistics, residual branches damped so that logits stay O(1)."""
    torch.manual_seed(seed)
    state = {
        k: v.clone() for k, v in torchvision.models.resnet50(num_classes=1).state_dict().items()
    }
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("bn3.weight"):
            value.uniform_(0.1, 0.3)
        elif key.endswith(".bias") and not key.startswith("fc."):
            value.normal_(0.0, 0.1)
    state["fc.weight"].normal_(0.0, 0.05)
    state["fc.bias"].fill_(0.1)
    return state


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return official_state_dict()


def write_images(folder: Path) -> list[Path]:
    """Odd sizes, one smaller than the crop, one grayscale, one JPEG."""
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (
        ("odd.png", (231, 257, 3)),
        ("small_gray.png", (150, 101)),
        ("square.jpg", (224, 224, 3)),
    ):
        smooth = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (shape[1], shape[0]), Image.BILINEAR
        )
        array = np.clip(
            np.asarray(smooth, np.float64) + rng.normal(0, 20, (*smooth.size[::-1], 3)), 0, 255
        )
        array = array.astype(np.uint8)
        if len(shape) == 2:
            array = array[..., 0]
        paths.append(folder / name)
        Image.fromarray(array).save(paths[-1], quality=95)
    return paths


def reference_logits(state: dict[str, torch.Tensor], paths: list[Path]) -> torch.Tensor:
    """CNNDetection's demo.py, written independently: torchvision resnet50, CenterCrop(224)."""
    with torch.device("meta"):  # no random init: every tensor comes from the state dict
        model = torchvision.models.resnet50(num_classes=1)
    model.load_state_dict(state, assign=True)
    model.eval()
    trans = transforms.Compose(
        [
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    with torch.no_grad():
        batch = torch.stack([trans(Image.open(p).convert("RGB")) for p in paths])
        return model(batch).squeeze(1)


def test_parameter_count_and_official_keys(
    detector: CNNSpot, official: dict[str, torch.Tensor]
) -> None:
    assert count_parameters(detector) == REFERENCE_PARAMETERS
    reference = official  # torchvision resnet50(num_classes=1)'s state dict
    ours = detector.state_dict()
    assert list(ours) == list(reference)
    assert all(ours[k].shape == reference[k].shape for k in reference)
    assert ours["fc.weight"].shape == (1, 2048) and ours["fc.bias"].shape == (1,)


def test_forward_at_native_size(detector: CNNSpot) -> None:
    detector.eval()
    with torch.no_grad():
        out = detector({"image": torch.randn(1, 3, 224, 224)})
    assert out["logits"].shape == (1,) and out["logits"].dtype == torch.float32


def test_backward_reaches_every_parameter(detector: CNNSpot) -> None:
    detector.train()
    detector.zero_grad(set_to_none=True)
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([0.0, 1.0])}
    loss = detector.training_step(batch)["loss"]
    loss.backward()
    trainable = [(n, p) for n, p in detector.named_parameters() if p.requires_grad]
    assert len(trainable) == 161
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    detector.zero_grad(set_to_none=True)


def test_overfits_a_tiny_batch(detector: CNNSpot) -> None:
    torch.manual_seed(0)
    det = detector
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 1e-4
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert overfit(det, batch, steps=40, lr=1e-3) < 0.05


def test_config_composes() -> None:
    det = load_detector("cnnspot")
    assert isinstance(det, CNNSpot) and det.config_name == "cnnspot"
    p, t = det.preprocessing, det.train_preprocessing
    assert (p.size, p.resize, p.crop) == (224, "none", "center")
    assert (t.size, t.resize, t.resize_to, t.crop) == (224, "shorter", 256, "center")
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    assert (p.blur_prob, p.jpeg_prob, p.hflip) == (0.5, 0.5, 0.5)
    assert tuple(p.blur_sigma) == (0.0, 3.0) and tuple(p.jpeg_quality) == (30, 100)
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 1e-4


def test_official_checkpoint_predicts_like_the_reference(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = official
    path = tmp_path / "blur_jpg_prob0.5.pth"
    torch.save({"model": state, "optimizer": {"state": {}}, "total_steps": 123}, path)
    paths = write_images(tmp_path)
    expected = reference_logits(state, paths)
    assert expected.abs().max() < 8 and expected.std() > 1e-3  # informative, not saturated

    det = load_detector("cnnspot", weights=path)
    probs = det.predict(paths, batch_size=2, device="cpu")
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=1e-6, rtol=0)
    batch = torch.stack(
        [det.eval_transform({"image": Image.open(p).convert("RGB")})["image"] for p in paths]
    )
    with torch.no_grad():
        logits = det.eval()({"image": batch})["logits"]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_prefixed_plain_state_dict_loads(
    detector: CNNSpot, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = official
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    detector.load_weights(path)
    loaded = detector.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def imagenet_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet layout: the same backbone, a 1000-class ``fc``."""
    return {**state, "fc.weight": torch.randn(1000, 2048) * 0.01, "fc.bias": torch.zeros(1000)}


def test_wrong_files_name_missing_and_unexpected_keys(
    detector: CNNSpot, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    det, state = detector, official
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    partial["head.weight"] = torch.zeros(1)
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(UserError) as info:
        det.load_weights(tmp_path / "partial.pth")
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys: layer4.0.bn1.bias" in message and "more)" in message
    assert "unexpected keys: head.weight" in message

    torch.save(imagenet_like(state), tmp_path / "imagenet.pth")
    with pytest.raises(UserError, match=r"other shapes, e\.g\. fc\.weight: file \(1000, 2048\)"):
        det.load_weights(tmp_path / "imagenet.pth")
    with pytest.raises(UserError, match="does not exist"):
        load_detector("cnnspot", weights=tmp_path / "nope.pth")


def test_pretrained_file_loads_the_imagenet_backbone(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    imagenet = imagenet_like(official)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(imagenet, path)
    det = CNNSpot(pretrained=True, pretrained_file=str(path))
    loaded = det.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in imagenet.items() if not k.startswith("fc."))
    assert loaded["fc.weight"].shape == (1, 2048)
    assert 0.015 < loaded["fc.weight"].std().item() < 0.025  # N(0, 0.02), as init_gain

    truncated = {k: v for k, v in imagenet.items() if not k.startswith("layer4.")}
    torch.save(truncated, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"do not fit torchvision's ResNet-50 \(\d+ missing"):
        CNNSpot(pretrained=True, pretrained_file=str(tmp_path / "bad.pth"))
    with pytest.raises(UserError, match=r"pretrained_file .* does not exist"):
        CNNSpot(pretrained=True, pretrained_file=str(tmp_path / "missing.pth"))


def test_train_transform_with_augmentation(detector: CNNSpot) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    for _ in range(4):
        out = detector.train_transform({"image": Image.fromarray(rgb), "record": None})
        assert out["image"].shape == (3, 224, 224) and torch.isfinite(out["image"]).all()


def test_official_alternative_protocol(tmp_path: Path) -> None:
    """the README's recommended uncropped protocol (eval.py --no_crop), against the authors' code
    (``tests/official/cnndetection_blur_jpg_prob0.5.json``, ``alternatives``)."""
    from tests.official.alternatives import check_alternatives

    check_alternatives("cnndetection_blur_jpg_prob0.5", tmp_path)
