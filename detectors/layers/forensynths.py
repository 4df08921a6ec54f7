"""What the ForenSynths-trained detectors of one lab share: their test input and the NPR residual.

CNNDetection's ForenSynths data options (``--no_resize False --no_crop True`` at test
time) are the protocol of NPR, FreqNet and LaDeDa's ForenSynths weights:
``Resize((256, 256))`` (Pillow bilinear), ``ToTensor``, ImageNet ``Normalize``; training
takes a random 224 px crop of the 256 x 256 image (``RandomCrop(cropSize)``).

NPR's neighbouring-pixel residual (Tan et al., CVPR 2024) is also LaDeDa's default input
(``preprocess(x, "NPR")`` in its ``networks/LaDeDa.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from detectors.preprocessing import IMAGENET_MEAN, IMAGENET_STD

#: the official test-time preprocessing (``test.py`` with ``no_resize=False``,
#: ``no_crop=True``): ``Resize((256, 256))`` (bilinear), ``ToTensor``, ImageNet ``Normalize``
FORENSYNTHS_PREPROCESSING: Mapping[str, Any] = {
    "size": 224,
    "resize": "square",
    "resize_to": 256,
    "interpolation": "bilinear",
    "crop": "none",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "hflip": 0.5,
}

#: training crops 224 px at random from the 256 x 256 image (``RandomCrop(cropSize)``)
FORENSYNTHS_TRAIN_PREPROCESSING: Mapping[str, Any] = {"crop": "center"}


def trim_to_even(x: torch.Tensor) -> torch.Tensor:
    """Drop the last row and/or column of images with an odd height and/or width."""
    height, width = x.shape[-2:]
    return x[..., : height - height % 2, : width - width % 2]


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """``x - up(down(x))`` with nearest-neighbour x0.5 then x2, as the reference computes it.

    Odd sizes are first trimmed to even (the reference would fail on them). For
    even sizes this is ``x`` minus the top-left pixel of its 2x2 block.
    """
    x = trim_to_even(x)
    down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    up = F.interpolate(down, scale_factor=2.0, mode="nearest", recompute_scale_factor=True)
    return x - up
