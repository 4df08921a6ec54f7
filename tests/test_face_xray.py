"""Face X-ray: online blending with a face pool, X-ray targets, HRNet head, DeepfakeBench weights."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from deepsift.core.records import Record
from detectors import load_detector
from detectors.base import count_parameters
from detectors.face_xray import FacePool, FaceXray, blend_faces, mask_boundary
from detectors.layers import blending as B
from tests.detector_checks import overfit, parameters_without_gradient, transformed_batch

#: DeepfakeBench's FaceXrayDetector as written (training/detectors/facexray_detector.py with
#: networks/cls_hrnet.py and the HRNet-W48 config), counted by building that module tree:
#: 96,336,939 parameters, of which HRNet's classification head (incre_modules,
#: downsamp_modules, final_layer, fc), which ``features()`` never calls, holds 12,144,744
REFERENCE_TOTAL = 96_336_939
REFERENCE_UNUSED_HEAD = 12_144_744
REFERENCE_USED = REFERENCE_TOTAL - REFERENCE_UNUSED_HEAD  # 84,192,195
#: ours: the used part with one fake logit instead of two (128 weights and 1 bias fewer)
PARAMETERS = 84_192_066


@pytest.fixture(scope="module")
def xray() -> FaceXray:
    torch.manual_seed(0)
    return FaceXray()


def small(**kwargs: object) -> FaceXray:
    torch.manual_seed(0)
    kwargs.setdefault("preprocessing", {"size": 64})
    return FaceXray(backbone="hrnet_w18_small", **kwargs)


def real_records(folder: Path, n: int, size: int = 80) -> tuple[list[Image.Image], list[Record]]:
    """Smooth random faces with jittered template landmarks cached as .npy files."""
    rng = np.random.default_rng(4)
    images, records = [], []
    for i in range(n):
        coarse = rng.integers(0, 256, (5, 5, 3)).astype(np.float32)
        image = B.to_uint8(B.resize(coarse, (size, size)))
        Image.fromarray(image).save(folder / f"face{i}.png")
        landmarks = B.template_landmarks(size, size) + rng.normal(0, 1, (68, 2)).astype(np.float32)
        np.save(folder / f"face{i}.npy", landmarks)
        images.append(Image.fromarray(image))
        records.append(
            Record(
                str(folder / f"face{i}.png"),
                0,
                video=f"v{i}",
                extra={"landmarks": str(folder / f"face{i}.npy")},
            )
        )
    return images, records


def test_parameter_count_matches_deepfakebench(xray: FaceXray) -> None:
    assert count_parameters(xray) == PARAMETERS == REFERENCE_USED - 128 - 1
    assert abs(PARAMETERS - REFERENCE_USED) / REFERENCE_USED < 0.01
    # cls_hrnet's module names and shapes (written from its _make_transition_layer and
    # _make_fuse_layers for HRNet-W48), which DeepfakeBench's checkpoints carry
    shapes = {k: tuple(v.shape) for k, v in xray.state_dict().items()}
    assert shapes["backbone.conv1.weight"] == (64, 3, 3, 3)
    assert shapes["backbone.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["backbone.transition3.3.0.0.weight"] == (384, 192, 3, 3)
    assert shapes["backbone.stage4.2.fuse_layers.3.0.0.0.weight"] == (48, 48, 3, 3)
    assert shapes["backbone.stage4.2.fuse_layers.3.0.2.0.weight"] == (384, 48, 3, 3)
    assert shapes["backbone.stage4.2.fuse_layers.0.3.0.weight"] == (48, 384, 1, 1)
    assert shapes["post_process.0.weight"] == (256, 720, 3, 3)
    assert shapes["fc.0.weight"] == (1024, 128 * 128) and shapes["fc.6.weight"] == (1, 128)
    assert small().fc[0].weight.shape == (1024, 32 * 32)  # the map pooled to half the input
    assert not any(
        k.startswith(("backbone.incre", "backbone.final", "backbone.classifier")) for k in shapes
    )


def test_forward_at_native_size(xray: FaceXray) -> None:
    xray.eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 270, 3), np.uint8))
    x = xray.transform({"image": image, "record": None}, train=False)["image"]
    assert x.shape == (3, 256, 256) and x.min() >= -1 and x.max() <= 1  # mean = std = 0.5
    with torch.no_grad():
        out = xray({"image": x[None]})
    assert out["logits"].shape == (1,) and out["xray"].shape == (1, 1, 256, 256)
    assert out["xray"].min() >= 0 and out["xray"].max() <= 1
    torch.testing.assert_close(out["xray"], torch.sigmoid(out["xray_raw"]))


def test_backward_reaches_every_parameter(xray: FaceXray) -> None:
    batch = {  # one (real, blend) pair at 32 px: two images for the BatchNorm1d layers
        "image": torch.randn(1, 3, 32, 32),
        "image_blended": torch.randn(1, 3, 32, 32),
        "xray": torch.zeros(1, 1, 32, 32),
        "xray_blended": torch.rand(1, 1, 32, 32),
        "label": torch.zeros(1),
        "weight_image": torch.ones(1),
        "weight_blended": torch.ones(1),
        "weight_xray": torch.ones(1),
    }
    assert parameters_without_gradient(xray, batch) == []


def test_pool_picks_the_nearest_face_of_another_video() -> None:
    pool = FacePool(size=3)
    base = B.template_landmarks(64, 64)
    image = np.zeros((64, 64, 3), np.uint8)
    for offset, video in ((8.0, "a"), (1.0, "b"), (3.0, "c"), (0.5, "d")):  # "a" falls out
        pool.add(image + int(offset), base + offset, video)
    rng = np.random.default_rng(0)
    assert pool.nearest(base, "x", rng).source == "d"
    assert pool.nearest(base, "d", rng).source == "b"  # never the same video
    assert pool.nearest(None, "x", rng).source in {"b", "c", "d"}
    assert FacePool(4).nearest(base, "x", rng) is None
    pool.clear()
    assert not pool.entries


def test_blend_faces_puts_the_partner_inside_the_mask() -> None:
    h = w = 96
    yy, xx = np.mgrid[0:h, 0:w]
    target = np.stack([xx * 2, yy * 2, np.full_like(xx, 60)], -1).astype(np.uint8)
    checker = np.where((yy // 8 + xx // 8) % 2 == 1, 220, 40)
    source = np.stack([checker, checker, checker], -1).astype(np.uint8)
    landmarks = B.template_landmarks(w, h)
    fake, mask = blend_faces(target, landmarks, source, landmarks, np.random.default_rng(2))
    assert fake.shape == target.shape and mask.shape == (h, w)
    assert mask.min() >= 0 and mask.max() <= 1 and mask.max() > 0.99
    diff = np.abs(fake.astype(int) - target.astype(int)).max(-1)
    assert diff[mask == 0].mean() < 3  # outside: the target (resized down and up)
    assert diff[mask > 0.99].mean() > 40  # inside: the (colour-matched) checkerboard
    boundary = B.blending_boundary(mask)
    assert boundary.max() > 0.9 and boundary[mask > 0.999].max() < 0.004


def test_train_transform_pairs_and_targets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    det = small()
    images, records = real_records(tmp_path, 3)
    random.seed(0)
    outs = [
        det.transform({"image": im, "label": 0, "record": r}, train=True)
        for im, r in zip(images, records, strict=True)
    ]
    assert [e.source for e in det.pool.entries] == ["v0", "v1", "v2"]
    out = outs[-1]
    assert set(out) == {
        "image",
        "image_blended",
        "xray",
        "xray_blended",
        "weight_image",
        "weight_blended",
        "weight_xray",
        "landmarks_status",
    }
    assert out["image"].shape == out["image_blended"].shape == (3, 64, 64)
    assert out["xray"].shape == out["xray_blended"].shape == (1, 64, 64)
    assert out["xray"].eq(0).all() and 0.5 < out["xray_blended"].max() <= 1
    assert out["xray_blended"].min() >= 0 and out["xray_blended"].mean() < 0.5  # a thin ring
    det.on_train_epoch_end()
    assert not det.pool.entries

    mask = np.zeros((80, 80), np.uint8)
    mask[20:60, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    fake = Record("f.png", 1, extra={"mask": str(tmp_path / "mask.png")})
    ignored = det.transform({"image": images[0], "label": 1, "record": fake}, train=True)
    assert (ignored["weight_image"], ignored["weight_blended"], ignored["weight_xray"]) == (0, 0, 0)
    included = small(fake_records="include").transform(
        {"image": images[0], "label": 1, "record": fake}, train=True
    )
    assert (included["weight_image"], included["weight_blended"], included["weight_xray"]) == (
        1,
        0,
        1,
    )
    assert included["xray"].max() > 0.9  # the mask's boundary
    boundary = mask_boundary(tmp_path / "mask.png", 64)
    assert boundary[32, 32] == 0 and boundary[0, 0] == 0 and boundary.max() > 0.9

    B._WARNED.discard(f"Face X-ray-landmarks-{B.LANDMARKS_MISSING}")
    bare = [Record("r.png", 0, video="r"), Record("s.png", 0, video="s")]
    batch = transformed_batch(det, images[:2], [0, 0], bare, train=True)
    assert batch["landmarks_status"].tolist() == [B.LANDMARKS_MISSING] * 2
    assert batch["xray_blended"].amax(dim=(1, 2, 3)).gt(0.5).all()
    with caplog.at_level(logging.WARNING, logger="detectors.layers.blending"):
        for _ in range(2):
            det.training_step(batch)
    assert sum("have no landmarks" in r.getMessage() for r in caplog.records) == 1


def test_overfits_a_tiny_batch(tmp_path: Path) -> None:
    """Labels are fitted to near zero; the X-ray loss drops to near its floor.

    The floor: cross-entropy to soft targets cannot go below their entropy, and a map
    predicted at 1/4 resolution and up-sampled cannot draw a thin ring exactly.
    """
    det = small(preprocessing={"size": 32})
    images, records = real_records(tmp_path, 2)
    random.seed(3)
    batch = transformed_batch(det, images, [0, 0], records, train=True)
    target = torch.cat([batch["xray"], batch["xray_blended"]]).clamp(1e-7, 1 - 1e-7)
    entropy = -(target * target.log() + (1 - target) * (1 - target).log()).flatten(1).mean(1)
    floor = det.boundary_weight * entropy.mean().item()
    excess = det.training_step(batch)["loss"].item() - floor
    assert excess > 10
    final = overfit(det, batch, steps=30, lr=2e-2, target=floor + 0.05 * excess)
    assert final < floor + 0.05 * excess
    assert det.training_step(batch)["loss_cls"].item() < 0.05


def test_config_composes_with_deepfakebench_optimiser() -> None:
    det = load_detector("face_xray", backbone="hrnet_w18_small")
    assert isinstance(det, FaceXray) and det.config_name == "face_xray"
    p = det.preprocessing
    assert (p.size, p.interpolation, p.mean, p.std) == (256, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert (det.boundary_loss, det.boundary_weight) == ("bce", 100.0)
    optimizer, scheduler = det.configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-4,
        (0.9, 0.999),
        1e-8,
        5e-4,
    )
    with pytest.raises(UserError, match=r"detector\.backbone"):
        FaceXray(backbone="resnet50")
    with pytest.raises(UserError, match=r"detector\.boundary_loss"):
        small(boundary_loss="l1")


def deepfakebench_state(
    det: FaceXray,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A facexray checkpoint in DeepfakeBench's layout: HRNet head kept, 2-class ``fc.6``."""
    torch.manual_seed(5)
    state = {k: v.clone() for k, v in det.state_dict().items() if not k.startswith("fc.6.")}
    w, b = torch.randn(2, 128) * 0.3, torch.randn(2) * 0.3
    state |= {"fc.6.weight": w, "fc.6.bias": b}
    state |= {  # cls_hrnet's classification head, unused by the detector
        "backbone.incre_modules.0.0.conv1.weight": torch.zeros(32, 16, 1, 1),
        "backbone.downsamp_modules.0.0.weight": torch.zeros(256, 128, 3, 3),
        "backbone.final_layer.0.weight": torch.zeros(2048, 1024, 1, 1),
        "backbone.fc.weight": torch.zeros(1000, 2048),
        "backbone.fc.bias": torch.zeros(1000),
    }
    return {f"module.{k}": v for k, v in state.items()}, w, b


def test_deepfakebench_weights_load_with_the_head_converted(tmp_path: Path) -> None:
    det = small()
    state, w, b = deepfakebench_state(det)
    torch.save(state, tmp_path / "facexray_best.pth")
    fresh = small()
    fresh.load_weights(tmp_path / "facexray_best.pth")
    p = fresh.preprocessing  # DeepfakeBench's test input; the size small() set wins
    assert (p.size, p.resize_backend, p.interpolation) == (64, "cv2", "bicubic")
    fresh.eval()
    hidden = {}
    fresh.fc[5].register_forward_hook(lambda _m, _i, out: hidden.setdefault("h", out))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ours = torch.sigmoid(fresh({"image": x})["logits"])
    reference = torch.softmax(hidden["h"] @ w.T + b, dim=1)[:, 1]  # DeepfakeBench's prob
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert torch.equal(fresh.post_process[0].weight, det.post_process[0].weight)

    del state["module.post_process.3.weight"]
    state["module.segmentation_head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(UserError) as info:
        fresh.load_weights(tmp_path / "broken.pth")
    assert "missing keys: post_process.3.weight" in str(info.value)
    assert "unexpected keys: segmentation_head.weight" in str(info.value)
