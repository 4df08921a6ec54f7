"""Building blocks of PySlowFast's single-pathway 3D ResNet (github.com/facebookresearch/SlowFast).

``ResNetBasicStem``, ``BottleneckTransform`` and ``ResBlock`` of ``stem_helper.py`` /
``resnet_helper.py``, with their ``state_dict`` keys (``conv``/``bn``, ``a``/``a_bn`` ...,
``branch1``/``branch1_bn``/``branch2``), held in :class:`Pathway` modules so keys read
``s2.pathway0_res0.branch2.a.weight`` as in SlowFast. Used by I3D (DeepfakeBench) and
FTCN (Zheng et al., ICCV 2021).

``temporal_only=True`` builds FTCN's "fully temporal convolution" variant, as its
``temporal_only_conv`` rewrites a built SlowFast model (``spatial_count`` 0,
``keep_stride_count`` 0): every convolution's spatial kernel becomes 1 (padding 0), and
each spatial stride 2 becomes stride 1 with a ``MaxPool3d((1, 2, 2))`` after the
convolution's BN, the two wrapped in an ``nn.Sequential`` (keys ``bn.0.weight``,
``b_bn.0.weight``, ``branch1_bn.0.weight``).

:class:`I3DResNet` is the whole single-pathway ``ResNet`` with ``ARCH: i3d`` (I3D of
DeepfakeBench, AltFreezing's ``I3D8x8``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.errors import UserError

#: eps and momentum of every BatchNorm3d in SlowFast's helpers (``bn_mmt`` 0.1)
BN_EPS = 1e-5


def batch_norm(channels: int) -> nn.BatchNorm3d:
    """SlowFast's ``nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)``."""
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=0.1)


def _strided_norm(channels: int, stride: int, temporal_only: bool) -> nn.Module:
    """The BN after a (spatially) strided conv: FTCN moves the stride into a max-pool after it."""
    if temporal_only and stride == 2:
        return nn.Sequential(batch_norm(channels), nn.MaxPool3d((1, 2, 2)))
    return batch_norm(channels)


