"""Xception on face crops: the FaceForensics++ baseline.

After A. Rössler, D. Cozzolino, L. Verdoliva, C. Riess, J. Thies and
M. Nießner, "FaceForensics++: Learning to Detect Manipulated Facial Images",
ICCV 2019 (code: github.com/ondyari/FaceForensics, ``classification/``), on
F. Chollet's Xception (CVPR 2017) in the Cadene/``pretrainedmodels`` port,
which is timm's ``legacy_xception``: the same modules under the same names
(``conv1``, ``bn1``, ``conv2``, ``bn2``, ``block1`` .. ``block12`` with
``rep``/``skip``/``skipbn``, ``conv3``, ``bn3``, ``conv4``, ``bn4``).

Reference defaults:

* FaceForensics++ (``network/models.py``, ``dataset/transform.py``,
  ``detect_from_video.py``): ``TransferModel`` = ImageNet Xception
  (``xception-b5690688.pth``, ``pointwise`` weights unsqueezed to 1x1) whose
  ``last_linear`` becomes ``Linear(2048, 2)`` (``Sequential(Dropout, Linear)``
  when a dropout is given; ``model_selection`` gives none); face crops of
  1.3x the dlib box, ``Resize((299, 299))``, ``Normalize([0.5] * 3, [0.5] * 3)``;
  softmax, class 1 = fake. The released models (``full_c23.p``, ``full_raw.p``,
  ``full_c40.p``) are whole pickled ``TransferModel`` objects (the code
  ``torch.load``-s them as the model).
* DeepfakeBench (github.com/SCLBD/DeepfakeBench, ``training/detectors/
  xception_detector.py``, ``networks/xception.py``, ``config/detector/
  xception.yaml``): the same network (plus an ``adjust_channel`` 2048 -> 512
  conv/BN that mode ``original`` builds but never runs), ImageNet init from
  ``xception-b5690688.pth`` (``fc`` dropped, loaded non-strictly),
  ``last_linear`` ``Linear(2048, 2)``, cross-entropy; 256 px inputs,
  mean = std = 0.5; Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay
  5e-4, no schedule, 10 epochs, batch 32; augmentation: flip 0.5, Gaussian blur
  (kernel 3-7) 0.5, one of brightness/contrast, FancyPCA, hue/saturation 0.5,
  JPEG quality 40-100 0.5. Its released ``xception_best.pth`` is a state dict
  of ``XceptionDetector``: ``backbone.conv1.weight`` .. ``backbone.bn4.*``,
  ``backbone.adjust_channel.*`` and ``backbone.last_linear.weight`` (2, 2048),
  ``module.``-prefixed when saved from DDP.

Where this differs: one fake logit instead of two softmax classes
(``logit_fake = z1 - z0`` gives the same probability; 2-class heads load as
``w[1] - w[0]``, ``b[1] - b[0]``), trained with binary cross-entropy, which on
``z1 - z0`` is the two-class cross-entropy; 299 px inputs (the paper and
Xception's native size; ``preprocessing.size=256`` for DeepfakeBench's
protocol); ``adjust_channel`` is not built (DeepfakeBench files carry it, and it
is dropped on loading); the augmentation has DeepfakeBench's flip, blur and
JPEG but not its colour jitter, and blurs/compresses before resizing; the
ImageNet start needs a local file (``pretrained_file``): nothing is downloaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, BackboneClassifier
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: Xception's pooled feature width
XCEPTION_FEATURES = 2048
#: the ImageNet classifier names of the Cadene (``last_linear``) and timm (``fc``) files
IMAGENET_HEADS = ("fc.", "last_linear.")
#: FaceForensics++'s test transform: Resize((299, 299)) (bilinear), ToTensor, Normalize(0.5, 0.5);
#: the augmentation fields (training only) are DeepfakeBench's
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 299,
    "resize": "square",
    "interpolation": "bilinear",
    "crop": "none",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "hflip": 0.5,
    "blur_prob": 0.5,
    "blur_sigma": (0.8, 1.4),
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}
#: where community files keep the Xception: DeepfakeBench, FaceForensics++
#: (``TransferModel.model``), icpr2020dfdc (``Xception.xception``), a bare Xception
LAYOUT_PREFIXES = {
    "backbone.": "DeepfakeBench XceptionDetector",
    "model.": "FaceForensics++ TransferModel",
    "xception.": "icpr2020dfdc Xception",
    "": "Xception",
}
_HEAD_KEY = re.compile(r"^(?:last_linear|fc)(?:\.1)?\.(weight|bias)$")


# -- the backbone (public: other detectors build on it) ---------------------------------
def imagenet_xception_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ImageNet Xception state dict (Cadene or timm) in timm's backbone layout.

    Drops the 1000-class classifier (``fc.*`` or ``last_linear.*``) and turns
    the 2-D ``pointwise`` weights of Cadene's ``xception-b5690688.pth`` (the
    file FaceForensics++ and DeepfakeBench start from) into 1x1 kernels, as
    their loaders do (``weights.unsqueeze(-1).unsqueeze(-1)``).
    """
    out = {}
    for key, value in state.items():
        if key.startswith(IMAGENET_HEADS):
            continue
        out[key] = _pointwise_4d(key, value)
    return out


