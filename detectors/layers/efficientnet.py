"""EfficientNet-B4 as efficientnet_pytorch builds it (static "same" padding), on timm's
``tf_efficientnet_b4``; and the key conversion from efficientnet_pytorch files.

Shared by the EfficientNet-B4 detector and SBI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from deepsift.core.errors import UserError

#: EfficientNet-B4's pooled feature width (``round_filters(1280)`` at width 1.4)
B4_FEATURES = 1792


#: blocks per stage of EfficientNet-B4: ``ceil(1.8 * [1, 2, 2, 3, 3, 4, 1])``
B4_STAGE_DEPTHS = (2, 4, 4, 6, 6, 8, 2)


#: the first block's stride in each stage (EfficientNet-B0..B7 share it)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)


#: efficientnet_pytorch builds B4 for 380 px (``efficientnet_params('efficientnet-b4')``)
B4_IMAGE_SIZE = 380


#: TensorFlow's batch-norm momentum 0.99 as PyTorch's (efficientnet_pytorch ``1 - 0.99``)
BN_MOMENTUM = 0.01


PADDINGS = ("static", "static_v0.6", "dynamic")


STEM_PADDINGS = ("same", "valid")


#: efficientnet_pytorch top-level names -> timm's
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


#: efficientnet_pytorch MBConvBlock names -> timm's InvertedResidual (expansion != 1)
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


#: ... and timm's DepthwiseSeparableConv (the first stage, expansion 1)
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def is_efficientnet_pytorch_layout(state: Mapping[str, Any]) -> bool:
    """True when ``state`` has efficientnet_pytorch's key names (``_conv_stem``, ``_blocks``)."""
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state)


def convert_efficientnet_pytorch_keys(
    state: Mapping[str, Any], stage_depths: Sequence[int] = B4_STAGE_DEPTHS
) -> dict[str, Any]:
    """An efficientnet_pytorch state dict (lukemelas/EfficientNet-PyTorch) in timm's key layout.

    ``_conv_stem``/``_bn0`` -> ``conv_stem``/``bn1``; ``_blocks.N.*`` -> ``blocks.S.I.*``
    (``N`` counted over the stages' ``stage_depths``, B4's by default; the first
    stage's blocks have no expansion and become timm's ``DepthwiseSeparableConv``);
    ``_conv_head``/``_bn1`` -> ``conv_head``/``bn2``; ``_fc`` -> ``classifier``.
    Keys without efficientnet_pytorch names (another module's, or a prefixed
    key) pass through unchanged; a block index or name outside the layout
    raises :class:`~deepsift.core.errors.UserError`.
    """
    where = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    out: dict[str, Any] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        match = _BLOCK_KEY.match(key)
        if match:
            n, name, tail = int(match.group(1)), match.group(2), match.group(3)
            if n >= len(where):
                raise UserError(
                    f"efficientnet_pytorch key {key} names block {n}; "
                    f"this EfficientNet has {len(where)} blocks"
                )
            stage, index = where[n]
            names = _SEPARABLE if stage == 0 else _INVERTED
            if name not in names:
                raise UserError(f"efficientnet_pytorch key {key}: unknown block part {name}")
            out[f"blocks.{stage}.{index}.{names[name]}.{tail}"] = value
        elif head in _TOP and rest:
            out[f"{_TOP[head]}.{rest}"] = value
        else:
            out[key] = value
    return out


class PaddedConv2d(nn.Conv2d):
    """A convolution after a fixed zero padding ``(left, right, top, bottom)``.

    efficientnet_pytorch's ``Conv2dStaticSamePadding``: TensorFlow's "SAME"
    padding computed once for a planned input size, then applied to any input.
    """

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=0,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        self.weight = conv.weight
        if conv.bias is not None:
            self.bias = conv.bias
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pads), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pads={self.pads}"


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow "SAME" padding of a square ``size`` input: the extra pixel goes right/bottom."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2, total // 2, total - total // 2)


