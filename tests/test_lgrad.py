"""LGrad: gradient images as the reference writes them, the official classifier layout,
an independent forward pass through PNG files, shapes, training."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models import resnet50

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.lgrad import LGrad, StyleGANDiscriminator, build_gradient_model, gradient_image

#: CNNDetection's networks/resnet.py ``resnet50(num_classes=1)``, what eval_test8gan.py loads
REFERENCE_PARAMETERS = 23_510_081
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SMALL = {"resize_to": 48, "size": 40}  # fast preprocessing for shape and training tests


def official_classifier(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout, with non-trivial BN statistics."""
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in resnet50(num_classes=1).state_dict().items()}
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.05)
        elif key.endswith("running_var"):
            value.uniform_(0.8, 1.2)
    state["fc.weight"].normal_(0.0, 0.02)
    state["fc.bias"].zero_()
    return state


# -- the reference pipeline, independently: gen_imggrad.py, a PNG file, eval_test8gan.py ---
def _tiny_discriminator(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    for i in range(4):
        x = F.leaky_relu(
            F.conv2d(
                x, s[f"features.{2 * i}.weight"], s[f"features.{2 * i}.bias"], stride=2, padding=1
            ),
            0.2,
        )
    return x.mean(dim=(-2, -1)) @ s["score.weight"].T + s["score.bias"]


def normlize_np(img: np.ndarray) -> np.ndarray:
    img -= img.min()
    if img.max() != 0:
        img /= img.max()
    return img * 255.0


def reference_gradient_png(path: Path, s: dict[str, torch.Tensor], out: Path) -> Path:
    image = Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    x = ((x - 0.5) / 0.5)[None].requires_grad_(True)
    (grad,) = torch.autograd.grad(_tiny_discriminator(x, s).sum(), x)
    img = normlize_np(grad[0].permute(1, 2, 0).numpy().copy())
    # cv2.imwrite converts the float image with saturate_cast: round to nearest, clip
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(out)
    return out


def reference_logits(pngs: list[Path], classifier: dict[str, torch.Tensor]) -> torch.Tensor:
    model = resnet50(num_classes=1)
    model.load_state_dict(classifier)
    batch = []
    for png in pngs:  # no_resize, no_crop: ToTensor, ImageNet Normalize
        array = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32).copy()
        batch.append(
            (torch.from_numpy(array).permute(2, 0, 1) / 255 - IMAGENET_MEAN) / IMAGENET_STD
        )
    with torch.no_grad():
        return model.eval()(torch.stack(batch)).squeeze(1)


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for name, shape in (("odd.png", (201, 317, 3)), ("gray.jpg", (45, 64))):
        paths.append(folder / name)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def configured() -> LGrad:
    return load_detector("lgrad")


@pytest.fixture(scope="module")
def detector() -> LGrad:
    torch.manual_seed(0)
    return LGrad(preprocessing=SMALL)


def test_parameter_count_and_official_keys(detector: LGrad) -> None:
    reference = resnet50(num_classes=1)
    assert count_parameters(reference) == REFERENCE_PARAMETERS
    assert count_parameters(detector, trainable_only=True) == REFERENCE_PARAMETERS
    assert count_parameters(detector.classifier) == REFERENCE_PARAMETERS
    assert list(detector.classifier.state_dict()) == list(reference.state_dict())
    assert not any(p.requires_grad for p in detector.gradient_model.parameters())


def test_gradient_images_are_scaled_and_rounded_as_the_reference() -> None:
    torch.manual_seed(1)
    weight = torch.randn(2, 3, 5, 6)

    class Linear(nn.Module):  # d(sum(w * x))/dx = w, exactly
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * weight).flatten(1).sum(1, keepdim=True)

    got = gradient_image(Linear(), torch.zeros(2, 3, 5, 6))
    for i in range(2):
        expected = normlize_np(weight[i].permute(1, 2, 0).numpy().copy())
        expected = np.clip(np.rint(expected), 0, 255) / 255
        np.testing.assert_array_equal(got[i].permute(1, 2, 0).numpy(), expected.astype(np.float32))
    assert got.amin(dim=(1, 2, 3)).eq(0).all() and got.amax(dim=(1, 2, 3)).eq(1).all()

    class Constant(nn.Module):  # zero gradient: normlize_np leaves zeros
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum() * 0

    assert gradient_image(Constant(), torch.ones(1, 3, 4, 4)).eq(0).all()


