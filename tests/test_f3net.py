"""F3-Net: FAD and LFS against scipy's DCT, MixBlock against the reference's, checkpoints, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.f3net import F3Net, FrequencyAwareDecomposition, LocalFrequencyStatistics, MixBlock
from detectors.layers.xception import adapt_first_conv
from tests.detector_checks import overfit, parameters_without_gradient, random_images
from tests.test_xception import ReferenceXception

#: yyk-wew/F3Net ``F3Net(mode='Mix', num_classes=1)`` at 299 px, its trainable tensors:
XCEPTION = 20_806_952  # the Cadene Xception without classifier (tests/test_xception.py)
REFERENCE_PARAMETERS = (
    4 * 299 * 299  # FAD: four learnable 299 x 299 filters
    + 6 * 10 * 10  # LFS: six learnable 10 x 10 filters
    + XCEPTION
    + 32 * 9 * (12 - 3)  # FAD Xception, 12-channel conv1
    + XCEPTION
    + 32 * 9 * (6 - 3)  # LFS Xception, 6-channel conv1
    + (4 * 728 * 728 + 12 * 728 + 2)  # MixBlock(728): 4 1x1 convs, 2 depthwise, 2 BN, 2 gammas
    + (4 * 1024 * 1024 + 12 * 1024 + 2)  # MixBlock(1024)
    + 4096
    + 1  # fc Linear(4096, 1)
)
# (the reference also holds frozen nn.Parameters: DCT matrices and base bands, 537,212, and
# its two Xceptions' unused fc Linear(2048, 1), 4,098; here they are buffers or absent)


class ReferenceMixBlock(nn.Module):
    """yyk-wew/F3Net's MixBlock, with its attribute names."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.FAD_query, self.LFS_query = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.FAD_key, self.LFS_key = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.FAD_gamma, self.LFS_gamma = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.FAD_conv, self.FAD_bn = nn.Conv2d(c, c, 1, groups=c), nn.BatchNorm2d(c)
        self.LFS_conv, self.LFS_bn = nn.Conv2d(c, c, 1, groups=c), nn.BatchNorm2d(c)

    def forward(self, x_fad: torch.Tensor, x_lfs: torch.Tensor):
        b, c, w, h = x_fad.shape
        q = torch.cat(
            [self.FAD_query(x_fad).view(-1, w, h), self.LFS_query(x_lfs).view(-1, w, h)], dim=2
        )
        k = torch.cat(
            [
                self.FAD_key(x_fad).view(-1, w, h).transpose(1, 2),
                self.LFS_key(x_lfs).view(-1, w, h).transpose(1, 2),
            ],
            dim=1,
        )
        attention = torch.softmax(torch.bmm(q, k), dim=-1).view(b, c, w, w)
        att_lfs = x_lfs * attention * (torch.sigmoid(self.LFS_gamma) * 2.0 - 1.0)
        att_fad = x_fad * attention * (torch.sigmoid(self.FAD_gamma) * 2.0 - 1.0)
        return (
            x_fad + self.FAD_bn(self.FAD_conv(att_lfs)),
            x_lfs + self.LFS_bn(self.LFS_conv(att_fad)),
        )


