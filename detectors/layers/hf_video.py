"""What the Hugging Face video transformers (TimeSformer, VideoMAE, X-CLIP) share as
DeepfakeBench fine-tunes them: the start checks, the local backbone file, the face-clip
transform and the 2-class head of DeepfakeBench's ``*_best.pth`` as one fake logit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from deepsift.core.errors import UserError
from detectors.layers.clips import cv2_normalised_clip

log = logging.getLogger(__name__)


def check_start(
    backbone: Mapping[str, Any] | None,
    pretrained: bool,
    backbone_file: str | None,
    start: str,
    hint: str,
) -> None:
    """One UserError when ``pretrained`` cannot be honoured: a changed architecture, or no file.

    Called before the backbone is built (the full-size ones hold ~100M parameters);
    ``start`` names the checkpoint (``"the Kinetics-400 TimeSformer"``), ``hint`` says what
    to pass.
    """
    if backbone and pretrained:
        raise UserError(
            f"detector.backbone changes the architecture, so {start} would not fit; set "
            "detector.pretrained=false or drop detector.backbone"
        )
    if pretrained and not backbone_file:
        raise UserError(f"detector.pretrained=true needs {start}: {hint}")


def start_backbone(
    load: Callable[[str], None], pretrained: bool, backbone_file: str | None
) -> None:
    """``load(backbone_file)`` when ``pretrained``; else a warning if a file was given anyway."""
    if pretrained:
        load(str(backbone_file))
    elif backbone_file:
        log.warning(
            "detector.backbone_file=%s is ignored: detector.pretrained=false", backbone_file
        )


def face_clip(
    sample: dict[str, Any],
    clip_len: int,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
    name: str,
) -> torch.Tensor:
    """``sample["frames"]`` (``clip_len`` PIL face crops) -> a (T, 3, size, size) clip.

    Each frame is resized by ``cv2.resize`` (``INTER_CUBIC``) and normalised, as
    DeepfakeBench's video dataset reads them (:func:`~detectors.layers.clips.cv2_normalised_clip`).
    """
    frames = sample.get("frames")
    if frames is not None and len(frames) != clip_len:
        raise UserError(
            f"{name}: got {len(frames)} frames, the config says detector.clip_len={clip_len}"
        )
    return cv2_normalised_clip(frames, size, "bicubic", mean, std, augment, name)


def two_class_head_as_fake_logit(state: dict[str, Any], name: str, path: str | Path) -> None:
    """DeepfakeBench's ``head`` (2, F) in ``state`` -> the fake logit ``z_1 - z_0``, in place.

    ``softmax(z)[1] = sigmoid(z_1 - z_0)``, so scores are unchanged; a (1, F) head (a deepsift
    file) is left as it is, and a missing bias is left for the strict load to name.
    """
    head = state["head.weight"]
    if head.ndim == 2 and head.shape[0] == 2:
        state["head.weight"] = (head[1] - head[0])[None]
        bias = state.get("head.bias")
        if torch.is_tensor(bias) and bias.shape == (2,):
            state["head.bias"] = bias[1:] - bias[:1]
        log.info("%s: DeepfakeBench weights %s (2-class head -> fake logit)", name, path)