def test_preprocessing_is_resize_256_and_half_normalisation(configured: LGrad) -> None:
    det = configured
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    got = det.eval_transform({"image": image})
    assert set(got) == {"image"}
    resized = np.asarray(image.resize((256, 256), Image.BILINEAR), dtype=np.float32)
    expected = (torch.from_numpy(resized.copy()).permute(2, 0, 1) / 255 - 0.5) / 0.5
    torch.testing.assert_close(got["image"], expected, atol=1e-6, rtol=0)


def test_training_crops_and_flips_the_gradient_image(detector: LGrad) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 60, 3), dtype=np.uint8))
    sample = detector.train_transform({"image": image})
    assert sample["image"].shape == (3, 48, 48) and sample["crop"].shape == (2,)
    batch = {
        "image": sample["image"][None].repeat(2, 1, 1, 1),
        "crop": torch.tensor([[0, 8], [5, 3]]),
        "flip": torch.tensor([False, True]),
    }
    with torch.no_grad():
        full = detector.gradients(batch["image"])
        detector.eval()
        out = detector(batch)
    assert out["gradient"].shape == (2, 3, 40, 40)
    torch.testing.assert_close(out["gradient"][0], full[0, :, 0:40, 8:48])
    torch.testing.assert_close(out["gradient"][1], full[1, :, 5:45, 3:43].flip(-1))


def test_forward_and_backward_reach_only_the_classifier(detector: LGrad) -> None:
    detector.train()
    assert not detector.gradient_model.training
    detector.zero_grad(set_to_none=True)
    batch = {"image": torch.randn(2, 3, 48, 48), "label": torch.tensor([0.0, 1.0])}
    loss = detector.training_step(batch)["loss"]
    loss.backward()
    trainable = [(n, p) for n, p in detector.named_parameters() if p.requires_grad]
    assert all(n.startswith("classifier.") for n, _ in trainable) and len(trainable) == 161
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad is None for p in detector.gradient_model.parameters())
    detector.zero_grad(set_to_none=True)


def test_overfits_a_tiny_batch(detector: LGrad) -> None:
    torch.manual_seed(0)
    det = detector
    optimizer = torch.optim.Adam([p for p in det.parameters() if p.requires_grad], lr=1e-3)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    det.train()
    for _step in range(40):
        loss = det.training_step(batch)["loss"]
        if loss.item() < 0.05:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_config_composes(configured: LGrad) -> None:
    det = configured
    assert isinstance(det, LGrad) and det.config_name == "lgrad"
    p = det.preprocessing
    assert (p.resize, p.resize_to, p.crop, p.size, p.mean) == (
        "square",
        256,
        "none",
        224,
        (0.5,) * 3,
    )
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 5e-4
    assert (
        sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == REFERENCE_PARAMETERS
    )
    assert scheduler is not None


