"""The Cadene/FaceForensics++ Xception (timm ``legacy_xception``) as a backbone, and the
readers of the community files built on it (FF++, DeepfakeBench, icpr2020dfdc layouts).

Shared by Xception, CORE, F3-Net, RECCE, SPSL and the SRM two-stream detector.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.layers.heads import fake_logit_head

log = logging.getLogger(__name__)

#: Xception's pooled feature width
XCEPTION_FEATURES = 2048


#: the ImageNet classifier names of the Cadene (``last_linear``) and timm (``fc``) files
IMAGENET_HEADS = ("fc.", "last_linear.")


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
        from detectors.layers.pickled_module import read_pickled_module

        try:
            class_name, state = read_pickled_module(path)
        except UserError:
            raise plain_error from None
        log.info("%s: read the tensors of a pickled %s (no code run)", path, class_name)
        return state


#: DeepfakeBench's Xception always builds ``adjust_channel`` (1x1 conv 2048 -> 512 and
#: BatchNorm), which only its ``adjust_channel`` mode calls; its checkpoints carry it
ADJUST_CHANNEL_SHAPES: dict[str, tuple[int, ...]] = {
    "adjust_channel.0.weight": (512, XCEPTION_FEATURES, 1, 1),
    "adjust_channel.0.bias": (512,),
    "adjust_channel.1.weight": (512,),
    "adjust_channel.1.bias": (512,),
    "adjust_channel.1.running_mean": (512,),
    "adjust_channel.1.running_var": (512,),
    "adjust_channel.1.num_batches_tracked": (),
}


#: DeepfakeBench's 2-class head: ``last_linear`` or, with dropout, ``last_linear.1``
LAST_LINEAR = ("last_linear.", "last_linear.1.")


def split_deepfakebench_xception(
    state: Mapping[str, torch.Tensor], prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Take a DeepfakeBench Xception's ``adjust_channel`` and ``last_linear`` out of ``state``.

    DeepfakeBench's Xception has timm ``legacy_xception``'s key names (both
    descend from the Cadene/FaceForensics++ Xception) plus ``adjust_channel``,
    dropped here when its tensors have the shapes that Xception builds (any other
    shape stays and is reported by the strict load), and its 2-class
    ``last_linear`` (``last_linear.1`` with dropout), returned apart as
    ``{"weight", "bias"}`` (empty when absent).
    """
    rest = dict(state)
    for key, shape in ADJUST_CHANNEL_SHAPES.items():
        value = rest.get(prefix + key)
        if torch.is_tensor(value) and tuple(value.shape) == shape:
            del rest[prefix + key]
    head: dict[str, torch.Tensor] = {}
    for name in LAST_LINEAR:
        if f"{prefix}{name}weight" in rest and f"{prefix}{name}bias" in rest:
            head = {p: rest.pop(f"{prefix}{name}{p}") for p in ("weight", "bias")}
            break
    return rest, head


def is_deepfakebench_file(state: Mapping[str, Any], prefix: str) -> bool:
    """Whether ``state`` has DeepfakeBench's classifier under ``prefix`` (``backbone.``)."""
    return any(f"{prefix}{name}weight" in state for name in LAST_LINEAR)
