"""SRM two-stream: an RGB Xception and a high-frequency (SRM) Xception that attend to each other.

After Y. Luo, Y. Zhang, J. Yan and W. Liu, "Generalizing Face Forgery Detection
with High-frequency Features", CVPR 2021 (arXiv:2103.12376). The authors
released no code of their own; the reference implementation is DeepfakeBench's
(github.com/SCLBD/DeepfakeBench, ``training/detectors/srm_detector.py``, whose
modules its header says "are provided by the authors", on
``training/networks/xception.py``; defaults in
``training/config/detector/srm.yaml``). The paper's four parts:

* **SRM filters** (:func:`srm_filters`): three fixed high-pass kernels of the
  Spatial Rich Model (Fridrich and Kodovsky 2012) as used by RGB-N (Zhou et
  al., CVPR 2018): ``KB`` (3x3, / 4), ``KV`` (5x5, / 12) and the horizontal
  second-order ``[1, -2, 1]`` (/ 2), outputs clipped to [-3, 3]; buffers,
  never trained;
* **multi-scale high-frequency features**: the image's SRM residual feeds the
  SRM stream, and SRM residuals of the RGB stream's first two feature maps
  (:class:`SeparableSRM`) are added to the SRM stream's;
* **residual-guided spatial attention** (:class:`ResidualGuidedAttention`):
  an attention map from the SRM residual re-weights the RGB stream's low-level
  features, ``x * att + x``;
* **dual cross-modality attention** (:class:`DualCrossModalAttention`) between
  the two streams' 728-channel maps, after the entry flow and after half the
  middle flow; then the two 2048-channel maps are fused
  (:class:`FeatureFusion`) and classified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.heads import fake_logit_head
from detectors.layers.xception import (
    XCEPTION_FEATURES,
    is_deepfakebench_file,
    split_deepfakebench_xception,
    xception_backbone,
)
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench's test-time face input (as SPSL's)
DEFAULT_PREPROCESSING: dict[str, Any] = dict(DEEPFAKEBENCH_FACE_PREPROCESSING)

#: the published SRM kernels (integers) and their normalisers, in DeepfakeBench's order
SRM_KERNELS: tuple[tuple[tuple[tuple[int, ...], ...], float], ...] = (
    (  # KB: the 3x3 "square" kernel, in a 5x5 window
        (
            (0, 0, 0, 0, 0),
            (0, -1, 2, -1, 0),
            (0, 2, -4, 2, 0),
            (0, -1, 2, -1, 0),
            (0, 0, 0, 0, 0),
        ),
        4.0,
    ),
    (  # KV: the 5x5 "square" kernel
        (
            (-1, 2, -2, 2, -1),
            (2, -6, 8, -6, 2),
            (-2, 8, -12, 8, -2),
            (2, -6, 8, -6, 2),
            (-1, 2, -2, 2, -1),
        ),
        12.0,
    ),
    (  # horizontal second-order difference
        (
            (0, 0, 0, 0, 0),
            (0, 0, 0, 0, 0),
            (0, 1, -2, 1, 0),
            (0, 0, 0, 0, 0),
            (0, 0, 0, 0, 0),
        ),
        2.0,
    ),
)
SRM_CLIP = 3.0
#: the two streams meet at Xception's 728-channel maps (entry flow and middle flow)
CMA_CHANNELS = 728
#: DeepfakeBench builds ``GaussianSmoothing(3, kernel_size=7, sigma=0.8)`` (buffer
#: ``blur.weight``) that its forward never calls; its checkpoints carry it
UNUSED_BLUR = {"blur.weight": (3, 1, 7, 7)}


def srm_filters() -> torch.Tensor:
    """The three normalised SRM kernels, (3, 5, 5) float32."""
    return torch.stack(
        [torch.tensor(k, dtype=torch.float64) / norm for k, norm in SRM_KERNELS]
    ).float()


def attention_grid(size: int) -> int:
    """Side of Xception's 728-channel map (after ``block3``) for a ``size`` x ``size`` input.

    conv1 (3x3, stride 2, no padding), conv2 (3x3, no padding), then three
    stride-2 blocks (max-pool 3, padding 1): 256 -> 127 -> 125 -> 63 -> 32 -> 16.
    """
    n = (size - 3) // 2 + 1 - 2
    if n < 1:
        raise UserError(f"SRM two-stream needs inputs of at least 7 x 7 pixels, not {size}")
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


class SRMFilter(nn.Module):
    """The three SRM filters over the sum of the input channels, clipped to [-3, 3].

    DeepfakeBench's ``SRMConv2d_simple``: kernel (3, C, 5, 5), padding 2, each
    output channel one filter applied to every input channel and summed.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("kernel", srm_filters()[:, None].repeat(1, in_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(F.conv2d(x, self.kernel.to(x.dtype), padding=2), -SRM_CLIP, SRM_CLIP)


class SeparableSRM(nn.Module):
    """SRM residuals of a feature map, mixed by a 1x1 convolution (``SRMConv2d_Separate``).

    A grouped convolution (one group per input channel, three outputs each)
    with the kernel DeepfakeBench builds: the three filters each repeated
    ``in_channels`` times along the output axis, so output channel ``o`` uses
    filter ``o // in_channels``. Most input channels therefore meet one filter
    three times (channel 0 gets ``KB`` thrice; with 32 channels, channel 10
    gets ``KB``, ``KB``, ``KV``): the reference's layout, kept because its
    checkpoints store this kernel. Then clip to [-3, 3], 1x1 conv (no bias),
    BatchNorm, ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        kernel = srm_filters().repeat_interleave(in_channels, dim=0)[:, None]
        self.register_buffer("kernel", kernel)  # (3 * in_channels, 1, 5, 5)
        self.out_conv = nn.Sequential(
            nn.Conv2d(3 * in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self.out_conv[0].weight, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = F.conv2d(x, self.kernel.to(x.dtype), padding=2, groups=self.in_channels)
        return self.out_conv(F.hardtanh(residual, -SRM_CLIP, SRM_CLIP))


class SpatialAttention(nn.Module):
    """sigmoid(conv7x7([mean over channels, max over channels])): a (B, 1, H, W) map."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class ResidualGuidedAttention(nn.Module):
    """The attention map from the SRM residual (DeepfakeBench's ``SRMPixelAttention``).

    The reference filters its input, itself the image's SRM residual, with the
    SRM kernels once more (``self.srm``), then conv 3x3/2 -> 32, BN, ReLU,
    conv 3x3 -> 64, BN, ReLU (the strides and paddings of Xception's stem, so
    the map matches the RGB stream's 64-channel features) and
    :class:`SpatialAttention`. Every convolution Kaiming-normal (``a=1``).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.srm = SRMFilter(3)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 0, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.pa = SpatialAttention()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=1)

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return self.pa(self.conv(self.srm(residual)))


class DualCrossModalAttention(nn.Module):
    """Each stream attends to the other (DeepfakeBench's ``DualCrossModalAttention``).

    Keys ``k_x = share(key1(x))`` and ``k_y = share(key2(y))`` (1x1 convs to
    C/8), ``energy = k_x^T k_y`` (B, N, N) over the N = size^2 positions;
    ``att_x = softmax(linear1(energy))``, ``att_y = softmax(linear2(energy^T))``
    (row-wise; the N x N linear layers fix the map size); ``x' = x + gamma1 *
    value2(y) att_x^T`` and ``y' = y + gamma2 * value1(x) att_y^T``. The gammas
    start at 0 (the module starts as the identity); convs and linears are
    Xavier-normal with gain 0.02.
    """

    def __init__(self, channels: int, size: int, ratio: int = 8) -> None:
        super().__init__()
        self.size = size
        hidden = channels // ratio
        self.key_conv1 = nn.Conv2d(channels, hidden, 1)
        self.key_conv2 = nn.Conv2d(channels, hidden, 1)
        self.key_conv_share = nn.Conv2d(hidden, hidden, 1)
        self.linear1 = nn.Linear(size * size, size * size)
        self.linear2 = nn.Linear(size * size, size * size)
        self.value_conv1 = nn.Conv2d(channels, channels, 1)
        self.gamma1 = nn.Parameter(torch.zeros(1))
        self.value_conv2 = nn.Conv2d(channels, channels, 1)
        self.gamma2 = nn.Parameter(torch.zeros(1))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(module.weight, gain=0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = x.shape[-2:]
        if (height, width) != (self.size, self.size):
            raise UserError(
                f"SRM two-stream's cross-modality attention was built for {self.size} x {self.size} "
                f"feature maps (its linear layers fix the size) but got {height} x {width}: feed "
                f"images of the size in detector.preprocessing.size (resize: square)"
            )
        key_x = self.key_conv_share(self.key_conv1(x)).flatten(2)  # (B, C/8, N)
        key_y = self.key_conv_share(self.key_conv2(y)).flatten(2)
        energy = key_x.transpose(1, 2) @ key_y  # (B, N, N)
        att_x = torch.softmax(self.linear1(energy), dim=-1)
        att_y = torch.softmax(self.linear2(energy.transpose(1, 2)), dim=-1)
        from_y = (self.value_conv2(y).flatten(2) @ att_x.transpose(1, 2)).view_as(x)
        from_x = (self.value_conv1(x).flatten(2) @ att_y.transpose(1, 2)).view_as(y)
        return x + self.gamma1 * from_y, y + self.gamma2 * from_x


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(mlp(avgpool) + mlp(maxpool)), 1x1 convs, no bias."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        self.sharedMLP = nn.Sequential(  # the reference's key name
            nn.Conv2d(channels, channels // ratio, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels // ratio, channels, 1, bias=False),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight, gain=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.sharedMLP(F.adaptive_avg_pool2d(x, 1))
        peak = self.sharedMLP(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + peak)


class FeatureFusion(nn.Module):
    """concat -> 1x1 conv 4096 -> 2048 (no bias), BN, ReLU -> times channel attention (ratio 16).

    The fused map is ``fused * ca(fused)`` (DeepfakeBench's version, "changed
    by yong", not ``fused * (1 + ca)``). The reference's ``init_weight`` loops
    over the module's children, none of which is a convolution, so the 1x1
    convolution keeps PyTorch's default initialisation; so does this one.
    """

    def __init__(self, in_channels: int = 2 * XCEPTION_FEATURES) -> None:
        super().__init__()
        out = in_channels // 2
        self.convblk = nn.Sequential(
            nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()
        )
        self.ca = ChannelAttention(out, ratio=16)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fused = self.convblk(torch.cat([x, y], dim=1))
        return fused * self.ca(fused)


def run_blocks(backbone: nn.Module, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    for index in range(first, last + 1):
        x = getattr(backbone, f"block{index}")(x)
    return x


def exit_flow(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv3, bn3, ReLU, conv4, bn4 (DeepfakeBench's ``fea_part5``: no ReLU after bn4)."""
    x = backbone.act3(backbone.bn3(backbone.conv3(x)))
    return backbone.bn4(backbone.conv4(x))


class SRMTwoStream(Detector):
    """Two Xceptions (RGB, SRM residual) with SRM-guided attention and dual cross-modality attention.

    Module names are DeepfakeBench's (``backbone_rgb``, ``backbone_srm``,
    ``srm_conv0``-``srm_conv2``, ``srm_sa``, ``srm_sa_post``, ``dual_cma0``,
    ``dual_cma1``, ``fusion``), so :meth:`load_weights` reads its SRM
    checkpoints strictly: the RGB backbone's 2-class ``last_linear`` becomes
    ``head`` (``z_fake - z_real``); the SRM backbone's ``last_linear``, both
    backbones' ``adjust_channel`` and the ``blur`` buffer, which the
    reference builds and never calls, are dropped when their shapes are the
    reference's. The SRM kernels are buffers stored in the state dict (the
    reference's non-trainable ``kernel`` parameters).

    Forward (DeepfakeBench ``SRMDetector.features``), for the normalised image
    ``x`` and ``s = SRM(x)``::

        x1 = relu(bn1(conv1(x)));   y1 = relu(srm_stem1(s) + srm_conv1(x1))
        x2 = relu(bn2(conv2(x1)));  y2 = relu(srm_stem2(y1) + srm_conv2(x2))
        x2 = srm_sa_post(x2 * att(s) + x2)           # BN + ReLU
        blocks 1-3 on both; dual_cma0; blocks 4-7; dual_cma1; blocks 8-12; exit flow
        logit = head(avgpool(relu(fusion(x, y))))

    Reference defaults (``srm.yaml``): 256 x 256 face crops (``INTER_CUBIC``),
    mean = std = 0.5, no augmentation; both backbones from ImageNet
    (``xception-b5690688.pth``, loaded non-strictly); AM-softmax loss with
    margin 0.45 and scale 30 ("specified by the author"), applied by
    DeepfakeBench to the raw 2-class logits (not cosines); Adam lr 2e-4, betas
    (0.9, 0.999), eps 1e-8, weight decay 5e-4, no schedule, batch 32, 10
    epochs. The reference also builds Gaussian-noise and blur modules that its
    forward never uses.

    Where this differs: one fake logit ``d = z_fake - z_real`` and the
    AM-softmax written on it, ``BCE(s * (d - m * (2y - 1)), y)``, which equals
    ``CE(s * (z - m * onehot(y)), y)`` for any 2-class logits with that
    difference (tested). The cross-modality attention's linear layers tie the
    model to one input size: ``preprocessing.size`` (256 = 16 x 16 maps, the
    reference) sets it, and other sizes fail with a clear error. ImageNet
    weights load only from a local ``pretrained_file``, strictly. The input is
    DeepfakeBench's: ``cv2.resize`` ``INTER_CUBIC`` on the uint8 crop, and a
    DeepfakeBench file keeps the detector on it (a preprocessing the user set
    still wins, with a warning); checked against DeepfakeBench's own
    ``SRMDetector`` and test input (``tests/official/deepfakebench_srm.json``).

    Args:
        pretrained_file: local ImageNet Xception state dict for both streams;
            ``None`` = random init.
        am_margin, am_scale: the AM-softmax margin and scale.
        preprocessing: over :data:`DEFAULT_PREPROCESSING` (DeepfakeBench's face input).
        optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        am_margin: float = 0.45,
        am_scale: float = 30.0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.am_margin = am_margin
        self.am_scale = am_scale
        grid = attention_grid(self.preprocessing.size)
        self.backbone_rgb = xception_backbone(3, pretrained_file)
        self.backbone_srm = xception_backbone(3, pretrained_file)
        self.srm_conv0 = SRMFilter(3)
        self.srm_conv1 = SeparableSRM(32, 32)
        self.srm_conv2 = SeparableSRM(64, 64)
        self.srm_sa = ResidualGuidedAttention(3)
        self.srm_sa_post = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.dual_cma0 = DualCrossModalAttention(CMA_CHANNELS, grid)
        self.dual_cma1 = DualCrossModalAttention(CMA_CHANNELS, grid)
        self.fusion = FeatureFusion()
        self.head = nn.Linear(XCEPTION_FEATURES, 1)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused (B, 2048, h, w) map and the (B, 1, H', W') residual-guided attention."""
        rgb, srm = self.backbone_rgb, self.backbone_srm
        residual = self.srm_conv0(image)
        x = rgb.act1(rgb.bn1(rgb.conv1(image)))
        y = F.relu(srm.act1(srm.bn1(srm.conv1(residual))) + self.srm_conv1(x))
        x = rgb.act2(rgb.bn2(rgb.conv2(x)))
        y = F.relu(srm.act2(srm.bn2(srm.conv2(y))) + self.srm_conv2(x))
        attention = self.srm_sa(residual)
        x = self.srm_sa_post(x * attention + x)
        x, y = run_blocks(rgb, x, 1, 3), run_blocks(srm, y, 1, 3)
        x, y = self.dual_cma0(x, y)
        x, y = run_blocks(rgb, x, 4, 7), run_blocks(srm, y, 4, 7)
        x, y = self.dual_cma1(x, y)
        x, y = run_blocks(rgb, x, 8, 12), run_blocks(srm, y, 8, 12)
        return self.fusion(exit_flow(rgb, x), exit_flow(srm, y)), attention

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fused, _ = self.features(batch["image"])
        pooled = F.adaptive_avg_pool2d(F.relu(fused), 1).flatten(1)
        return {"logits": self.head(pooled).squeeze(1)}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """AM-softmax (cosine margin, no focal term) on the fake logit; see the class docstring."""
        logits = self(batch)["logits"].float()
        return {"loss": am_softmax_loss(logits, batch["label"], self.am_margin, self.am_scale)}

    def load_weights(self, path: str | Path) -> None:
        """A DeepfakeBench SRM checkpoint or this detector's state dict, strictly."""
        state = read_state_dict(path)
        deepfakebench = is_deepfakebench_file(state, "backbone_rgb.")
        if deepfakebench:
            state, head = split_deepfakebench_xception(state, "backbone_rgb.")
            state, _unused_head = split_deepfakebench_xception(state, "backbone_srm.")
            state = drop_known_unused(state, UNUSED_BLUR)
            state["head.weight"], state["head.bias"] = fake_logit_head(
                head["weight"], head["bias"], f"weights file {path}"
            )
            log.info("SRM: read %s as a DeepfakeBench checkpoint (2-class head converted)", path)
        load_state_dict_strict(self, state, f"weights file {path}")
        if deepfakebench:  # DeepfakeBench's test input (the defaults; a user's setting wins)
            self.use_protocol(
                "DeepfakeBench", DEEPFAKEBENCH_FACE_PREPROCESSING, DEFAULT_PREPROCESSING
            )


def am_softmax_loss(
    logits: torch.Tensor, labels: torch.Tensor, margin: float, scale: float
) -> torch.Tensor:
    """DeepfakeBench's ``AMSoftmaxLoss`` (``cos``, gamma 0, t 1) for the fake logit ``d``.

    ``CE(scale * (z - margin * onehot(y)), y)`` depends on 2-class logits
    ``z`` only through ``d = z1 - z0``: it is ``softplus(scale * (margin -
    (2y - 1) d))``, i.e. binary cross-entropy on ``scale * (d - margin * (2y - 1))``.
    """
    labels = labels.float()
    shifted = scale * (logits - margin * (2.0 * labels - 1.0))
    return F.binary_cross_entropy_with_logits(shifted, labels)


def drop_known_unused(
    state: dict[str, torch.Tensor], shapes: dict[str, Sequence[int]]
) -> dict[str, torch.Tensor]:
    """``state`` without the keys of ``shapes`` whose tensors have exactly those shapes."""
    return {
        k: v
        for k, v in state.items()
        if not (k in shapes and torch.is_tensor(v) and tuple(v.shape) == tuple(shapes[k]))
    }