def test_official_classifier_predicts_like_the_reference(tmp_path: Path) -> None:
    classifier = official_classifier()
    path = tmp_path / "LGrad-4class.pth"
    torch.save(classifier, path)  # a plain state dict, what eval_test8gan.py loads
    det = load_detector("lgrad", weights=path)
    tiny = {k: v.clone() for k, v in det.gradient_model.state_dict().items()}
    images = write_images(tmp_path)
    pngs = [
        reference_gradient_png(p, tiny, tmp_path / f"grad{i}.png") for i, p in enumerate(images)
    ]
    expected = reference_logits(pngs, classifier)
    assert expected.abs().max() < 3 and (expected[0] - expected[1]).abs() > 1e-4

    probs = det.predict(images, batch_size=2, device="cpu")
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=1e-6, rtol=0)
    logits = torch.logit(torch.from_numpy(probs).double()).float()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_pluggable_gradient_model(tmp_path: Path) -> None:
    model = build_gradient_model("mobilenet_v3_small", seed=3)
    torch.save(model.state_dict(), tmp_path / "mnv3.pth")
    loaded = build_gradient_model("mobilenet_v3_small", weights=str(tmp_path / "mnv3.pth"))
    assert torch.equal(loaded.classifier[3].weight, model.classifier[3].weight)
    grad = gradient_image(loaded.eval(), torch.randn(1, 3, 40, 40))
    assert grad.shape == (1, 3, 40, 40) and grad.min() == 0 and grad.max() == 1
    with pytest.raises(UserError, match="unknown gradient model"):
        build_gradient_model("no_such_net")


def test_wrong_files_name_missing_and_unexpected_keys(detector: LGrad, tmp_path: Path) -> None:
    state = detector.classifier.state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.2.")}
    partial["fc1.weight"] = torch.zeros(1, 512)
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(UserError) as info:
        detector.load_weights(tmp_path / "partial.pth")
    message = str(info.value)
    assert "\n" not in message and "missing keys: layer4.2.bn1.bias" in message
    assert "unexpected keys: fc1.weight" in message


def test_stylegan_discriminator_layout_and_per_image_gradients() -> None:
    """genforce's StyleGANDiscriminator(256) keys; a batch gives each image's own gradient."""
    torch.manual_seed(0)
    model = StyleGANDiscriminator(256).eval()
    state = model.state_dict()
    assert state["lod"].shape == () and state["input0.weight"].shape == (64, 3, 1, 1)
    assert state["layer12.weight"].shape == (512, 513, 3, 3)  # + the minibatch-std channel
    assert state["layer13.weight"].shape == (512, 512 * 16) and state["layer14.weight"].shape == (
        1,
        512,
    )
    assert sorted(k for k in state if k.endswith("blur.kernel")) == [
        f"layer{i}.blur.kernel" for i in (1, 11, 3, 5, 7, 9)
    ]
    torch.testing.assert_close(state["layer1.blur.kernel"][0, 0].sum(), torch.tensor(1.0))
    assert count_parameters(model) == sum(
        v.numel() for k, v in state.items() if k != "lod" and not k.endswith("kernel")
    )
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    both = gradient_image(model, x, quantize=False)
    alone = torch.cat([gradient_image(model, x[i : i + 1], quantize=False) for i in range(2)])
    torch.testing.assert_close(both, alone, atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="256 x 256"):
        model(torch.zeros(1, 3, 224, 224))
    model.lod.fill_(0.5)
    with pytest.raises(UserError, match="lod"):
        model(x)


def test_official_classifier_keeps_the_protocol_and_names_the_gradient_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "LGrad-4class.pth"
    torch.save(official_classifier(), path)
    with caplog.at_level(logging.INFO):
        det = load_detector("lgrad", weights=path)
    messages = [r.getMessage() for r in caplog.records]
    assert any("LGrad classifier weights" in m for m in messages)
    assert any("gradient_model.arch=stylegan" in m for m in messages)  # tiny: a warning
    assert det.preprocessing.resize_to == 256
    torch.save(StyleGANDiscriminator(256).state_dict(), tmp_path / "d.pth")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        det = load_detector(
            "lgrad",
            weights=path,
            gradient_model={"arch": "stylegan", "weights": str(tmp_path / "d.pth")},
            preprocessing={"interpolation": "bicubic"},
        )
    assert isinstance(det.gradient_model, StyleGANDiscriminator)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("gradient_model.arch=stylegan" in m for m in messages)
    assert any("departs from the protocol" in m for m in messages)
