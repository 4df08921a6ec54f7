"""EfficientNet-B4: efficientnet_pytorch's layout and padding, community checkpoints, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.efficientnet import EfficientNetB4Detector
from detectors.layers.efficientnet import (
    convert_efficientnet_pytorch_keys,
    efficientnet_b4_backbone,
)
from tests.detector_checks import overfit, parameters_without_gradient, random_images

#: efficientnet_pytorch ``EfficientNet.from_name('efficientnet-b4')`` (ImageNet head
#: Linear(1792, 1000)), counted on the layout built below from its utils.py/model.py
IMAGENET_PARAMETERS = 19_341_616
#: DeepfakeBench's EfficientDetector: no ``_fc`` (Identity), ``last_layer`` Linear(1792, 2)
REFERENCE_PARAMETERS = IMAGENET_PARAMETERS - (1792 * 1000 + 1000) + (1792 * 2 + 2)
#: ours: one output row instead of two (1792 weights + 1 bias fewer)
OURS = REFERENCE_PARAMETERS - 1793

# efficientnet_pytorch utils.py: the B0 blocks_args (repeats, kernel, stride, expansion,
# input filters, output filters; SE ratio 0.25) and B4's coefficients (width 1.4, depth 1.8)
BASE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
WIDTH, DEPTH, IMAGE_SIZE, EPS = 1.4, 1.8, 380, 1e-3


def round_filters(channels: int) -> int:
    new = max(8, int(channels * WIDTH + 4) // 8 * 8)
    return new + 8 if new < 0.9 * channels * WIDTH else new


def b4_blocks() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expansion, in, out) of each of the 32 blocks."""
    blocks = []
    for repeats, k, stride, expand, cin, cout in BASE_STAGES:
        cin, cout = round_filters(cin), round_filters(cout)
        blocks.append((k, stride, expand, cin, cout))
        blocks += [(k, 1, expand, cout, cout)] * (math.ceil(DEPTH * repeats) - 1)
    return blocks


def reference_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in efficientnet_pytorch's key layout (``_conv_stem`` ... ``_fc``)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int = 1, bias: bool = False) -> None:
        state[f"{name}.weight"] = (
            torch.randn(cout, cin, k, k, generator=gen) * (2 / (cin * k * k)) ** 0.5
        )
        if bias:
            state[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.1

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=gen) * 0.1
        state[f"{name}.running_mean"] = torch.zeros(c)
        state[f"{name}.running_var"] = torch.ones(c)
        state[f"{name}.num_batches_tracked"] = torch.tensor(0)

    stem = round_filters(32)
    conv("_conv_stem", stem, 3, 3)
    bn("_bn0", stem)
    for n, (k, _stride, expand, cin, cout) in enumerate(b4_blocks()):
        mid, block = cin * expand, f"_blocks.{n}"
        if expand != 1:
            conv(f"{block}._expand_conv", mid, cin)
            bn(f"{block}._bn0", mid)
        conv(f"{block}._depthwise_conv", mid, 1, k)
        bn(f"{block}._bn1", mid)
        squeezed = max(1, int(cin * 0.25))
        conv(f"{block}._se_reduce", squeezed, mid, bias=True)
        conv(f"{block}._se_expand", mid, squeezed, bias=True)
        conv(f"{block}._project_conv", cout, mid)
        bn(f"{block}._bn2", cout)
    conv("_conv_head", round_filters(1280), round_filters(320))
    bn("_bn1", round_filters(1280))
    state["_fc.weight"] = torch.randn(1000, round_filters(1280), generator=gen) * 0.02
    state["_fc.bias"] = torch.zeros(1000)
    return state