class BasicStem(nn.Module):
    """``ResNetBasicStem``: conv (kt x 7 x 7, stride 1 x 2 x 2), BN, ReLU, max-pool 1 x 3 x 3 / 2.

    ``temporal_only``: conv kt x 1 x 1, stride 1, BN followed by ``MaxPool3d((1, 2, 2))``.
    """

    def __init__(self, dim_out: int, temporal_kernel: int = 5, temporal_only: bool = False) -> None:
        super().__init__()
        spatial, stride = (1, 1) if temporal_only else (7, 2)
        self.conv = nn.Conv3d(
            3,
            dim_out,
            (temporal_kernel, spatial, spatial),
            stride=(1, stride, stride),
            padding=(temporal_kernel // 2, spatial // 2, spatial // 2),
            bias=False,
        )
        self.bn = _strided_norm(dim_out, 2, temporal_only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return F.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


class Bottleneck(nn.Module):
    """``BottleneckTransform`` (``a`` kt x 1 x 1, ``b`` 1 x 3 x 3 with the stride, ``c`` 1 x 1 x 1).

    ``temporal_only``: ``b`` is 1 x 1 x 1 and its stride a max-pool after ``b_bn``.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        dim_inner: int,
        temporal_kernel: int,
        stride: int,
        temporal_only: bool = False,
    ) -> None:
        super().__init__()
        self.a = nn.Conv3d(
            dim_in,
            dim_inner,
            (temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            bias=False,
        )
        self.a_bn = batch_norm(dim_inner)
        if temporal_only:
            self.b = nn.Conv3d(dim_inner, dim_inner, 1, bias=False)
        else:
            self.b = nn.Conv3d(
                dim_inner,
                dim_inner,
                (1, 3, 3),
                stride=(1, stride, stride),
                padding=(0, 1, 1),
                bias=False,
            )
        self.b_bn = _strided_norm(dim_inner, stride, temporal_only)
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = batch_norm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a_bn(self.a(x)))
        x = F.relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """``ResBlock``: ``branch2`` plus the identity or a 1 x 1 x 1 projection ``branch1``, ReLU."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        dim_inner: int,
        temporal_kernel: int,
        stride: int,
        temporal_only: bool = False,
    ) -> None:
        super().__init__()
        if dim_in != dim_out or stride != 1:
            conv_stride = 1 if temporal_only else stride
            self.branch1 = nn.Conv3d(
                dim_in, dim_out, 1, stride=(1, conv_stride, conv_stride), bias=False
            )
            self.branch1_bn = _strided_norm(dim_out, stride, temporal_only)
        self.branch2 = Bottleneck(
            dim_in, dim_out, dim_inner, temporal_kernel, stride, temporal_only
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        return F.relu(shortcut + self.branch2(x))


class Pathway(nn.Module):
    """One pathway of a SlowFast stem or stage: a holder so keys read ``s2.pathway0_res0``."""


#: blocks per stage of SlowFast's ``_MODEL_STAGE_DEPTH`` for ``RESNET.DEPTH``
STAGE_DEPTH: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

#: ``_TEMPORAL_KERNEL_BASIS["i3d"]``: stem, then per stage the kernel pattern its blocks cycle
#: through (every block uses it: ``NUM_BLOCK_TEMP_KERNEL`` [[3], [4], [6], [3]])
STEM_TEMPORAL_KERNEL = 5
STAGE_TEMPORAL_KERNELS: tuple[tuple[int, ...], ...] = ((3,), (3, 1), (3, 1), (1, 3))


class I3DResNet(nn.Module):
    """SlowFast's ``ResNet`` (one pathway) with ``ARCH: i3d``, keys as its ``state_dict``.

    ``s1.pathway0_stem``, ``s2`` ... ``s5`` with ``pathway0_res<i>`` blocks (a temporal
    max-pool 2 x 1 x 1 after ``s2``), ``head.projection`` on the average-pooled,
    dropped-out 2048-d feature. Returns the logit(s) before the head's sigmoid.
    """

    def __init__(
        self,
        blocks: Sequence[int] = STAGE_DEPTH[50],
        width_per_group: int = 64,
        num_classes: int = 1,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise UserError(f"detector.blocks must be 4 positive block counts, got {list(blocks)}")
        self.s1 = Pathway()
        self.s1.pathway0_stem = BasicStem(width_per_group)
        dim_in = width_per_group
        for stage, (n, kernels) in enumerate(zip(blocks, STAGE_TEMPORAL_KERNELS, strict=True)):
            dim_out, dim_inner = width_per_group * 4 * 2**stage, width_per_group * 2**stage
            holder = Pathway()
            for i in range(n):
                stride = 1 if stage == 0 or i > 0 else 2
                block = ResBlock(dim_in, dim_out, dim_inner, kernels[i % len(kernels)], stride)
                holder.add_module(f"pathway0_res{i}", block)
                dim_in = dim_out
            self.add_module(f"s{stage + 2}", holder)
        self.feature_dim = dim_in
        self.head = Pathway()
        self.head.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head.projection = nn.Linear(dim_in, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``init_weights`` (weight_init_helper.py): MSRA fill, final BN of each block zero, fc N(0, 0.01)."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, Bottleneck):  # ZERO_INIT_FINAL_BN: True
                nn.init.zeros_(module.c_bn.weight)

    def stages(self) -> list[nn.Module]:
        return [self.s2, self.s3, self.s4, self.s5]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> the ``s5`` map (B, 2048, T/2, H/32, W/32)."""
        x = self.s1.pathway0_stem(x)
        for index, stage in enumerate(self.stages()):
            for block in stage.children():
                x = block(x)
            if index == 0:  # pathway0_pool: _POOL1["i3d"] = [2, 1, 1]
                x = F.max_pool3d(x, (2, 1, 1), stride=(2, 1, 1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3, 4))
        return self.head.projection(self.head.dropout(pooled))