def reference_fad(x: np.ndarray, learnable: np.ndarray) -> np.ndarray:
    """FAD with scipy's orthonormal DCT-II, per image and channel: (B, 3, S, S) -> (B, 12, S, S)."""
    s = x.shape[-1]
    diagonal = np.add.outer(np.arange(s), np.arange(s))
    bands = [(0, s // 2.82), (s // 2.82, s // 2), (s // 2, 2 * s), (0, 2 * s)]
    out = []
    for (start, end), w in zip(bands, learnable, strict=True):
        mask = ((diagonal >= start) & (diagonal <= end)) + (2 / (1 + np.exp(-w)) - 1)
        spectrum = scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")
        out.append(scipy.fft.idctn(spectrum * mask, axes=(-2, -1), norm="ortho"))
    return np.concatenate(out, axis=1)


def reference_lfs(x: np.ndarray, learnable: np.ndarray) -> np.ndarray:
    """LFS window by window: grey 0-255, 10 x 10 windows (stride 2, zero pad 4), Eq. 6."""
    grey = 255 * np.einsum("bchw,c->bhw", x * 0.5 + 0.5, [0.299, 0.587, 0.114])
    grey = np.pad(grey, ((0, 0), (4, 4), (4, 4)))
    diagonal = np.add.outer(np.arange(10), np.arange(10))
    filters = [
        ((diagonal >= 20 / 6 * i) & (diagonal <= 20 / 6 * (i + 1))) + (2 / (1 + np.exp(-w)) - 1)
        for i, w in enumerate(learnable)
    ]
    rows, cols = (grey.shape[1] - 10) // 2 + 1, (grey.shape[2] - 10) // 2 + 1
    out = np.zeros((x.shape[0], 6, rows, cols))
    for b in range(x.shape[0]):
        for r in range(rows):
            for c in range(cols):
                spectrum = scipy.fft.dctn(
                    grey[b, 2 * r : 2 * r + 10, 2 * c : 2 * c + 10], norm="ortho"
                )
                for i, h in enumerate(filters):
                    out[b, i, r, c] = np.log10(np.abs(spectrum * h).sum() + 1.0)
    return out


@pytest.fixture(scope="module")
def native() -> F3Net:
    torch.manual_seed(0)
    return load_detector("f3net")


@pytest.fixture(scope="module")
def small() -> F3Net:
    torch.manual_seed(0)
    return F3Net(preprocessing={"size": 32})


def test_parameter_count_and_config(native: F3Net) -> None:
    assert REFERENCE_PARAMETERS == 48_314_929
    assert count_parameters(native) == REFERENCE_PARAMETERS
    assert count_parameters(ReferenceMixBlock(728)) == count_parameters(native.mix7)
    assert native.config_name == "f3net" and native.mode == "mix"
    p = native.preprocessing
    assert (p.size, p.resize, p.mean, p.std) == (299, "square", (0.5,) * 3, (0.5,) * 3)
    assert (p.hflip, p.blur_prob, p.jpeg_prob) == (0.0, 0.0, 0.0)
    assert native.fad_xception.conv1.weight.shape == (32, 12, 3, 3)
    assert native.lfs_xception.conv1.weight.shape == (32, 6, 3, 3)
    assert native.lfs_xception.conv1.stride == (1, 1)
    # ImageNet stems: the RGB kernel tiled and divided, as yyk-wew/F3Net initialises them
    rgb = torch.randn(32, 3, 3, 3)
    torch.testing.assert_close(adapt_first_conv(rgb, 6), rgb.repeat(1, 2, 1, 1) / 2)
    torch.testing.assert_close(adapt_first_conv(rgb, 12), rgb.repeat(1, 4, 1, 1) / 4)
    optimizer, _ = native.configure_optimizers()
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]) == (
        2e-4,
        5e-4,
    )


def test_forward_at_native_size(native: F3Net) -> None:
    x = native.eval_transform({"image": random_images(1, (320, 300))[0], "record": None})["image"]
    assert x.shape == (3, 299, 299)
    with torch.no_grad():
        assert native.lfs(x[None]).shape == (1, 6, 149, 149)
        out = native.eval()({"image": x[None]})
    assert out["logits"].shape == (1,) and torch.isfinite(out["logits"]).all()
    with pytest.raises(ValueError, match="299 x 299"):
        native({"image": torch.zeros(1, 3, 64, 64)})


def test_fad_matches_scipy_dct() -> None:
    torch.manual_seed(0)
    fad = FrequencyAwareDecomposition(40)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        got = fad(x).numpy()
    expected = reference_fad(x.double().numpy(), fad.learnable.double().detach().numpy())
    np.testing.assert_allclose(got, expected, atol=2e-4)
    # without the learnable parts, low + middle + high is the image and "all" is the image
    with torch.no_grad():
        fad.learnable.zero_()
        bands = fad(x).reshape(2, 4, 3, 40, 40)
    torch.testing.assert_close(bands[:, 3], x, atol=1e-4, rtol=0)


