"""SBI: self-blending, the (real, fake) pair transform, SAM through the engine, official weights."""

from __future__ import annotations

import copy
import functools
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from deepsift.core.records import Record, RecordDataset
from deepsift.engine.loops import make_loader, train_one_epoch, wrap_for_training
from detectors import load_detector
from detectors.base import count_parameters
from detectors.layers import blending as B
from detectors.layers.sam import SAM, LinearDecayLR
from detectors.sbi import SBI, sbi_blend_mask, self_blend
from tests.detector_checks import overfit, parameters_without_gradient, transformed_batch

#: the reference model (src/model.py): efficientnet_pytorch 0.7.1
#: ``EfficientNet.from_name("efficientnet-b4", num_classes=2)`` inside SBI's ``Detector``
#: (its CrossEntropyLoss has no parameters), counted with that package
REFERENCE_PARAMETERS = 17_552_202
#: ours: the same network with one fake logit (1,792 weights and 1 bias fewer)
PARAMETERS = 17_550_409
FF_EXAMPLE = Path(__file__).resolve().parents[2] / "shared/data/faceforensics/examples"


@pytest.fixture(scope="module")
def sbi() -> SBI:
    torch.manual_seed(0)
    return SBI()


def tiny(**kwargs: object) -> SBI:
    """SBI on timm's 99k-parameter ``test_efficientnet``, for fast training checks."""
    torch.manual_seed(0)
    kwargs.setdefault("preprocessing", {"size": 48})
    return SBI(backbone="test_efficientnet", **kwargs)


def real_records(folder: Path, n: int, size: int = 64) -> tuple[list[Image.Image], list[Record]]:
    """Noise faces with the template landmarks (jittered) cached as .npy files."""
    rng = np.random.default_rng(3)
    images, records = [], []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path = folder / f"face{i}.png"
        Image.fromarray(image).save(path)
        landmarks = B.template_landmarks(size, size) + rng.normal(0, 1, (68, 2)).astype(np.float32)
        np.save(folder / f"face{i}.npy", landmarks)
        images.append(Image.fromarray(image))
        records.append(
            Record(str(path), 0, video=f"v{i}", extra={"landmarks": str(folder / f"face{i}.npy")})
        )
    return images, records


def test_parameter_count_matches_the_reference(sbi: SBI) -> None:
    assert count_parameters(sbi) == PARAMETERS == REFERENCE_PARAMETERS - 1792 - 1
    assert abs(PARAMETERS - REFERENCE_PARAMETERS) / REFERENCE_PARAMETERS < 0.01
    assert sbi.fc.weight.shape == (1, 1792) and sbi.dropout.p == 0.4


def test_forward_at_native_size_and_test_transform(sbi: SBI) -> None:
    sbi.eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 250, 3), np.uint8))
    x = sbi.transform({"image": image, "record": None}, train=False)["image"]
    assert x.shape == (3, 380, 380) and x.min() >= 0 and x.max() <= 1  # pixels / 255 only
    with torch.no_grad():
        logits = sbi({"image": x[None]})["logits"]
    assert logits.shape == (1,) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("width", "height"), [(300, 250), (208, 208), (640, 480), (380, 380)])
def test_test_transform_is_the_reference_cv2_resize_bit_for_bit(
    sbi: SBI, width: int, height: int
) -> None:
    """``src/inference/preprocess.py``: ``cv2.resize(crop, dsize=(380, 380))`` (default
    INTER_LINEAR, OpenCV's fixed-point arithmetic on uint8), then ``/ 255``. Pillow's
    bilinear (torchvision on a PIL image) is not it: a grey level off in many pixels."""
    import cv2

    array = np.random.default_rng(width).integers(0, 256, (height, width, 3), np.uint8)
    x = sbi.transform({"image": Image.fromarray(array), "record": None}, train=False)["image"]
    want = cv2.resize(array, dsize=(380, 380)).transpose(2, 0, 1)
    assert torch.equal(x, torch.tensor(want).float() / 255)
    if (width, height) != (380, 380):
        pil = np.asarray(Image.fromarray(array).resize((380, 380), Image.Resampling.BILINEAR))
        assert (pil != want.transpose(1, 2, 0)).mean() > 0.01


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"interpolation": "bicubic"}, "cv2_cubic"),
        ({"interpolation": "area"}, "cv2_area"),
        ({"resize_backend": "pil"}, "pil_bilinear"),
    ],
)
def test_interpolation_and_backend_overrides_change_the_input_as_they_say(
    override: dict[str, str], expected: str
) -> None:
    """An override of the official protocol is honoured (and warned about), not ignored:
    the input is OpenCV's / Pillow's own resize with the chosen kernel, bit for bit."""
    import cv2

    array = np.random.default_rng(5).integers(0, 256, (97, 83, 3), np.uint8)
    want = {
        "cv2_cubic": lambda: cv2.resize(array, (48, 48), interpolation=cv2.INTER_CUBIC),
        "cv2_area": lambda: cv2.resize(array, (48, 48), interpolation=cv2.INTER_AREA),
        "pil_bilinear": lambda: np.asarray(
            Image.fromarray(array).resize((48, 48), Image.Resampling.BILINEAR)
        ),
    }[expected]()
    default = tiny().transform({"image": Image.fromarray(array)}, train=False)["image"]
    model = tiny(preprocessing={"size": 48, **override})
    x = model.transform({"image": Image.fromarray(array)}, train=False)["image"]
    assert torch.equal(x, torch.tensor(want.transpose(2, 0, 1)).float() / 255)
    assert not torch.equal(x, default)


