"""SRM two-stream: the published SRM kernels, DeepfakeBench checkpoint parity, AM-softmax, training.

``DeepfakeBenchSRM`` below is DeepfakeBench's ``SRMDetector`` module tree and
forward, written from ``training/detectors/srm_detector.py`` (kernels built
with numpy as there, ``view``/``permute``/``bmm`` attention, the unused
``blur`` buffer) on the Xception of tests/test_spsl.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.srm_two_stream import (
    SeparableSRM,
    SRMFilter,
    SRMTwoStream,
    am_softmax_loss,
    attention_grid,
)
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)
from tests.test_spsl import DeepfakeBenchXception, randomise

#: DeepfakeBench SRMDetector at 256 px (attention size 16): every nn.Parameter it registers
REFERENCE_TOTAL = 55_350_352
#: of which its four fixed SRM kernels (Parameters with requires_grad=False; buffers here):
#: srm_conv0 3x3x5x5, srm_conv1 96x1x5x5, srm_conv2 192x1x5x5, srm_sa.srm 3x3x5x5
REFERENCE_SRM_KERNELS = 225 + 2_400 + 4_800 + 225
#: and what its forward never calls: 2 x adjust_channel (1,050,112) and backbone_srm.last_linear
REFERENCE_UNUSED = 2 * 1_050_112 + 4_098
REFERENCE_TRAINABLE_USED = REFERENCE_TOTAL - REFERENCE_SRM_KERNELS - REFERENCE_UNUSED
#: ours: the same trainable network with a 1-logit head (2,049 instead of 4,098)
OURS = REFERENCE_TRAINABLE_USED - 2_049

# the published kernels (Fridrich & Kodovsky's SRM, as RGB-N and the paper use them)
KB = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]) / 4.0
KV = (
    np.array(
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ]
    )
    / 12.0
)
H2 = np.array([[1, -2, 1]]) / 2.0


def published_5x5() -> np.ndarray:
    """(3, 5, 5): KB and H2 centred in a 5 x 5 window, KV as is."""
    out = np.zeros((3, 5, 5))
    out[0, 1:4, 1:4] = KB
    out[1] = KV
    out[2, 2:3, 1:4] = H2
    return out


class RefSRMSimple(nn.Module):
    def __init__(self, inc: int = 3) -> None:
        super().__init__()
        filters = np.repeat(published_5x5()[:, None], inc, axis=1)  # (3, inc, 5, 5)
        self.kernel = nn.Parameter(torch.FloatTensor(filters), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(F.conv2d(x, self.kernel, stride=1, padding=2), -3, 3)


class RefSRMSeparate(nn.Module):
    def __init__(self, inc: int, outc: int) -> None:
        super().__init__()
        self.inc = inc
        filters = np.repeat(published_5x5()[:, None], inc, axis=0)  # (3 * inc, 1, 5, 5)
        self.kernel = nn.Parameter(torch.FloatTensor(filters), requires_grad=False)
        self.out_conv = nn.Sequential(
            nn.Conv2d(3 * inc, outc, 1, 1, 0, 1, 1, bias=False), nn.BatchNorm2d(outc), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.kernel, stride=1, padding=2, groups=self.inc)
        return self.out_conv(F.hardtanh(out, -3, 3))


class RefSpatialAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=1, keepdim=True)
        peak, _ = torch.max(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([avg, peak], dim=1)))


class RefPixelAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.srm = RefSRMSimple()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 0, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.pa = RefSpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pa(self.conv(self.srm(x)))


class RefDualCMA(nn.Module):
    def __init__(self, in_dim: int, size: int, ratio: int = 8) -> None:
        super().__init__()
        self.key_conv1 = nn.Conv2d(in_dim, in_dim // ratio, 1)
        self.key_conv2 = nn.Conv2d(in_dim, in_dim // ratio, 1)
        self.key_conv_share = nn.Conv2d(in_dim // ratio, in_dim // ratio, 1)
        self.linear1 = nn.Linear(size * size, size * size)
        self.linear2 = nn.Linear(size * size, size * size)
        self.value_conv1 = nn.Conv2d(in_dim, in_dim, 1)
        self.gamma1 = nn.Parameter(torch.zeros(1))
        self.value_conv2 = nn.Conv2d(in_dim, in_dim, 1)
        self.gamma2 = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.size()
        key1 = self.key_conv_share(self.key_conv1(x)).view(b, -1, h * w).permute(0, 2, 1)
        key2 = self.key_conv_share(self.key_conv2(y)).view(b, -1, h * w)
        energy = torch.bmm(key1, key2)
        att_y_on_x = torch.softmax(self.linear1(energy), dim=-1)
        att_x_on_y = torch.softmax(self.linear2(energy.permute(0, 2, 1)), dim=-1)
        value_y = self.value_conv2(y).view(b, -1, h * w)
        out_x = torch.bmm(value_y, att_y_on_x.permute(0, 2, 1)).view(b, c, h, w)
        value_x = self.value_conv1(x).view(b, -1, h * w)
        out_y = torch.bmm(value_x, att_x_on_y.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma1 * out_x + x, self.gamma2 * out_y + y


class RefChannelAttention(nn.Module):
    def __init__(self, planes: int, ratio: int) -> None:
        super().__init__()
        self.sharedMLP = nn.Sequential(
            nn.Conv2d(planes, planes // ratio, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(planes // ratio, planes, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.sharedMLP(F.adaptive_avg_pool2d(x, 1))
        peak = self.sharedMLP(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + peak)


class RefFusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convblk = nn.Sequential(
            nn.Conv2d(4096, 2048, 1, 1, 0, bias=False), nn.BatchNorm2d(2048), nn.ReLU()
        )
        self.ca = RefChannelAttention(2048, 16)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fuse = self.convblk(torch.cat((x, y), dim=1))
        return fuse * self.ca(fuse)


class RefBlur(nn.Module):
    """GaussianSmoothing(3, 7, 0.8): built by the reference, never called; a buffer."""

    def __init__(self) -> None:
        super().__init__()
        grid = torch.arange(7, dtype=torch.float32) - 3
        g = torch.exp(-(grid**2) / (2 * 0.8**2))
        kernel = g[:, None] * g[None]
        self.register_buffer("weight", (kernel / kernel.sum()).repeat(3, 1, 1, 1))


class DeepfakeBenchSRM(nn.Module):
    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.backbone_rgb = DeepfakeBenchXception(3)
        self.backbone_srm = DeepfakeBenchXception(3)
        self.blur = RefBlur()
        self.srm_conv0 = RefSRMSimple(3)
        self.srm_conv1 = RefSRMSeparate(32, 32)
        self.srm_conv2 = RefSRMSeparate(64, 64)
        self.srm_sa = RefPixelAttention()
        self.srm_sa_post = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU())
        self.dual_cma0 = RefDualCMA(728, size)
        self.dual_cma1 = RefDualCMA(728, size)
        self.fusion = RefFusion()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        rgb, hf = self.backbone_rgb, self.backbone_srm
        srm = self.srm_conv0(x)
        x = rgb.fea_part1_0(x)
        y = F.relu(hf.fea_part1_0(srm) + self.srm_conv1(x))
        x = rgb.fea_part1_1(x)
        y = F.relu(hf.fea_part1_1(y) + self.srm_conv2(x))
        att = self.srm_sa(srm)
        x = self.srm_sa_post(x * att + x)
        x, y = self.dual_cma0(rgb.blocks(x, 1, 3), hf.blocks(y, 1, 3))
        x, y = self.dual_cma1(rgb.blocks(x, 4, 7), hf.blocks(y, 4, 7))
        x, y = rgb.blocks(x, 8, 12), hf.blocks(y, 8, 12)
        return self.fusion(rgb.fea_part5(x), hf.fea_part5(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone_rgb.classifier(self.features(x))


def test_srm_kernels_are_the_published_ones_on_crafted_images() -> None:
    srm = SRMFilter(3)
    assert [name for name, _ in srm.named_parameters()] == []  # fixed: buffers, never trained
    assert list(srm.state_dict()) == ["kernel"]
    # an impulse in one channel: each output channel is that filter (all are symmetric)
    impulse = torch.zeros(1, 3, 11, 11)
    impulse[0, 1, 5, 5] = 1.0
    out = srm(impulse)[0, :, 3:8, 3:8].double().numpy()
    np.testing.assert_allclose(out, published_5x5(), atol=1e-7, rtol=0)
    assert out[0, 2, 2] == -1.0 and out[1, 2, 2] == -1.0 and out[2, 2, 2] == -1.0
    # channels are summed (1 + 2 = 3 x the filter), then clipped to [-3, 3]
    impulse[0, 2, 5, 5] = 2.0
    out = srm(impulse)[0].double().numpy()
    np.testing.assert_allclose(out[:, 3:8, 3:8], np.clip(3 * published_5x5(), -3, 3), atol=1e-6)
    assert out[1, 5, 5] == -3.0  # KV's centre: -12 / 12 * 3, exactly at the clip
    impulse[0, 0, 5, 5] = 5.0
    assert srm(impulse)[0, :, 5, 5].tolist() == [-3.0, -3.0, -3.0]  # -8, -8, -8 before clipping
    # high-pass: a plane (constant + linear ramps) vanishes away from the zero padding
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    plane = (0.3 + 0.05 * rows - 0.02 * cols).expand(1, 3, 12, 12) / 3
    assert srm(plane)[..., 2:-2, 2:-2].abs().max() < 1e-6
    # the grouped kernel of SRMConv2d_Separate: output channel o uses filter o // C
    separable = SeparableSRM(32, 32)
    expected = np.repeat(published_5x5()[:, None], 32, axis=0)
    np.testing.assert_allclose(separable.kernel.numpy(), expected, atol=1e-7, rtol=0)
    feature_impulse = torch.zeros(1, 32, 11, 11)
    feature_impulse[0, 10, 5, 5] = 1.0  # channel 10 -> outputs 30, 31, 32 -> KB, KB, KV
    residual = F.conv2d(feature_impulse, separable.kernel, padding=2, groups=32)
    got = residual[0, 30:33, 3:8, 3:8].double().numpy()
    np.testing.assert_allclose(got, published_5x5()[[0, 0, 1]], atol=1e-7, rtol=0)
    assert residual[0, :30].abs().max() == 0 and residual[0, 33:].abs().max() == 0


def test_am_softmax_on_the_fake_logit_is_deepfakebenchs() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 2) * 0.3
    target = torch.randint(0, 2, (16,))
    m, s = 0.45, 30.0
    # DeepfakeBench AMSoftmaxLoss('cos', gamma=0, m=0.45, s=30, t=1) on 2-class logits
    index = torch.zeros_like(z, dtype=torch.bool)
    index.scatter_(1, target.view(-1, 1), True)
    expected = F.cross_entropy(s * torch.where(index, z - m, z), target)
    got = am_softmax_loss(z[:, 1] - z[:, 0], target.float(), m, s)
    torch.testing.assert_close(got, expected)
    assert expected > 0.1  # the margin is active


def test_attention_grid_fixes_the_input_size() -> None:
    assert attention_grid(256) == 16 and attention_grid(64) == 4 and attention_grid(32) == 2
    assert attention_grid(7) == 1
    with pytest.raises(UserError, match="at least 7 x 7 pixels"):
        attention_grid(6)


@pytest.fixture(scope="module")
def reference() -> DeepfakeBenchSRM:
    """DeepfakeBench's SRM detector for 64 px inputs (4 x 4 attention), random weights."""
    model = DeepfakeBenchSRM(size=4)
    randomise(model, 3, lambda: model.features(torch.randn(4, 3, 64, 64)))
    for cma in (model.dual_cma0, model.dual_cma1):  # make the attention count
        cma.gamma1.data.fill_(0.7)
        cma.gamma2.data.fill_(-0.4)
    return model


