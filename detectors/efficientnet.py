"""EfficientNet-B4 on face crops: the DFDC-era baseline.

After M. Tan and Q. Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019, as used for face-forgery detection
by N. Bonettini, E. D. Cannas, S. Mandelli, L. Bondi, P. Bestagini and
S. Tubaro, "Video Face Manipulation Detection Through Ensemble of CNNs",
ICPR 2020 (github.com/polimi-ispl/icpr2020dfdc) and benchmarked by
DeepfakeBench (github.com/SCLBD/DeepfakeBench). Both build the network with
efficientnet_pytorch (lukemelas/EfficientNet-PyTorch); this module rebuilds it
on timm's ``tf_efficientnet_b4`` (same modules: BatchNorm eps 1e-3, swish,
squeeze-excitation, TF "SAME" padding), whose padding differs from
efficientnet_pytorch's except on 380 px inputs, so the strided convolutions
get efficientnet_pytorch's static padding (:func:`efficientnet_b4_backbone`),
and maps efficientnet_pytorch's keys onto timm's
(:func:`convert_efficientnet_pytorch_keys`).

Reference defaults:

* DeepfakeBench (``training/networks/efficientnetb4.py``,
  ``detectors/efficientnetb4_detector.py``, ``config/detector/
  efficientnetb4.yaml``; efficientnet-pytorch 0.7.1 per ``install.sh``):
  ``EfficientNet.from_pretrained('efficientnet-b4')`` (ImageNet), then
  ``_conv_stem`` replaced by an unpadded ``nn.Conv2d(3, 48, 3, stride=2,
  bias=False)`` (so the stem is randomly initialised), ``_fc`` by
  ``Identity``; features = ``extract_features`` (1792 channels), average
  pooling, ``last_layer`` ``Linear(1792, 2)`` (no dropout: ``dropout: false``),
  cross-entropy; 256 px, mean = std = 0.5 (not ImageNet's); Adam lr 2e-4,
  betas (0.9, 0.999), eps 1e-8, weight decay 5e-4, no schedule, 10 epochs,
  batch 32; augmentation flip 0.5, rotation +-10 degrees 0.5, Gaussian blur
  (kernel 3-7) 0.5, one of brightness/contrast, FancyPCA, hue/saturation 0.5,
  JPEG quality 40-100 0.5. Released ``effnb4_best.pth``: a state dict with
  ``backbone.efficientnet._conv_stem.weight`` ... and ``backbone.last_layer.*``
  (``module.``-prefixed when saved from DDP).
* icpr2020dfdc (``architectures/fornet.py``, ``train_binclass.py``):
  ``EfficientNetB4``: ``EfficientNet.from_pretrained('efficientnet-b4')``
  (efficientnet-pytorch unpinned in ``environment.yml``, early 2020: 0.6.x),
  ``_fc`` deleted, ``classifier`` ``Linear(1792, 1)`` after the network's own
  dropout (0.4), BCE-with-logits; 224 px face crops, ImageNet normalisation;
  Adam lr 1e-5, batch 32, up to 30,000 iterations (``scripts/train_all.sh``);
  ``bestval.pth`` training checkpoints wrap the weights as ``{'net': ...}``. Released ``EfficientNetB4_DFDC_bestval-*.pth``
  / ``EfficientNetB4_FFPP_bestval-*.pth``: state dicts with
  ``efficientnet._conv_stem.weight`` ... and ``classifier.weight`` (1, 1792).

Where this differs: one fake logit (DeepfakeBench's 2-class head loads as
``w[1] - w[0]``, ``b[1] - b[0]``: the same probability), trained with BCE
(equal to the 2-class cross-entropy on ``z1 - z0``); the defaults are
DeepfakeBench's (its unpadded stem included, so its weights reproduce; the
stem does get the ImageNet weights when ``pretrained_file`` is given, where
DeepfakeBench leaves it random); no rotation or colour jitter augmentation,
and blur/JPEG come before resizing. For icpr2020dfdc's weights and protocol
set ``padding=static_v0.6 stem_padding=same drop_rate=0.4`` and 224 px with
ImageNet mean/std (see ``configs/detector/efficientnet_b4.yaml``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, BackboneClassifier
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

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
    raises :class:`~deepsift.errors.UserError`.
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


# -- the detector ----------------------------------------------------------------------
#: DeepfakeBench's test transform (its data pipeline's bicubic 256 px resize, mean = std
#: = 0.5) and, for training, its flip, Gaussian blur (kernel 3-7: sigma 0.8-1.4) and JPEG 40-100
DEFAULT_PREPROCESSING: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "hflip": 0.5,
    "blur_prob": 0.5,
    "blur_sigma": (0.8, 1.4),
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}
#: (prefix of the efficientnet_pytorch network, head prefix, origin) of community files
LAYOUTS = (
    ("backbone.efficientnet.", "backbone.last_layer.", "DeepfakeBench EfficientDetector"),
    ("efficientnet.", "classifier.", "icpr2020dfdc EfficientNetB4"),
    ("", "_fc.", "efficientnet_pytorch EfficientNet"),
)


def efficientnet_detector_state(
    state: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], str]:
    """A community EfficientNet-B4 checkpoint in :class:`EfficientNetB4Detector`'s layout.

    deepsift's own layout (``backbone.*``, ``head.*``) passes unchanged;
    DeepfakeBench's, icpr2020dfdc's (``{'net': ...}`` unwrapped) and bare
    efficientnet_pytorch state dicts (:data:`LAYOUTS`), ``module.``-prefixed or
    not, have their network keys converted (:func:`convert_efficientnet_pytorch_keys`)
    under ``backbone.`` and their 1- or 2-class head made the fake logit
    (:func:`detectors.xception.fake_logit_head`). Other keys are kept, so that
    strict loading names them.
    """
    from detectors.xception import fake_logit_head

    if isinstance(state.get("net"), Mapping):
        state = state["net"]
    state = strip_prefixes(state, ("module.",))
    if "head.weight" in state:
        return dict(state), "deepsift"
    layout = next((lay for lay in LAYOUTS if f"{lay[0]}_conv_stem.weight" in state), None)
    if layout is None:
        return dict(state), "unknown"
    prefix, head, origin = layout
    network = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    network = {k: v for k, v in network.items() if not k.startswith("_fc.")}
    out = {k: v for k, v in state.items() if not k.startswith((prefix, head))}
    out.update({f"backbone.{k}": v for k, v in convert_efficientnet_pytorch_keys(network).items()})
    if f"{head}weight" in state:
        out["head.weight"], out["head.bias"] = fake_logit_head(
            state[f"{head}weight"], state.get(f"{head}bias"), source
        )
    return out, origin


class EfficientNetB4Detector(BackboneClassifier):
    """EfficientNet-B4 features (1792), average pooling, dropout, one fake logit (``head``).

    State dict: ``backbone.*`` (timm ``tf_efficientnet_b4`` names) and
    ``head.weight``/``head.bias``; 17,550,409 parameters, DeepfakeBench's
    ``EfficientDetector`` (17,552,202) less one 1792 + 1 row of its 2-class
    head. :meth:`load_weights` reads DeepfakeBench's ``effnb4_best.pth``,
    icpr2020dfdc's ``EfficientNetB4_*`` weights, an efficientnet_pytorch
    state dict with a 1- or 2-class ``_fc``, and deepsift checkpoints, strictly.

    Args:
        pretrained_file: local ImageNet weights (``efficientnet-b4-6ed6700e.pth``);
            ``None``: random init.
        padding, stem_padding, drop_path_rate: see :func:`efficientnet_b4_backbone`;
            the defaults (``static``, ``valid``) are DeepfakeBench's network.
        drop_rate: dropout before the head (icpr2020dfdc: 0.4, DeepfakeBench: 0).
        preprocessing, optimizer, scheduler: see :class:`Detector`; default optimiser
            DeepfakeBench's Adam (lr 2e-4, weight decay 5e-4).
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        padding: str = "static",
        stem_padding: str = "valid",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        preprocessing = merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing)
        backbone = efficientnet_b4_backbone(
            pretrained_file,
            padding=padding,
            stem_padding=stem_padding,
            drop_path_rate=drop_path_rate,
        )
        super().__init__(backbone, B4_FEATURES, drop_rate, preprocessing, optimizer, scheduler)
        self.padding, self.stem_padding = padding, stem_padding

    def load_weights(self, path: str | Path) -> None:
        """Load a community or deepsift EfficientNet-B4 file strictly (see the class docstring)."""
        from detectors.xception import fill_num_batches_tracked

        source = f"weights file {path}"
        state, origin = efficientnet_detector_state(read_state_dict(path), source)
        state = fill_num_batches_tracked(state, self.state_dict())
        load_state_dict_strict(self, state, source)
        log.info("EfficientNet-B4: loaded %s (%s layout)", path, origin)
        expected = {
            "DeepfakeBench EfficientDetector": ("static", "valid", 256),
            "icpr2020dfdc EfficientNetB4": ("static_v0.6", "same", 224),
        }.get(origin)
        ours = (self.padding, self.stem_padding, self.preprocessing.size)
        if expected and expected != ours:
            log.warning(
                "%s was trained with padding=%s stem_padding=%s at %d px; this detector has "
                "padding=%s stem_padding=%s at %d px (see configs/detector/efficientnet_b4.yaml)",
                origin,
                *expected,
                *ours,
            )