def reference_features(
    x: torch.Tensor,
    s: dict[str, torch.Tensor],
    version: str = "0.7",
    stem_valid: bool = False,
    calibrate: bool = False,
) -> torch.Tensor:
    """efficientnet_pytorch's ``extract_features`` + average pooling, written functionally.

    ``Conv2dStaticSamePadding`` pads for a planned input size: B4's 380 px for every layer
    in 0.6.x, the size reaching each block in 0.7.x. ``stem_valid``: DeepfakeBench's
    unpadded ``nn.Conv2d(3, 48, 3, 2)`` stem. ``calibrate`` sets each BatchNorm's running
    statistics to those of ``x`` (a live signal through random weights).
    """

    def same(t: torch.Tensor, k: int, stride: int, planned: int) -> torch.Tensor:
        pad = max((math.ceil(planned / stride) - 1) * stride + k - planned, 0)
        return F.pad(t, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def bn(t: torch.Tensor, name: str) -> torch.Tensor:
        if calibrate:
            s[f"{name}.running_mean"] = t.mean((0, 2, 3))
            s[f"{name}.running_var"] = t.var((0, 2, 3), unbiased=False)
        w, b = s[f"{name}.weight"], s[f"{name}.bias"]
        m, v = s[f"{name}.running_mean"], s[f"{name}.running_var"]
        return F.batch_norm(t, m, v, w, b, training=False, eps=EPS)

    x = x if stem_valid else same(x, 3, 2, IMAGE_SIZE)
    x = F.silu(bn(F.conv2d(x, s["_conv_stem.weight"], stride=2), "_bn0"))
    size = math.ceil(IMAGE_SIZE / 2)
    for n, (k, stride, expand, cin, cout) in enumerate(b4_blocks()):
        block, inputs = f"_blocks.{n}", x
        if expand != 1:
            x = F.silu(bn(F.conv2d(x, s[f"{block}._expand_conv.weight"]), f"{block}._bn0"))
        planned = size if version == "0.7" else IMAGE_SIZE
        x = F.conv2d(
            same(x, k, stride, planned),
            s[f"{block}._depthwise_conv.weight"],
            stride=stride,
            groups=x.shape[1],
        )
        x = F.silu(bn(x, f"{block}._bn1"))
        squeezed = x.mean((2, 3), keepdim=True)
        squeezed = F.silu(
            F.conv2d(squeezed, s[f"{block}._se_reduce.weight"], s[f"{block}._se_reduce.bias"])
        )
        squeezed = F.conv2d(
            squeezed, s[f"{block}._se_expand.weight"], s[f"{block}._se_expand.bias"]
        )
        x = bn(
            F.conv2d(torch.sigmoid(squeezed) * x, s[f"{block}._project_conv.weight"]),
            f"{block}._bn2",
        )
        if stride == 1 and cin == cout:
            x = x + inputs
        size = math.ceil(size / stride)
    x = F.silu(bn(F.conv2d(x, s["_conv_head.weight"]), "_bn1"))
    return x.mean((2, 3))


def calibrated_state(version: str, stem_valid: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    state = reference_state(seed)
    with torch.no_grad():
        reference_features(torch.randn(3, 3, 48, 48), state, version, stem_valid, calibrate=True)
    return state


@pytest.fixture(scope="module")
def detector() -> EfficientNetB4Detector:
    torch.manual_seed(0)
    return EfficientNetB4Detector()


def test_parameter_count_and_efficientnet_pytorch_keys(detector: EfficientNetB4Detector) -> None:
    reference = reference_state()
    counted = sum(
        v.numel()
        for k, v in reference.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert counted == IMAGENET_PARAMETERS
    assert count_parameters(detector) == OURS
    assert abs(OURS - REFERENCE_PARAMETERS) / REFERENCE_PARAMETERS < 0.01
    converted = convert_efficientnet_pytorch_keys(reference)
    assert converted["blocks.0.1.conv_pw.weight"] is reference["_blocks.1._project_conv.weight"]
    assert converted["blocks.1.0.conv_pwl.weight"] is reference["_blocks.2._project_conv.weight"]
    assert converted["blocks.6.1.bn3.running_var"] is reference["_blocks.31._bn2.running_var"]
    assert converted["bn2.weight"] is reference["_bn1.weight"]
    del converted["classifier.weight"], converted["classifier.bias"]
    ours = detector.backbone.state_dict()
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}


def test_forward_at_native_size(detector: EfficientNetB4Detector) -> None:
    x = detector.eval_transform({"image": random_images(1, (300, 280))[0], "record": None})["image"]
    assert x.shape == (3, 256, 256)
    with torch.no_grad():
        out = detector.eval()({"image": x[None]})
    assert out["logits"].shape == (1,) and torch.isfinite(out["logits"]).all()


def test_backward_reaches_every_parameter(detector: EfficientNetB4Detector) -> None:
    batch = {"image": torch.randn(2, 3, 48, 48), "label": torch.tensor([0.0, 1.0])}
    assert parameters_without_gradient(detector, batch) == []


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    det = EfficientNetB4Detector(drop_path_rate=0.0)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert overfit(det, batch, steps=60, lr=1e-3) < 0.05


def test_config_follows_deepfakebench() -> None:
    det = load_detector("efficientnet_b4")
    assert isinstance(det, EfficientNetB4Detector) and det.config_name == "efficientnet_b4"
    p = det.preprocessing
    assert (p.size, p.resize, p.mean, p.std) == (256, "square", (0.5,) * 3, (0.5,) * 3)
    assert (det.padding, det.stem_padding) == ("static", "valid")
    optimizer, scheduler = det.configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert (group["lr"], group["eps"], group["weight_decay"]) == (2e-4, 1e-8, 5e-4)


def random_head(outputs: int, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier whose logits on ``features`` spread over a few units (no saturation)."""
    weight = torch.randn(outputs, features.shape[1])
    logits = features @ weight.T
    weight = weight / logits.std()
    return weight, -(features @ weight.T).mean(0)


def test_deepfakebench_checkpoint_matches_softmax_of_the_reference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = calibrated_state("0.7", stem_valid=True)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        features = reference_features(x, state, "0.7", stem_valid=True)
    head_w, head_b = random_head(2, features)
    file = {f"module.backbone.efficientnet.{k}": v for k, v in state.items() if "_fc" not in k}
    file["module.backbone.last_layer.weight"] = head_w
    file["module.backbone.last_layer.bias"] = head_b
    torch.save(file, tmp_path / "effnb4_best.pth")

    det = load_detector("efficientnet_b4", weights=tmp_path / "effnb4_best.pth")
    expected = torch.softmax(features @ head_w.T + head_b, 1)[:, 1].numpy()
    assert expected.min() > 0.01 and expected.max() < 0.99 and expected.std() > 1e-2
    np.testing.assert_allclose(det.predict_batch({"image": x}).numpy(), expected, atol=1e-5)


def test_icpr2020_checkpoint_with_efficientnet_pytorch_06_padding(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = calibrated_state("0.6", stem_valid=False, seed=1)
    x = torch.randn(3, 3, 80, 80)
    with torch.no_grad():
        features = reference_features(x, state, "0.6")
        other = reference_features(x, state, "0.7")  # efficientnet_pytorch >= 0.7's padding
    head_w, head_b = random_head(1, features)
    file = {f"efficientnet.{k}": v for k, v in state.items() if "_fc" not in k}
    file["classifier.weight"], file["classifier.bias"] = head_w, head_b
    torch.save({"net": file, "epoch": 3}, tmp_path / "bestval.pth")  # a training checkpoint

    det = load_detector(
        "efficientnet_b4",
        weights=tmp_path / "bestval.pth",
        padding="static_v0.6",
        stem_padding="same",
        drop_rate=0.4,
        preprocessing={"size": 224},
    )
    with torch.no_grad():
        logits = det.eval()({"image": x})["logits"]
    expected = (features @ head_w.T + head_b)[:, 0]
    assert expected.std() > 0.1
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert (logits - (other @ head_w.T + head_b)[:, 0]).abs().max() > 1e-2  # paddings differ


def test_icpr2020_file_brings_its_test_transform_and_a_user_setting_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """icpr2020dfdc's ``get_transformer('scale', 224)``: zero padding to 224, cv2
    bilinear 224 x 224, ImageNet mean/std, switched to by the file itself."""
    state = {
        f"efficientnet.{k}": v
        for k, v in calibrated_state("0.6", stem_valid=False, seed=1).items()
        if "_fc" not in k
    }
    state["classifier.weight"], state["classifier.bias"] = torch.zeros(1, 1792), torch.zeros(1)
    torch.save(state, tmp_path / "EfficientNetB4_FFPP_bestval-0.pth")
    with caplog.at_level("INFO"):
        det = load_detector(
            "efficientnet_b4",
            weights=tmp_path / "EfficientNetB4_FFPP_bestval-0.pth",
            padding="static_v0.6",
            stem_padding="same",
        )
    p = det.preprocessing
    assert (p.size, p.resize_to, p.pad, p.resize_backend, p.interpolation) == (
        224,
        224,
        "to_size",
        "cv2",
        "bilinear",
    )
    assert (
        tuple(p.mean) == (0.485, 0.456, 0.406) and det.config["preprocessing"]["pad"] == "to_size"
    )
    assert any(
        "icpr2020dfdc" in r.message and "official test-time" in r.message for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        det = load_detector(
            "efficientnet_b4",
            weights=tmp_path / "EfficientNetB4_FFPP_bestval-0.pth",
            padding="static_v0.6",
            stem_padding="same",
            preprocessing={"size": 380},
        )
    assert det.preprocessing.size == 380 and det.preprocessing.pad == "to_size"
    assert any("departs from the protocol" in r.message for r in caplog.records)


def test_imagenet_start_from_an_efficientnet_pytorch_file(
    detector: EfficientNetB4Detector, tmp_path: Path
) -> None:
    state = calibrated_state("0.7", stem_valid=False, seed=2)
    torch.save(state, tmp_path / "efficientnet-b4-6ed6700e.pth")
    backbone = efficientnet_b4_backbone(
        str(tmp_path / "efficientnet-b4-6ed6700e.pth"), stem_padding="same"
    ).eval()
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference_features(x, state), atol=1e-5, rtol=1e-4)

    with pytest.raises(UserError, match=r"pretrained_file .* does not exist"):
        efficientnet_b4_backbone(str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match=r"classifier of shape \(1000, 1792\)"):
        detector.load_weights(tmp_path / "efficientnet-b4-6ed6700e.pth")


def test_wrong_files_name_missing_and_unexpected_keys(
    detector: EfficientNetB4Detector, tmp_path: Path
) -> None:
    state = {
        f"backbone.efficientnet.{k}": v for k, v in reference_state().items() if "_fc" not in k
    }
    del state["backbone.efficientnet._blocks.20._se_expand.bias"]
    state["backbone.last_layer.weight"], state["backbone.last_layer.bias"] = (
        torch.zeros(2, 1792),
        torch.zeros(2),
    )
    state["backbone.adjust_channel.0.weight"] = torch.zeros(512, 1792, 1, 1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(UserError) as info:
        detector.load_weights(tmp_path / "broken.pth")
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys: backbone.blocks.4.4.se.conv_expand.bias;" in message
    assert "unexpected keys: backbone.adjust_channel.0.weight" in message