def _pointwise_4d(key: str, value: Any) -> Any:
    if "pointwise" in key and torch.is_tensor(value) and value.ndim == 2:
        return value[:, :, None, None]
    return value


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB ``conv1`` weights for ``in_chans`` inputs: tiled over the channels and rescaled.

    For ``in_chans`` a multiple of 3 this is the F3-Net reimplementation's
    initialisation of its 12-channel stem (``conv1_data / 4`` on each of the
    four 3-channel groups); the response to an input whose channel groups are
    equal is that of the RGB stem.
    """
    if in_chans == weight.shape[1]:
        return weight
    repeats = -(-in_chans // weight.shape[1])
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_chans]
    return tiled * (weight.shape[1] / in_chans)


def xception_backbone(in_chans: int = 3, pretrained_file: str | None = None) -> nn.Module:
    """timm's ``legacy_xception`` (the Cadene/FF++ Xception) with no classifier.

    Returns the timm model built with ``num_classes=0``: ``model(x)`` gives the
    (B, 2048) globally averaged features after the last ReLU, and
    ``model.forward_features(x)`` the (B, 2048, H/32, W/32) map. Never
    downloads: ImageNet weights come only from ``pretrained_file``, a local
    state dict in Cadene's (``xception-b5690688.pth``) or timm's
    (``xception-43020ad28.pth``) layout; every backbone tensor must be in it.
    With ``in_chans != 3`` the RGB stem is tiled (see :func:`adapt_first_conv`).
    """
    import timm

    model = timm.create_model("legacy_xception", pretrained=False, num_classes=0, in_chans=in_chans)
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"detector.pretrained_file {path} does not exist; pass the ImageNet Xception "
                f"state dict (xception-b5690688.pth or timm's xception-43020ad28.pth) or set "
                f"detector.pretrained_file=null"
            )
        state = imagenet_xception_state(read_state_dict(path))
        if torch.is_tensor(state.get("conv1.weight")):
            state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], in_chans)
        load_state_dict_strict(model, state, f"ImageNet Xception file {path}")
        log.info("Xception: ImageNet weights from %s", path)
    return model


# -- community checkpoints --------------------------------------------------------------
def fake_logit_head(
    weight: torch.Tensor, bias: torch.Tensor | None, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, F) fake-logit head from a 1- or 2-class one (class 1 = fake).

    ``softmax(z)[1] = sigmoid(z1 - z0)``, so ``(w[1] - w[0], b[1] - b[0])`` gives
    the same probability.
    """
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
    if weight.ndim != 2 or weight.shape[0] not in (1, 2) or bias.shape != weight.shape[:1]:
        raise UserError(
            f"{source} has a classifier of shape {tuple(weight.shape)}; expected 1 (fake logit) "
            f"or 2 (real, fake) outputs. An ImageNet file goes to detector.pretrained_file"
        )
    if weight.shape[0] == 2:
        return (weight[1] - weight[0])[None], (bias[1] - bias[0])[None]
    return weight, bias