def test_lfs_matches_windowed_scipy_dct() -> None:
    torch.manual_seed(0)
    lfs = LocalFrequencyStatistics((0.5,) * 3, (0.5,) * 3)
    x = torch.rand(2, 3, 18, 22) * 2 - 1
    with torch.no_grad():
        got = lfs(x).numpy()
    assert got.shape == (2, 6, 9, 11)
    expected = reference_lfs(x.double().numpy(), lfs.learnable.double().detach().numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_mixblock_matches_the_reference() -> None:
    torch.manual_seed(0)
    reference = ReferenceMixBlock(8)
    for bn in (reference.FAD_bn, reference.LFS_bn):
        nn.init.uniform_(bn.running_var, 0.5, 2.0)
        nn.init.normal_(bn.running_mean)
    with torch.no_grad():
        reference.FAD_gamma.fill_(0.7)
        reference.LFS_gamma.fill_(-1.3)
    ours = MixBlock(8)
    renamed = {
        k.replace("FAD_", "fad_").replace("LFS_", "lfs_"): v
        for k, v in reference.state_dict().items()
    }
    ours.load_state_dict(renamed, strict=True)
    fad, lfs = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        expected, got = reference.eval()(fad, lfs), ours.eval()(fad, lfs)
    torch.testing.assert_close(got, expected)
    assert (got[0] - fad).abs().max() > 1e-2 and (got[1] - lfs).abs().max() > 1e-2


def test_backward_reaches_every_parameter_and_overfits(small: F3Net) -> None:
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert parameters_without_gradient(small, batch) == []
    assert overfit(small, batch, steps=60, lr=1e-3) < 0.05


def test_deepfakebench_fad_checkpoint_matches_softmax_of_the_reference(
    tmp_path: Path,
) -> None:
    torch.manual_seed(1)
    size = 64
    xception = ReferenceXception()
    xception.conv1 = nn.Conv2d(12, 32, 3, 2, 0, bias=False)
    xception.last_linear = nn.Sequential(nn.Dropout(0.5), nn.Linear(2048, 2))
    learnable = torch.randn(4, size, size) * 0.1
    calibration = torch.from_numpy(
        reference_fad(np.random.randn(4, 3, size, size), learnable.numpy())
    )
    for module in xception.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        xception.train().features(calibration.float())
    xception.eval()

    dct = torch.from_numpy(scipy.fft.dct(np.eye(size), norm="ortho", axis=0)).float()
    diagonal = torch.arange(size)[:, None] + torch.arange(size)[None, :]
    bands = [(0, size // 2.82), (size // 2.82, size // 2), (size // 2, 2 * size), (0, 2 * size)]
    state = {f"module.backbone.{k}": v for k, v in xception.state_dict().items()}
    state["module.backbone.adjust_channel.0.weight"] = torch.zeros(512, 2048, 1, 1)
    state["module.FAD_head._DCT_all"], state["module.FAD_head._DCT_all_T"] = dct, dct.T
    for i, (start, end) in enumerate(bands):
        state[f"module.FAD_head.filters.{i}.base"] = (
            (diagonal >= start) & (diagonal <= end)
        ).float()
        state[f"module.FAD_head.filters.{i}.learnable"] = learnable[i]
    torch.save(state, tmp_path / "f3net_best.pth")

    with pytest.raises(UserError, match=r"load it with detector\.mode=fad"):
        load_detector("f3net", weights=tmp_path / "f3net_best.pth")
    with pytest.raises(
        UserError, match=r"for 64 px images .* detector\.preprocessing\.size is 128"
    ):
        load_detector(
            "f3net", weights=tmp_path / "f3net_best.pth", mode="fad", preprocessing={"size": 128}
        )
    # the file brings DeepfakeBench's test input: its FAD size, cv2 INTER_CUBIC
    det = load_detector("f3net", weights=tmp_path / "f3net_best.pth", mode="fad")
    p = det.preprocessing
    assert (p.size, p.resize_to, p.resize_backend, p.interpolation) == (
        size,
        size,
        "cv2",
        "bicubic",
    )
    assert det.config["preprocessing"]["size"] == size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        fad = torch.from_numpy(reference_fad(x.double().numpy(), learnable.double().numpy()))
        expected = torch.softmax(xception(fad.float()), dim=1)[:, 1].numpy()
    assert expected.std() > 1e-3
    np.testing.assert_allclose(det.predict_batch({"image": x}).numpy(), expected, atol=1e-4)