@pytest.fixture(scope="module")
def small() -> SRMTwoStream:
    """Ours for 64 px inputs; every test that needs its weights loads or trains them."""
    torch.manual_seed(0)
    return SRMTwoStream(preprocessing={"size": 64})


def cma_linears(size: int) -> int:
    """Parameters of the four N x N linear layers (N = size^2) of the two attention modules."""
    n = size * size
    return 4 * (n * n + n)


def test_parameter_count_deepfakebench_keys_and_native_forward(
    reference: DeepfakeBenchSRM, small: SRMTwoStream
) -> None:
    # only the attention's linear layers depend on the size: the 256 px reference is the
    # 64 px one with 16 x 16 instead of 4 x 4 maps
    assert count_parameters(reference) - cma_linears(4) + cma_linears(16) == REFERENCE_TOTAL
    unused = (
        count_parameters(reference.backbone_rgb.adjust_channel)
        + count_parameters(reference.backbone_srm.adjust_channel)
        + count_parameters(reference.backbone_srm.last_linear)
    )
    assert unused == REFERENCE_UNUSED
    kernels = [p.numel() for n, p in reference.named_parameters() if n.endswith("kernel")]
    assert sum(kernels) == REFERENCE_SRM_KERNELS
    skip = ("adjust_channel.", "last_linear.", "blur.")
    theirs = {
        k: v.shape for k, v in reference.state_dict().items() if not any(part in k for part in skip)
    }
    ours = {k: v.shape for k, v in small.state_dict().items() if not k.startswith("head.")}
    assert ours == theirs
    assert count_parameters(small) == OURS - cma_linears(16) + cma_linears(4)

    det = load_detector("srm")
    assert isinstance(det, SRMTwoStream)
    assert count_parameters(det) == OURS
    assert abs(count_parameters(det) - REFERENCE_TRAINABLE_USED) / REFERENCE_TRAINABLE_USED < 0.01
    assert det.dual_cma1.linear2.weight.shape == (256, 256)
    p = det.preprocessing
    assert (p.size, p.resize, p.interpolation, p.crop) == (256, "square", "bicubic", "none")
    assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.5, 0.5, 0.5) and p.hflip == 0
    assert (det.am_margin, det.am_scale) == (0.45, 30.0)
    optimizer, scheduler = det.configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert (group["lr"], group["eps"], group["weight_decay"]) == (2e-4, 1e-8, 5e-4)
    batch = transformed_batch(det, random_images(1, (200, 240)), [0])
    assert batch["image"].shape == (1, 3, 256, 256)
    with torch.no_grad():
        logits = det.eval()(batch)["logits"]
        assert logits.shape == (1,) and torch.isfinite(logits).all()
        with pytest.raises(UserError, match="built for 16 x 16 feature maps"):
            det({"image": torch.zeros(1, 3, 128, 128)})


