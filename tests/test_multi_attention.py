"""Multi-Attention: DeepfakeBench's walk and heads against a functional forward, AGDA, RIL, layout."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectors import load_detector
from detectors.base import count_parameters
from detectors.formats import formats_for
from detectors.multi_attention import (
    MultiAttention,
    RegionIndependenceLoss,
    agda,
    gaussian_blur,
)
from tests.detector_checks import overfit, parameters_without_gradient
from tests.test_efficientnet import EPS, IMAGE_SIZE, b4_blocks, reference_state

SMALL = 64
#: DeepfakeBench MultiAttentionDetector, counted from its modules: EfficientNet-B4 without
#: _fc (19,341,616 - 1,793,000), last_layer 1792 -> 2, attention_generation (160 ch, M = 4),
#: texture_enhance (32 ch), projection_local (512 -> 256 -> 256), projection_final
#: (1792 -> 256), ensemble_classifier_fc (512 -> 256 -> 2)
REFERENCE_PARAMETERS = (
    (19_341_616 - 1_793_000)
    + (1792 * 2 + 2)
    + (160 * 160 * 9 + 160 + 2 * 160 + 160 * 4 + 2 * 4)
    + (32 * 32 + 32 + 32 * 32 * 9 + 32 + 64 * 32 * 9 + 32 + 96 * 32 * 9 + 32 + 128 * 128 + 128)
    + 2 * (32 + 64 + 96 + 128 + 128)
    + (512 * 256 + 256 + 256 * 256 + 256)
    + (1792 * 256 + 256)
    + (512 * 256 + 256 + 256 * 2 + 2)
)
#: ours: one fake-logit row instead of two in each of the two 2-class layers
OURS = REFERENCE_PARAMETERS - (1792 + 1) - (256 + 1)


def test_full_size_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        det = MultiAttention()
    assert REFERENCE_PARAMETERS == 18_645_556
    assert count_parameters(det) == OURS


# -- an independent forward of DeepfakeBench's MultiAttentionDetector ---------------------
def bn(t: torch.Tensor, s: dict[str, torch.Tensor], name: str, calibrate: bool) -> torch.Tensor:
    if calibrate:
        s[f"{name}.running_mean"] = t.mean((0, 2, 3))
        s[f"{name}.running_var"] = t.var((0, 2, 3), unbiased=False) + 0.1
    w, b = s[f"{name}.weight"], s[f"{name}.bias"]
    m, v = s[f"{name}.running_mean"], s[f"{name}.running_var"]
    eps = EPS if name.startswith("backbone.") else 1e-5
    return F.batch_norm(t, m, v, w, b, training=False, eps=eps)


def walk(x: torch.Tensor, s: dict[str, torch.Tensor], calibrate: bool = False) -> dict:
    """``features()``: named_children of the EfficientNet until ``_avg_pooling``: no swish
    after ``_bn0`` / ``_bn1``; blocks 5 and 21 kept; efficientnet_pytorch 0.7 padding."""
    p = "backbone.efficientnet."

    def same(t: torch.Tensor, k: int, stride: int, planned: int) -> torch.Tensor:
        pad = max((math.ceil(planned / stride) - 1) * stride + k - planned, 0)
        return F.pad(t, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    out = {}
    x = bn(F.conv2d(x, s[f"{p}_conv_stem.weight"], stride=2), s, f"{p}_bn0", calibrate)
    size = math.ceil(IMAGE_SIZE / 2)
    for n, (k, stride, expand, cin, cout) in enumerate(b4_blocks()):
        blk, inputs = f"{p}_blocks.{n}", x
        if expand != 1:
            x = F.silu(
                bn(F.conv2d(x, s[f"{blk}._expand_conv.weight"]), s, f"{blk}._bn0", calibrate)
            )
        x = F.conv2d(
            same(x, k, stride, size), s[f"{blk}._depthwise_conv.weight"], stride=stride,
            groups=x.shape[1],
        )  # fmt: skip
        x = F.silu(bn(x, s, f"{blk}._bn1", calibrate))
        se = F.silu(
            F.conv2d(x.mean((2, 3), keepdim=True), s[f"{blk}._se_reduce.weight"],
                     s[f"{blk}._se_reduce.bias"])
        )  # fmt: skip
        se = F.conv2d(se, s[f"{blk}._se_expand.weight"], s[f"{blk}._se_expand.bias"])
        x = bn(F.conv2d(torch.sigmoid(se) * x, s[f"{blk}._project_conv.weight"]), s,
               f"{blk}._bn2", calibrate)  # fmt: skip
        if stride == 1 and cin == cout:
            x = x + inputs
        size = math.ceil(size / stride)
        if n in (5, 21):
            out[n] = x
    out["final"] = bn(F.conv2d(x, s[f"{p}_conv_head.weight"]), s, f"{p}_bn1", calibrate)
    return out


def reference_forward(x: torch.Tensor, s: dict, calibrate: bool = False) -> dict:
    """DeepfakeBench's forward past the warm-up, eval mode: 2-class logits, and last_layer's."""
    layers = walk(x, s, calibrate)
    a = F.conv2d(layers[21], s["attention_generation.conv_extract.weight"],
                 s["attention_generation.conv_extract.bias"], padding=1)  # fmt: skip
    a = F.relu(bn(a, s, "attention_generation.bn1", calibrate))
    a = bn(F.conv2d(a, s["attention_generation.conv2.weight"]), s, "attention_generation.bn2",
           calibrate)  # fmt: skip
    a = (F.elu(a) + 1) * F.interpolate(s["attention_generation.mask"], a.shape[2:])

    t, te = layers[5], "texture_enhance"
    d = F.adaptive_avg_pool2d(t, a.shape[2:])
    t = t - F.interpolate(d, t.shape[2:], mode="nearest")
    f0 = F.conv2d(t, s[f"{te}.conv0.weight"], s[f"{te}.conv0.bias"])
    feats = f0
    for i in (1, 2, 3):
        new = F.conv2d(F.relu(bn(feats, s, f"{te}.bn{i}", calibrate)), s[f"{te}.conv{i}.weight"],
                       s[f"{te}.conv{i}.bias"], padding=1)  # fmt: skip
        feats = torch.cat([feats, new], 1)
    e = F.conv2d(F.relu(bn(feats, s, f"{te}.bn4", calibrate)), s[f"{te}.conv_last.weight"],
                 s[f"{te}.conv_last.bias"])  # fmt: skip
    e = bn(e, s, f"{te}.bn_last", calibrate)

    au = F.interpolate(a, e.shape[2:], mode="bilinear", align_corners=True)
    p = F.normalize(torch.einsum("imjk,injk->imn", au, e), p=2, dim=-1).flatten(1)
    p = F.hardswish(F.linear(p, s["projection_local.0.weight"], s["projection_local.0.bias"]))
    p = F.hardswish(F.linear(p, s["projection_local.2.weight"], s["projection_local.2.bias"]))
    a2 = F.interpolate(a.sum(1, keepdim=True), layers["final"].shape[2:], mode="bilinear",
                       align_corners=True)  # fmt: skip
    g = torch.einsum("imjk,injk->imn", a2, layers["final"]) / (a2 + 1e-8).sum((2, 3))[..., None]
    g = F.hardswish(F.hardswish(F.linear(g.squeeze(1), s["projection_final.0.weight"],
                                         s["projection_final.0.bias"])))  # fmt: skip
    z = torch.cat([p, g], 1)
    z = F.hardswish(F.linear(z, s["ensemble_classifier_fc.0.weight"],
                             s["ensemble_classifier_fc.0.bias"]))  # fmt: skip
    z = F.linear(z, s["ensemble_classifier_fc.2.weight"], s["ensemble_classifier_fc.2.bias"])
    pooled = layers["final"].mean((2, 3))
    backbone = F.linear(pooled, s["backbone.last_layer.weight"], s["backbone.last_layer.bias"])
    return {"ensemble": z, "backbone": backbone}


#: the images the parity test scores; the file's BN statistics are calibrated on them
IMAGES = torch.randn(3, 3, SMALL, SMALL, generator=torch.Generator().manual_seed(7))


def deepfakebench_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """multi_attention_best.pth's keys, random weights, BN statistics calibrated on IMAGES
    (32 random blocks calibrated on a few 64 px images do not generalise to other noise)."""
    gen = torch.Generator().manual_seed(seed)
    s = {
        f"backbone.efficientnet.{k}": v for k, v in reference_state(seed).items() if "_fc" not in k
    }

    def t(*shape: int, scale: float = 1.0) -> torch.Tensor:
        fan = math.prod(shape[1:]) if len(shape) > 1 else 1
        return torch.randn(*shape, generator=gen) * scale / math.sqrt(fan)

    def bn_params(name: str, c: int) -> None:
        s[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
        s[f"{name}.bias"] = torch.randn(c, generator=gen) * 0.1
        s[f"{name}.running_mean"], s[f"{name}.running_var"] = torch.zeros(c), torch.ones(c)
        s[f"{name}.num_batches_tracked"] = torch.tensor(0)

    s["backbone.last_layer.weight"], s["backbone.last_layer.bias"] = t(2, 1792), t(2)
    mask = torch.zeros(1, 1, 24, 24)
    mask[0, 0, 2:-2, 2:-2] = 1
    s["attention_generation.mask"] = mask
    s["attention_generation.conv_extract.weight"] = t(160, 160, 3, 3)
    s["attention_generation.conv_extract.bias"] = t(160)
    bn_params("attention_generation.bn1", 160)
    s["attention_generation.conv2.weight"] = t(4, 160, 1, 1)
    bn_params("attention_generation.bn2", 4)
    for name, cout, cin, k in (("conv0", 32, 32, 1), ("conv1", 32, 32, 3), ("conv2", 32, 64, 3),
                               ("conv3", 32, 96, 3), ("conv_last", 128, 128, 1)):  # fmt: skip
        s[f"texture_enhance.{name}.weight"] = t(cout, cin, k, k)
        s[f"texture_enhance.{name}.bias"] = t(cout)
    for name, c in (("bn1", 32), ("bn2", 64), ("bn3", 96), ("bn4", 128), ("bn_last", 128)):
        bn_params(f"texture_enhance.{name}", c)
    for name, cout, cin in (("projection_local.0", 256, 512), ("projection_local.2", 256, 256),
                            ("projection_final.0", 256, 1792), ("ensemble_classifier_fc.0", 256, 512),
                            ("ensemble_classifier_fc.2", 2, 256)):  # fmt: skip
        s[f"{name}.weight"], s[f"{name}.bias"] = t(cout, cin, scale=2.0), t(cout, scale=0.1)
    with torch.no_grad():
        ref = reference_forward(IMAGES, s, calibrate=True)
    # scale each 2-class layer so that z1 - z0 spreads over about one unit around 0
    for name, layer in (
        ("ensemble", "ensemble_classifier_fc.2"),
        ("backbone", "backbone.last_layer"),
    ):
        diff = ref[name][:, 1] - ref[name][:, 0]
        s[f"{layer}.weight"] = s[f"{layer}.weight"] / diff.std()
        s[f"{layer}.bias"] = s[f"{layer}.bias"] / diff.std()
        s[f"{layer}.bias"][1] -= diff.mean() / diff.std()
    return s


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = deepfakebench_state()
    path = tmp_path_factory.mktemp("dfb") / "multi_attention_best.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path, state


@pytest.fixture(scope="module")
def detector(official: tuple[Path, dict[str, torch.Tensor]]) -> MultiAttention:
    det = load_detector("multi_attention", weights=official[0])
    assert isinstance(det, MultiAttention)
    return det.eval()


def test_deepfakebench_file_matches_the_functional_forward(
    official: tuple[Path, dict[str, torch.Tensor]], detector: MultiAttention
) -> None:
    _, state = official
    x = IMAGES
    with torch.no_grad():
        ref = reference_forward(x, dict(state))
        out = detector({"image": x})
        detector.head = "backbone"
        backbone = detector({"image": x})["logits"]
        detector.head = "ensemble"
    assert out["attentions"].shape == (3, 4, 4, 4) and out["features_d"].shape == (3, 32, 4, 4)
    for name, got in (("ensemble", out["logits"]), ("backbone", backbone)):
        prob = torch.softmax(ref[name], 1)[:, 1]
        assert prob.min() > 0.02 and prob.max() < 0.98 and prob.std() > 1e-3, name
        np.testing.assert_allclose(torch.sigmoid(got).numpy(), prob.numpy(), atol=2e-5)
    # the walk without swish after the stem and head batch norms is what the file needs
    swished = detector.backbone.forward_features(x).mean((2, 3))
    assert not torch.allclose(swished, walk(x, dict(state))["final"].mean((2, 3)), atol=1e-2)
    # DeepfakeBench's test-time input comes with the file
    assert detector.preprocessing.resize_to == 256 and detector.preprocessing.mean == (0.5,) * 3
    assert any(f.name == "DeepfakeBench Multi-Attention" for f in formats_for(state))


def test_loading_is_strict(official: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    _, state = official
    det = MultiAttention()
    bad = {k: v for k, v in state.items() if k != "texture_enhance.conv0.weight"}
    bad["AGDA.extra"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(Exception, match=r"texture_enhance\.conv0\.weight") as error:
        det.load_weights(tmp_path / "bad.pth")
    assert "AGDA.extra" in str(error.value)


def test_gaussian_blur_is_kornias_kernel_with_reflect_border() -> None:
    x = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    g = torch.exp(-((torch.arange(11.0) - 5) ** 2) / (2 * 7.0**2))
    k2 = torch.outer(g, g) / g.sum() ** 2
    expected = F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), k2.expand(3, 1, 11, 11), groups=3)
    torch.testing.assert_close(gaussian_blur(x, 11, 7.0), expected, atol=1e-5, rtol=1e-5)


def test_agda_blends_only_where_the_attention_is() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    attentions = torch.zeros(2, 4, 8, 8)
    attentions[:, :, 4:, 4:] = 1.0  # every map on the bottom-right quarter only
    out = agda(x, attentions)
    assert out.shape == x.shape
    assert torch.equal(out[:, :, :12, :], x[:, :, :12, :])  # bilinear spread ends by row 12
    assert (out[:, :, 24:, 24:] - x[:, :, 24:, 24:]).abs().mean() > 0.1


def test_region_independence_loss_by_hand() -> None:
    loss = RegionIndependenceLoss(num_attentions=2, channels=3, alpha=0.5)
    feats = torch.zeros(1, 3, 2, 2)
    feats[0, 0] = 1.0  # every texture vector = e0 after L2 normalisation
    att = torch.ones(1, 2, 2, 2)
    value = loss(feats, att, torch.tensor([1]))
    centre = torch.tensor([0.5, 0.0, 0.0])  # 0 + 0.5 * (e0 - 0)
    torch.testing.assert_close(loss.centers, centre.expand(2, 3))
    # intra: relu(|e0 - c| - 0.1) = 0.4 (fake margin); inter: relu(0.2 - 0) / 2 / 0.5 = 0.2
    assert value.item() == pytest.approx(0.4 + 0.2, abs=1e-6)
    assert loss.state_dict() == {}  # as in DeepfakeBench: not part of the weights file


def test_training_reaches_every_parameter_and_overfits(detector: MultiAttention) -> None:
    det = copy.deepcopy(detector)
    det.backbone_steps, det.ril_weight = 0, 0.0  # the full model with AGDA, past the warm-up
    torch.manual_seed(0)
    batch = {"image": torch.rand(4, 3, SMALL, SMALL) * 2 - 1, "label": torch.tensor([0, 1, 0, 1])}
    det.ril_weight = 1.0
    missing = parameters_without_gradient(det, batch)
    assert missing == [f"backbone_head.{p}" for p in ("weight", "bias")]
    det.ril_weight = 0.0
    assert overfit(det, batch, steps=40, lr=1e-3, target=0.1) < 0.1
    warm = copy.deepcopy(detector)  # the warm-up trains the EfficientNet and its own head
    warm.steps = 0
    assert warm.training_step(batch)["loss"].requires_grad
    assert {"bce", "ril"}.isdisjoint(warm.training_step(batch))


def test_matches_deepfakebench_code_with_both_heads(tmp_path: Path) -> None:
    """DeepfakeBench's MultiAttentionDetector on the reference pictures
    (tests/official/make_multi_attention.py): the ensemble (``outputs``, also checked by
    test_official_parity) and the warm-up ``last_layer`` path (``outputs_backbone``)."""
    from PIL import Image

    from tests.official.images import reference_images
    from tests.official.weights import load_reference, write_official_file

    reference = load_reference("deepfakebench_multi_attention")
    path = write_official_file(reference, tmp_path / reference["filename"])
    det = load_detector("multi_attention", weights=path).eval()
    images = reference_images(reference["images_seed"])
    x = torch.stack(
        [det.eval_transform({"image": Image.fromarray(a), "record": None})["image"] for a in images]
    )
    for head, key in (("ensemble", "outputs"), ("backbone", "outputs_backbone")):
        det.head = head
        with torch.no_grad():
            logits = det({"image": x})["logits"].double().numpy()
        expected = np.array(reference[key]["logits"])
        assert expected.std() > 0.05, key
        np.testing.assert_allclose(logits, expected, atol=reference["tolerance"]["logit"], rtol=0)