def fill_num_batches_tracked(state: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Add zero ``num_batches_tracked`` counters when the file has none (torch < 0.4.1 files)."""
    counters = [k for k in expected if k.endswith("num_batches_tracked")]
    if counters and not any(k.endswith("num_batches_tracked") for k in state):
        state = {**state, **{k: torch.zeros((), dtype=torch.long) for k in counters}}
    return state


def xception_detector_state(
    state: Mapping[str, Any], source: str
) -> tuple[dict[str, torch.Tensor], str]:
    """A community Xception checkpoint in :class:`XceptionDetector`'s layout, and its origin.

    Accepts deepsift's own layout (``backbone.*``, ``head.*``) unchanged, and
    DeepfakeBench's, FaceForensics++'s, icpr2020dfdc's and bare Xception state
    dicts (see :data:`LAYOUT_PREFIXES`), ``module.``-prefixed or not: the
    backbone keys move under ``backbone.``, 2-D ``pointwise`` weights become
    1x1 kernels, the ``last_linear``/``fc`` head (``.1.`` after a dropout)
    becomes the fake logit (:func:`fake_logit_head`), DeepfakeBench's unused
    ``adjust_channel`` is dropped. Other keys are kept, so that strict loading
    names them.
    """
    state = strip_prefixes(state, ("module.",))
    if "head.weight" in state:
        return dict(state), "deepsift"
    prefix = next((p for p in LAYOUT_PREFIXES if f"{p}conv1.weight" in state), None)
    if prefix is None:
        return dict(state), "unknown"
    out: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        match = _HEAD_KEY.match(name) if name is not None else None
        if match:
            head[match.group(1)] = value
        elif name is not None and prefix == "backbone." and name.startswith("adjust_channel."):
            continue
        elif name is not None:
            out[f"backbone.{name}"] = _pointwise_4d(name, value)
        else:
            out[key] = value
    if "weight" in head:
        out["head.weight"], out["head.bias"] = fake_logit_head(
            head["weight"], head.get("bias"), source
        )
    return out, LAYOUT_PREFIXES[prefix]


def read_xception_file(path: str | Path) -> dict[str, Any]:
    """The tensors of a state-dict file, or of a whole pickled module (FF++ ``.p``), safely."""
    try:
        return read_state_dict(path)
    except UserError as plain_error:
        from detectors.pickled_module import read_pickled_module

        try:
            class_name, state = read_pickled_module(path)
        except UserError:
            raise plain_error from None
        log.info("%s: read the tensors of a pickled %s (no code run)", path, class_name)
        return state


class XceptionDetector(BackboneClassifier):
    """ImageNet Xception, global average pooling, one fake logit (``head``: 2048 -> 1).

    State dict: ``backbone.*`` (timm ``legacy_xception``, the Cadene names)
    and ``head.weight``/``head.bias``; 20,809,001 parameters, which is the
    FaceForensics++ ``TransferModel`` (20,811,050) less one 2048 + 1 row of
    its 2-class head. :meth:`load_weights` reads DeepfakeBench's
    ``xception_best.pth``, the FaceForensics++ pickled models (``full_c23.p``
    ..., read without running their code: :mod:`detectors.pickled_module`),
    icpr2020dfdc's ``Xception_*`` weights and deepsift checkpoints, strictly.

    Args:
        pretrained_file: local ImageNet Xception weights (``xception-b5690688.pth``,
            the file both references start from); ``None``: random init.
        drop_rate: dropout before the head (FF++ ``TransferModel(dropout=...)``; 0 in
            both references' defaults).
        preprocessing, optimizer, scheduler: see :class:`Detector`; default optimiser
            DeepfakeBench's Adam (lr 2e-4, weight decay 5e-4).
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        drop_rate: float = 0.0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        preprocessing = merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing)
        backbone = xception_backbone(3, pretrained_file)
        super().__init__(
            backbone, XCEPTION_FEATURES, drop_rate, preprocessing, optimizer, scheduler
        )

    def load_weights(self, path: str | Path) -> None:
        """Load a community or deepsift Xception file strictly (see the class docstring)."""
        source = f"weights file {path}"
        state, origin = xception_detector_state(read_xception_file(path), source)
        state = fill_num_batches_tracked(state, self.state_dict())
        load_state_dict_strict(self, state, source)
        log.info("Xception: loaded %s (%s layout)", path, origin)
        if origin.startswith("DeepfakeBench") and self.preprocessing.size != 256:
            log.warning(
                "DeepfakeBench trained and tests this file at 256 px; "
                "set detector.preprocessing.size=256 for its protocol"
            )
