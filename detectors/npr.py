"""NPR: neighbouring-pixel relationships left by up-sampling, read by a truncated ResNet-50.

After C. Tan, H. Liu, Y. Zhao, S. Wei, G. Gu, P. Liu and Y. Wei, "Rethinking
the Up-Sampling Operations in CNN-based Generative Network for Generalizable
Deepfake Detection", CVPR 2024. Official code and weights:
github.com/chuangchuangtan/NPR-DeepfakeDetection (``NPR.pth``,
``model_epoch_last_3090.pth``). A generator's up-sampling layers tie each
pixel to its neighbours in a 2x2 block; the residual of the image against its
own nearest-neighbour down-and-up-sampled copy exposes that tie, whatever the
generator.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
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
from detectors.layers.resnet import bottleneck_layer, init_resnet_weights
from detectors.preprocessing import (
    Preprocessing,
    merge_preprocessing,
    train_variant,
)

log = logging.getLogger(__name__)

#: the official test-time and training preprocessing: ForenSynths' (see
#: :mod:`detectors.layers.forensynths`)
DEFAULT_PREPROCESSING: dict[str, Any] = dict(FORENSYNTHS_PREPROCESSING)
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = dict(FORENSYNTHS_TRAIN_PREPROCESSING)

#: the unused classifier head ``networks/trainer.py`` attached in early versions
#: (``model.fc = nn.Linear(2048, 1)``, never called by ``forward``); training
#: checkpoints of those versions carry it
UNUSED_HEAD = {"fc.weight": (1, 2048), "fc.bias": (1,)}


class NPR(Detector):
    """NPR residual (x 2/3) into ResNet-50's stem, ``layer1`` and ``layer2``, then ``fc1`` 512 -> 1.

    Module names and shapes are those of the reference ``networks/resnet.py``
    (``conv1`` 3x3 stride 2 3 -> 64, ``bn1``, ``maxpool``, ``layer1`` and
    ``layer2`` of ResNet-50 bottlenecks, global average pooling, ``fc1``), so
    the detector's state dict has the keys of the official weight files:
    1,437,761 parameters, as the reference ``resnet50(num_classes=1)``.
    :meth:`load_weights` loads ``NPR.pth`` or ``model_epoch_last_3090.pth``
    strictly, whichever layout the file has: a plain state dict (what the
    reference's ``test.py`` loads) or a ``{'model': ...}`` training checkpoint,
    with or without ``module.`` prefixes. The only keys it tolerates beyond the
    model's are ``fc.weight`` (1, 2048) and ``fc.bias`` (1,), an unused head
    early versions of the reference trainer attached (see :data:`UNUSED_HEAD`).

    Reference defaults (github.com/chuangchuangtan/NPR-DeepfakeDetection):

    * model (``networks/resnet.py``): ``NPR = x - interpolate(x, 0.5)`` with
      nearest down- and up-sampling (``recompute_scale_factor=True``), fed as
      ``NPR * 2/3``; Kaiming-normal (fan-out) convolutions, BatchNorm weight 1
      and bias 0; no ImageNet weights;
    * training (``networks/trainer.py``, ``train.py``, README command):
      ``BCEWithLogitsLoss``; Adam, lr 2e-4 (README; 1e-4 in the options),
      betas (0.9, 0.999); batch size 32; 50 epochs (``niter``); the learning
      rate multiplied by 0.9 at the end of epochs 11, 21, 31 and 41
      (``epoch % delr_freq == 0`` counted from 0, ``delr_freq 10``);
      ``Resize((256, 256))`` bilinear, ``RandomCrop(224)``,
      ``RandomHorizontalFlip``, ImageNet ``Normalize``; no blur or JPEG
      (``data_augment`` is commented out);
    * test (``test.py``): ``Resize((256, 256))`` (``no_resize=False``; ``True``
      for GANGen-Detection), no crop (``no_crop=True``), ImageNet ``Normalize``;
      ``model.load_state_dict(torch.load(path), strict=True)``.

    Where this differs: odd heights and widths are trimmed to even before the
    residual (the reference's commented-out code does the same; its active code
    raises a shape error on them, which its 256 x 256 resize avoids); images are
    read by :func:`deepsift.core.images.load_rgb` (transparency composited on white).
    The default test-time input is the reference's ForenSynths protocol, checked
    against the authors' ``resnet50``, ``test.py`` loading and ``data`` loader on an
    ``NPR.pth`` file (``tests/official/npr.json``, made by
    ``tests/official/make_cnndetection.py``).
    The schedule in ``configs/detector/npr.yaml`` (``MultiStepLR`` at epochs 11,
    21, 31, 41) reproduces the reference's decay for its 50 epochs; batch size
    and epochs are the trainer's (``trainer.batch_size=32
    trainer.max_epochs=50`` for the reference's).

    Args:
        train_preprocessing: fields of ``preprocessing`` that differ in training
            (default: a random 224 px crop of the resized image).
        preprocessing: test-time preprocessing, fields overriding
            :data:`DEFAULT_PREPROCESSING` (``{"resize": "none"}`` for the
            reference's ``no_resize`` protocol; then score one image size per
            batch, as the reference does).
        optimizer, scheduler: see :class:`Detector`; default Adam(lr 2e-4,
            betas (0.9, 0.999)).
    """

    def __init__(
        self,
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
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = bottleneck_layer(64, 64, blocks=3, stride=1)
        self.layer2 = bottleneck_layer(256, 128, blocks=4, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Linear(512, 1)
        init_resnet_weights(self)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = npr_residual(batch["image"])
        x = self.maxpool(self.relu(self.bn1(self.conv1(x * 2.0 / 3.0))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return {"logits": self.fc1(x).squeeze(1)}

    def load_weights(self, path: str | Path) -> None:
        """Load an official (or deepsift) weights file strictly; see the class docstring."""
        state = read_state_dict(path)
        dropped = [
            key
            for key, shape in UNUSED_HEAD.items()
            if key in state and torch.is_tensor(state[key]) and tuple(state[key].shape) == shape
        ]
        if dropped:
            state = {k: v for k, v in state.items() if k not in dropped}
            log.info(
                "NPR: ignored %s in %s (the reference trainer's unused head)",
                ", ".join(dropped),
                path,
            )
        load_state_dict_strict(self, state, f"weights file {path}")