def _fix_padding(model: nn.Module, padding: str, stem_padding: str) -> None:
    """Replace timm's dynamic "SAME" convolutions by efficientnet_pytorch's static ones."""
    strided = [("stem", model, "conv_stem")] + [
        (f"stage{s}", model.blocks[s][0], "conv_dw")
        for s, stride in enumerate(STAGE_STRIDES)
        if stride == 2
    ]
    size = B4_IMAGE_SIZE
    planned = {"stem": size}
    size = math.ceil(size / 2)
    for s, stride in enumerate(STAGE_STRIDES):
        planned[f"stage{s}"] = size
        size = math.ceil(size / stride)
    for name, parent, attr in strided:
        conv = getattr(parent, attr)
        if name == "stem" and stem_padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "dynamic":
            continue
        else:
            plan = B4_IMAGE_SIZE if padding == "static_v0.6" else planned[name]
            pads = same_pads(plan, conv.kernel_size[0], conv.stride[0])
        setattr(parent, attr, PaddedConv2d(conv, pads))


def efficientnet_b4_backbone(
    pretrained_file: str | None = None,
    *,
    padding: str = "static",
    stem_padding: str = "same",
    drop_path_rate: float = 0.2,
) -> nn.Module:
    """EfficientNet-B4 as efficientnet_pytorch builds it, on timm's ``tf_efficientnet_b4``.

    Returns the timm model with ``num_classes=0``: ``model(x)`` gives the
    (B, 1792) averaged features after the head's swish, and
    ``model.forward_features(x)`` the (B, 1792, h, w) map. BatchNorm eps 1e-3
    and momentum 0.01 (TensorFlow's 0.99), swish, squeeze-excitation on the
    block's input width / 4, stochastic depth ``drop_path_rate * i / 32`` on
    block ``i`` (efficientnet_pytorch's ``drop_connect_rate`` 0.2).

    Args:
        pretrained_file: local ImageNet weights, in efficientnet_pytorch's layout
            (``efficientnet-b4-6ed6700e.pth``; ``adv-efficientnet-b4-44fb3a87.pth``
            for AdvProp) or timm's (``tf_efficientnet_b4``); the classifier is
            dropped, every other tensor must be there. Never downloads.
        padding: the strided convolutions' padding. ``"static"``: TF "SAME"
            planned for 380 px inputs, stage by stage (efficientnet_pytorch
            >= 0.7, whose ``from_name``/``from_pretrained`` plan for B4's 380
            px whatever the input size); ``"static_v0.6"``: every layer planned
            for 380 px (efficientnet_pytorch 0.6.x); ``"dynamic"``: TF "SAME" on
            the actual input (timm). All three agree on 380 px inputs except
            ``"static_v0.6"`` in the third stage's 5x5 stride-2 convolution.
        stem_padding: ``"valid"`` for the unpadded ``nn.Conv2d(3, 48, 3, 2)``
            stem DeepfakeBench substitutes for efficientnet_pytorch's.
        drop_path_rate: stochastic depth rate of the last block.
    """
    import timm

    if padding not in PADDINGS:
        raise UserError(f"detector.padding must be one of {', '.join(PADDINGS)}, not {padding!r}")
    if stem_padding not in STEM_PADDINGS:
        raise UserError(
            f"detector.stem_padding must be one of {', '.join(STEM_PADDINGS)}, not {stem_padding!r}"
        )
    model = timm.create_model(
        "tf_efficientnet_b4", pretrained=False, num_classes=0, drop_path_rate=drop_path_rate
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = BN_MOMENTUM
    _fix_padding(model, padding, stem_padding)
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"detector.pretrained_file {path} does not exist; pass the ImageNet EfficientNet-B4 "
                f"state dict (efficientnet-b4-6ed6700e.pth or timm's tf_efficientnet_b4) or set "
                f"detector.pretrained_file=null"
            )
        state = read_state_dict(path)
        if is_efficientnet_pytorch_layout(state):
            state = convert_efficientnet_pytorch_keys(state)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_state_dict_strict(model, state, f"ImageNet EfficientNet-B4 file {path}")
    return model
