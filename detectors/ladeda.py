"""LaDeDa: a ResNet-50 whose every output sees one 9 x 9 patch of the NPR residual; patch logits pooled.

After B. Cavia, E. Horwitz, T. Reiss and Y. Hoshen, "Real-Time Deepfake Detection
in the Real-World", arXiv 2406.09398, 2024 (the WildRF benchmark). Official code:
github.com/barcavia/RealTime-DeepfakeDetection-in-the-RealWorld (``networks/LaDeDa.py``,
``LaDeDa9``); official weights ``WildRF_LaDeDa.pth`` and ``ForenSynth_LaDeDa.pth``
(a Google Drive folder linked from ``weights/LaDeDa/download_weights.txt``). The
network is a BagNet-style ResNet-50: no padding anywhere and 3 x 3 convolutions only
in the stem and the first block of ``layer1`` and ``layer2``, so each position of the
last feature map depends on a 9 x 9 window of the input; the linear head scores each
position and the image score is their mean.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from detectors.base import Detector
from detectors.layers.cnndetection import cnndetection_sample
from detectors.layers.forensynths import (
    FORENSYNTHS_PREPROCESSING,
    FORENSYNTHS_TRAIN_PREPROCESSING,
    npr_residual,
)
from detectors.preprocessing import (
    Preprocessing,
    merge_preprocessing,
    train_variant,
)

#: the official test-time and training preprocessing: ForenSynths' (see
#: :mod:`detectors.layers.forensynths`)
DEFAULT_PREPROCESSING: dict[str, Any] = dict(FORENSYNTHS_PREPROCESSING)
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = dict(FORENSYNTHS_TRAIN_PREPROCESSING)

#: ``LaDeDa9``: ResNet-50's blocks per stage, strides, and how many leading blocks of each
#: stage have a 3 x 3 ``conv2`` (``kernel3``); the rest are 1 x 1
BLOCKS = (3, 4, 6, 3)
STRIDES = (2, 2, 2, 1)
KERNEL3 = (1, 1, 0, 0)
#: the smallest side with one output: a 9 x 9 patch, after odd sides are trimmed to even
MIN_SIDE = 10


class PatchBottleneck(nn.Module):
    """The reference ``Bottleneck``: 1x1, ``kernel`` x ``kernel`` (stride, no padding), 1x1.

    The shortcut is cropped to the (smaller) output at the top-left, as the reference's
    ``residual[:, :, :-diff, :-diff]`` does.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, kernel: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=kernel, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        residual = residual[..., : out.shape[-2], : out.shape[-1]]
        return self.relu(out + residual)