def test_backward_reaches_every_parameter(sbi: SBI) -> None:
    batch = {
        "image": torch.rand(1, 3, 32, 32),
        "image_blended": torch.rand(1, 3, 32, 32),
        "label": torch.zeros(1),
        "weight_image": torch.ones(1),
        "weight_blended": torch.ones(1),
    }
    assert parameters_without_gradient(sbi, batch) == []


def test_self_blend_changes_only_the_masked_face() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    landmarks = B.template_landmarks(80, 96)
    real, fake, mask = self_blend(image, landmarks, np.random.default_rng(1))
    assert real.shape == fake.shape == image.shape and mask.shape == (96, 80)
    outside = mask == 0
    np.testing.assert_array_equal(fake[outside], real[outside])
    assert (fake[~outside] != real[~outside]).mean() > 0.5
    assert 0 < mask.max() <= 1 and mask.max() in (0.25, 0.5, 0.75, 1.0)  # a blend ratio
    face = B.fill_convex_hull(landmarks, (96, 80))
    assert mask[face == 0].mean() < mask[face == 1].mean() / 3  # the blend sits on the face
    again = self_blend(image, landmarks, np.random.default_rng(1))
    for a, b in zip((real, fake, mask), again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_blend_mask_is_soft_eroded_and_seeded() -> None:
    mask = np.zeros((120, 120), np.float32)
    mask[30:90, 30:90] = 1
    soft = sbi_blend_mask(mask, np.random.default_rng(5))
    assert soft.shape == mask.shape and soft.max() == pytest.approx(1.0, abs=1e-6)
    assert soft[60, 60] == pytest.approx(1.0, abs=1e-3) and soft[:10, :10].max() < 1e-3
    edge = soft[60, 25:35]
    assert np.all(np.diff(edge) >= -1e-9)  # rises smoothly across the edge
    np.testing.assert_array_equal(soft, sbi_blend_mask(mask, np.random.default_rng(5)))


def test_train_transform_gives_pairs_and_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    det = tiny()
    images, records = real_records(tmp_path, 1)
    random.seed(0)
    out = det.transform({"image": images[0], "label": 0, "record": records[0]}, train=True)
    assert set(out) == {
        "image",
        "image_blended",
        "weight_image",
        "weight_blended",
        "landmarks_status",
    }
    assert out["landmarks_status"] == B.LANDMARKS_OK
    assert out["image"].shape == out["image_blended"].shape == (3, 48, 48)
    assert (out["image"] != out["image_blended"]).any()
    assert out["weight_image"] == 1 and out["weight_blended"] == 1
    random.seed(0)
    again = det.transform({"image": images[0], "label": 0, "record": records[0]}, train=True)
    assert torch.equal(out["image_blended"], again["image_blended"])  # seeded by `random`

    fake = {"image": images[0], "label": 1, "record": Record("f.png", 1)}
    ignored = det.transform(fake, train=True)
    assert ignored["weight_image"] == 0 and ignored["weight_blended"] == 0
    included = tiny(fake_records="include").transform(fake, train=True)
    assert included["weight_image"] == 1 and included["weight_blended"] == 0

    # without landmarks: an ellipse mask, and one warning from the (main-process) training step
    B._WARNED.discard(f"SBI-landmarks-{B.LANDMARKS_MISSING}")
    bare = [Record("r.png", 0), Record("s.png", 0)]
    batch = transformed_batch(det, images[:1] * 2, [0, 0], bare, train=True)
    assert batch["landmarks_status"].tolist() == [B.LANDMARKS_MISSING] * 2
    assert batch["weight_blended"].eq(1).all() and (batch["image"] != batch["image_blended"]).any()
    with caplog.at_level(logging.WARNING, logger="detectors.layers.blending"):
        for _ in range(2):
            det.training_step(batch)
    assert sum("have no landmarks" in r.getMessage() for r in caplog.records) == 1


def test_overfits_a_tiny_batch(tmp_path: Path) -> None:
    det = tiny(drop_rate=0.0)
    images, records = real_records(tmp_path, 4)
    random.seed(1)
    batch = transformed_batch(det, images, [0] * 4, records, train=True)
    assert batch["image"].shape == (4, 3, 48, 48)
    assert overfit(det, batch, steps=80, lr=3e-3) < 0.05


def reference_sam_step(
    model: SBI, batch: dict[str, torch.Tensor], base: torch.optim.Optimizer, rho: float
) -> None:
    """src/utils/sam.py + src/model.py: first_step, second forward/backward, second_step."""
    images, targets, weights = B.paired_inputs(batch)
    base.zero_grad()
    B.weighted_bce(model({"image": images})["logits"], targets, weights).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
    with torch.no_grad():
        e_w = {p: p.grad * (rho / (norm + 1e-12)) for p in params}
        for p, e in e_w.items():
            p.add_(e)
    base.zero_grad()
    B.weighted_bce(model({"image": images})["logits"], targets, weights).backward()
    with torch.no_grad():
        for p, e in e_w.items():
            p.sub_(e)
    base.step()
    base.zero_grad()


def test_sam_through_the_engine_step_equals_the_reference(tmp_path: Path) -> None:
    ours = tiny(
        drop_rate=0.0,
        optimizer=functools.partial(
            SAM, base_optimizer=torch.optim.SGD, lr=0.05, momentum=0.9, rho=0.05
        ),
    )
    reference = copy.deepcopy(ours)
    optimizer, _ = ours.configure_optimizers()
    assert isinstance(optimizer, SAM) and ours._sam is optimizer
    base = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    images, records = real_records(tmp_path, 3)
    random.seed(2)
    batch = transformed_batch(
        ours, images, [0, 0, 1], [*records[:2], Record("f.png", 1)], train=True
    )
    ours.train(), reference.train()
    for _ in range(3):  # what deepsift.engine.loops.train_one_epoch does with a batch
        out = ours.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        assert not optimizer.perturbed and out["loss_unperturbed"].ndim == 0
        reference_sam_step(reference, batch, base, rho=0.05)
    for (name, a), b in zip(
        ours.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(ours.fc.weight, tiny().fc.weight)  # it did train
    # the checkpointed state is the base optimiser's (momentum buffers), and round-trips
    state, expected = optimizer.state_dict(), base.state_dict()
    assert state["state"].keys() == expected["state"].keys() and len(state["state"]) > 0
    for key, value in expected["state"].items():
        torch.testing.assert_close(state["state"][key]["momentum_buffer"], value["momentum_buffer"])
    fresh, _ = copy.deepcopy(ours).configure_optimizers()
    fresh.load_state_dict(state)
    for key, value in state["state"].items():
        assert torch.equal(
            fresh.state_dict()["state"][key]["momentum_buffer"], value["momentum_buffer"]
        )


def test_an_engine_epoch_trains_with_sam(tmp_path: Path) -> None:
    det = tiny()
    _, records = real_records(tmp_path, 4)
    records.append(Record(records[0].path, 1))  # a fake record: no loss by default
    optimizer, _ = det.configure_optimizers()
    before = copy.deepcopy(det.state_dict())
    loader = make_loader(RecordDataset(records, det.train_transform), 2, 0, range(5), seed=0)
    means, skipped = train_one_epoch(
        wrap_for_training(det, torch.device("cpu")),
        det,
        loader,
        optimizer,
        torch.device("cpu"),
        None,
        None,
    )
    det.on_train_epoch_end()
    assert not skipped and np.isfinite(means["loss"]) and "loss_unperturbed" in means
    assert not optimizer.perturbed
    assert not torch.equal(before["fc.weight"], det.state_dict()["fc.weight"])


def test_linear_decay_schedule_matches_the_reference() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    scheduler = LinearDecayLR(optimizer, 100, 75)
    ours = []
    for _ in range(100):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # src/utils/scheduler.py: lr in epoch e = b for e <= 75, else b - b / 25 * (e - 75)
    expected = [1e-3 if e <= 75 else 1e-3 - 1e-3 / 25 * (e - 75) for e in range(100)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-18)


def test_config_composes_with_the_reference_optimiser() -> None:
    det = load_detector("sbi", backbone="test_efficientnet")
    assert isinstance(det, SBI) and det.config_name == "sbi"
    p = det.preprocessing
    assert (p.size, p.mean, p.std) == (380, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, SAM) and isinstance(optimizer.base_optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["rho"]) == (1e-3, 0.9, 0.05)
    assert isinstance(scheduler, LinearDecayLR) and (scheduler.n_epochs, scheduler.start_decay) == (
        100,
        75,
    )
    with pytest.raises(UserError, match=r"detector\.hull"):
        SBI(backbone="test_efficientnet", hull="square")


# -- official weights ----------------------------------------------------------------------
#: timm -> efficientnet_pytorch names (the inverse of the converter, written from
#: efficientnet_pytorch's model.py: MBConvBlock and the stem/head names)
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
_FIRST = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
_OTHER = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
_SE = {"se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand"}
_B4_DEPTHS = (2, 4, 4, 6, 6, 8, 2)


def official_key(timm_key: str) -> str:
    match = re.match(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)$", timm_key)
    if match:
        stage, index, part, tail = int(match[1]), int(match[2]), match[3], match[4]
        number = sum(_B4_DEPTHS[:stage]) + index
        names = {**(_FIRST if stage == 0 else _OTHER), **_SE}
        return f"_blocks.{number}.{names[part]}.{tail}"
    head, tail = timm_key.rsplit(".", 1)
    return f"{_TOP[head]}.{tail}"


def official_checkpoint(sbi: SBI, path: Path) -> dict[str, torch.Tensor]:
    """An SBI ``.tar`` in the reference layout from our backbone plus a random 2-class head."""
    torch.manual_seed(1)
    model = {f"net.{official_key(k)}": v.clone() for k, v in sbi.backbone.state_dict().items()}
    model |= {"net._fc.weight": torch.randn(2, 1792) * 0.05, "net._fc.bias": torch.randn(2) * 0.1}
    torch.save({"model": model, "optimizer": {"state": {}}, "epoch": 99}, path)
    return model


def test_official_weights_load_strictly_with_the_head_converted(sbi: SBI, tmp_path: Path) -> None:
    official = official_checkpoint(sbi, tmp_path / "FFraw.tar")
    w, b = official["net._fc.weight"], official["net._fc.bias"]
    with torch.no_grad():
        for p in sbi.parameters():  # so that loading has to restore every tensor
            p.add_(1.0)
    sbi.load_weights(tmp_path / "FFraw.tar")
    for key, value in sbi.backbone.state_dict().items():
        assert torch.equal(value, official[f"net.{official_key(key)}"]), key
    sbi.eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        features = sbi.backbone(x)
        reference = torch.softmax(features @ w.T + b, dim=1)[:, 1]  # the reference head
        ours = torch.sigmoid(sbi({"image": x})["logits"])
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)

    broken = {k: torch.zeros(1) for k in official if k != "net._bn1.running_var"}  # keys only
    broken["net._extra.weight"] = torch.zeros(1)
    torch.save({"model": broken}, tmp_path / "broken.tar")
    with pytest.raises(UserError) as info:
        sbi.load_weights(tmp_path / "broken.tar")
    message = str(info.value)
    assert "missing keys: backbone.bn2.running_var" in message
    assert "unexpected keys: backbone._extra.weight" in message


@pytest.mark.skipif(
    not FF_EXAMPLE.is_dir(), reason="../shared/data/faceforensics is not beside the checkout"
)
def test_self_blends_a_faceforensics_frame() -> None:
    frame = np.asarray(Image.open(FF_EXAMPLE / "ex_original.png").convert("RGB"))
    crop = frame[10:250, 230:450]  # the presenter's face, 220 x 240
    landmarks = B.template_landmarks(220, 240)  # hand-checked to fall on this face
    det = tiny(preprocessing={"size": 220})
    real, fake, _ = self_blend(crop, landmarks, np.random.default_rng(0))
    changed = np.abs(fake.astype(int) - real.astype(int)).sum(-1) > 0
    face = B.fill_convex_hull(landmarks, (240, 220)).astype(bool)
    assert changed[face].mean() > 0.5 and changed[:20].mean() == 0  # nothing above the head
    record = Record("ex_original.png", 0, extra={"landmarks": landmarks})
    out = det.transform({"image": Image.fromarray(crop), "label": 0, "record": record}, train=True)
    assert out["image"].shape == (3, 220, 220) and (out["image"] != out["image_blended"]).any()