def test_deepfakebench_checkpoint_predicts_like_the_reference(
    reference: DeepfakeBenchSRM, small: SRMTwoStream, tmp_path: Path, caplog
) -> None:
    path = tmp_path / "srm_best.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    det = small
    with caplog.at_level(logging.INFO):
        det.load_weights(path)
    # DeepfakeBench's test input; the size this test set wins, with a warning
    assert "DeepfakeBench weights, so its official test-time preprocessing" in caplog.text
    assert "size=64 departs from the protocol of DeepfakeBench weights" in caplog.text
    p = det.preprocessing
    assert (p.size, p.resize_backend, p.interpolation) == (64, "cv2", "bicubic")
    det.eval()
    torch.manual_seed(4)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.softmax(reference(images), dim=1)[:, 1]
        got = torch.sigmoid(det({"image": images})["logits"])
    assert expected.std() > 1e-3 and expected.min() > 1e-4 and expected.max() < 1 - 1e-4
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(det.state_dict()["srm_conv1.kernel"], reference.srm_conv1.kernel)

    state = {k: v for k, v in reference.state_dict().items() if k != "dual_cma1.linear2.bias"}
    state["backbone_srm.adjust_channel.0.weight"] = torch.zeros(512, 728, 1, 1)  # wrong shape
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError) as info:
        det.load_weights(tmp_path / "bad.pth")
    message = str(info.value)
    assert "missing keys: dual_cma1.linear2.bias;" in message
    assert "unexpected keys: backbone_srm.adjust_channel.0.weight" in message


def test_backward_reaches_every_parameter_and_overfits_a_tiny_batch(small: SRMTwoStream) -> None:
    batch = transformed_batch(small, random_images(4, 80, seed=6), [1, 0, 0, 1], train=True)
    assert batch["image"].shape == (4, 3, 64, 64)
    assert parameters_without_gradient(small, batch) == []
    assert overfit(small, batch, steps=40) < 0.05