class LaDeDa(Detector):
    """``LaDeDa9``: NPR residual, 1x1 + 3x3 unpadded stem, patch ResNet-50 stages, ``fc`` 2048 -> 1.

    Module names and shapes are those of the reference ``networks/LaDeDa.py``
    (``conv1`` 1x1 3 -> 64, ``conv2`` 3x3 64 -> 64, ``bn1``, ``layer1`` ... ``layer4``
    of bottlenecks, ``fc``), so the detector's state dict has the keys of the
    official files: 13,641,793 parameters, as the reference ``LaDeDa9`` with its
    ``fc = nn.Linear(2048, 1)`` (counted from the authors' class). :meth:`load_weights`
    loads ``WildRF_LaDeDa.pth`` / ``ForenSynth_LaDeDa.pth`` strictly (the reference
    ``test.py`` loads them as a plain state dict with ``strict=True``; a
    ``{'model': ...}`` container or ``module.`` prefixes are unwrapped too).
    :meth:`patch_logits` returns the per-patch score map (the reference's
    ``pool=False``); ``forward``'s image logit is its mean.

    Reference defaults (github.com/barcavia/RealTime-DeepfakeDetection-in-the-RealWorld
    at e734562):

    * model (``networks/LaDeDa.py``): input ``x - up(down(x))`` with nearest x0.5 and
      x2 (``preprocess_type="NPR"``, no rescaling, unlike NPR's x 2/3); ``conv1`` 1x1,
      ``conv2`` 3x3 (no padding), ``bn1`` (momentum 0.001), ReLU, no max-pool;
      ``layer1``-``layer4`` of 3, 4, 6, 3 bottlenecks with strides 2, 2, 2, 1 on the
      first block, padding 0, a 3x3 ``conv2`` only in the first block of ``layer1``
      and ``layer2`` (``kernel3=[1, 1, 0, 0]``); the shortcut cropped at the top-left;
      ``AvgPool2d(H)`` over the last map and ``fc``. Convolutions ``N(0, 2/(k*k*out))``,
      BatchNorm 1 and 0; the trainer's ``fc`` ``N(0, 0.02)`` (``init_gain``);
    * training (``train.py``, ``networks/trainer.py``, README): ``BCEWithLogitsLoss``;
      Adam, lr 2e-4 (README), betas (0.9, 0.999); batch size 32; lr x0.9 when
      validation accuracy has not improved for 15 epochs (``EarlyStopping``,
      ``earlystop_epoch 15``), stopping below 1e-6; ``Resize((256, 256))``,
      ``RandomCrop(224)``, ``RandomHorizontalFlip``, ImageNet ``Normalize``; no blur
      or JPEG (``is_aug`` off);
    * test (``test.py``): ``Resize((256, 256))``, no crop, ImageNet ``Normalize``,
      ``sigmoid`` of the pooled logit.

    Where this differs: the last map is averaged over height and width, which is the
    reference's ``AvgPool2d(H)`` for square inputs (all the reference feeds it) and
    also defined for non-square ones (``preprocessing.resize=none``; the reference's
    ``fc`` would fail on them); odd sizes are trimmed to even before the residual (as NPR does,
    :func:`~detectors.layers.forensynths.npr_residual`); there is no early-stopping lr schedule (the
    trainer's epochs and a scheduler override stand for it); Tiny-LaDeDa (the
    distilled 4-layer student) and the gradient/raw input variants are not included.

    Args:
        blocks: bottlenecks per stage (``(3, 4, 6, 3)``, the official; fewer for tests).
        train_preprocessing: fields of ``preprocessing`` that differ in training
            (default: a random 224 px crop of the resized image).
        preprocessing: test-time preprocessing, fields overriding
            :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`; default Adam(lr 2e-4,
            betas (0.9, 0.999)).
    """

    def __init__(
        self,
        blocks: Sequence[int] = BLOCKS,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.9, 0.999))
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
            raise ValueError(f"LaDeDa blocks must be four positive counts, not {list(blocks)}")
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        self.conv1 = nn.Conv2d(3, 64, kernel_size=1, bias=False)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=0.001)
        self.relu = nn.ReLU(inplace=True)
        inplanes = 64
        for index, (planes, count, stride, kernel3) in enumerate(
            zip((64, 128, 256, 512), blocks, STRIDES, KERNEL3, strict=True), start=1
        ):
            layers = []
            for i in range(int(count)):
                kernel = 3 if i < kernel3 else 1
                layers.append(PatchBottleneck(inplanes, planes, stride if i == 0 else 1, kernel))
                inplanes = planes * PatchBottleneck.expansion
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.fc = nn.Linear(512 * PatchBottleneck.expansion, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, 0.0, 0.02)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The last feature map (B, 2048, H', W'); each position sees a 9 x 9 input patch."""
        if min(image.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                f"LaDeDa needs images of at least {MIN_SIDE} x {MIN_SIDE} pixels after "
                f"preprocessing, not {tuple(image.shape[-2:])}: raise preprocessing.resize_to"
            )
        x = self.relu(self.bn1(self.conv2(self.conv1(npr_residual(image)))))
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return x

    def patch_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Each patch's logit (B, H', W'): ``fc`` at every position (the reference's ``pool=False``)."""
        return self.fc(self.features(image).permute(0, 2, 3, 1)).squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.features(batch["image"]).mean(dim=(-2, -1))
        return {"logits": self.fc(x).squeeze(1)}

    def load_weights(self, path: str | Path) -> None:
        """Load an official (or deepsift) weights file strictly; see the class docstring."""
        load_state_dict_strict(self, read_state_dict(path), f"weights file {path}")
