"""CNNSpot: an ImageNet ResNet-50 with one logit, trained with blur and JPEG augmentation.

After S.-Y. Wang, O. Wang, R. Zhang, A. Owens and A. A. Efros, "CNN-generated
images are surprisingly easy to spot... for now", CVPR 2020. Official code and
weights: github.com/PeterWang512/CNNDetection (``blur_jpg_prob0.5.pth`` and
``blur_jpg_prob0.1.pth``). A classifier trained on one generator (ProGAN) with
blur and JPEG augmentation generalises to many others.

This module also holds the pieces the CNNDetection family shares (NPR reuses
them): the official training transform (resize, then blur/JPEG, then a random
crop and a flip) and a reader for official weight files.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet50

from deepsift.core.checkpoint import read_state_dict
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.cnndetection import cnndetection_sample
from detectors.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    merge_preprocessing,  # first defined here, so still importable from detectors.cnnspot
    train_variant,  # likewise
)

log = logging.getLogger(__name__)

#: test-time preprocessing of the official ``eval.py`` (the paper's protocol):
#: no resize, a 224 px centre crop (zero-padded when the image is smaller),
#: ImageNet normalisation. The augmentation fields are used in training only.
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "none",
    "crop": "center",
    "interpolation": "bilinear",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "hflip": 0.5,
    "blur_prob": 0.5,
    "blur_sigma": (0.0, 3.0),
    "jpeg_prob": 0.5,
    "jpeg_quality": (30, 100),
}

#: what training changes: the shorter side is resized to ``loadSize`` 256
#: (``custom_resize``) before the random 224 px crop
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = {"resize": "shorter", "resize_to": 256}

#: torchvision's ImageNet ResNet-50 (``IMAGENET1K_V1``; CNNDetection downloads the
#: same weights under their older name ``resnet50-19c8e357.pth``)
IMAGENET_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
IMAGENET_FILES = ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth")


# -- the detector ---------------------------------------------------------------------
def _imagenet_weights(pretrained_file: str | None) -> Path:
    """A local file of torchvision's ImageNet ResNet-50, found or downloaded (verified)."""
    from deepsift.core.hub import download, sha256_file

    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"detector.pretrained_file {path} does not exist; pass torchvision's ImageNet "
                f"ResNet-50 state dict ({IMAGENET_FILES[0]}) or set detector.pretrained=false"
            )
        return path
    for name in IMAGENET_FILES:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / name
        if cached.is_file():
            return cached
    path = download(
        IMAGENET_URL,
        sha256=None,  # torchvision publishes only the 8-digit prefix in the name; checked below
        option_hint=f"detector.pretrained_file=/path/to/{IMAGENET_FILES[0]}",
    )
    if not sha256_file(path).startswith("0676ba61"):
        path.unlink(missing_ok=True)
        raise UserError(
            f"downloaded {IMAGENET_URL} does not match its published hash prefix 0676ba61; "
            f"retry, or pass detector.pretrained_file=/path/to/{IMAGENET_FILES[0]}"
        )
    return path


class CNNSpot(Detector):
    """torchvision ResNet-50 whose ``fc`` is 2048 -> 1: the CNNDetection model.

    The detector's own modules are the ResNet's (``conv1``, ``bn1``,
    ``layer1`` .. ``layer4``, ``fc``), so its state dict has exactly the keys
    of the official weight files, and ``load_detector("cnnspot",
    weights="blur_jpg_prob0.5.pth")`` loads them strictly (``{'model': ...}``
    unwrapped, ``module.`` prefixes removed; a file that does not fit fails with
    a :class:`~deepsift.core.errors.UserError` naming missing and unexpected keys).
    23,510,081 parameters, as ``resnet50(num_classes=1)``.

    Reference defaults (github.com/PeterWang512/CNNDetection):

    * model: ``networks/trainer.py`` starts from torchvision's ImageNet
      ResNet-50 and replaces ``fc`` with ``Linear(2048, 1)``, weights drawn from
      N(0, 0.02) (``init_gain``); ``BCEWithLogitsLoss``; Adam, lr 1e-4, betas
      (0.9, 0.999) (``options/train_options.py``); batch size 64;
    * learning rate: ``train.py`` + ``earlystop.py`` divide it by 10 when
      validation accuracy has not improved for 5 epochs (``earlystop_epoch``)
      and stop once it falls below 1e-6; the best-accuracy epoch is kept;
    * training data (``data/datasets.py``): the shorter side resized to
      ``loadSize`` 256 (bilinear), then ``data_augment`` (Gaussian blur with
      sigma ~ U[0, 3] and JPEG with quality in 30..100, OpenCV or PIL, each with
      probability 0.5, or 0.1 for the ``blur_jpg_prob0.1`` model; README), then
      ``RandomCrop(224)``, ``RandomHorizontalFlip``, ``ToTensor``, ImageNet
      ``Normalize``;
    * test data: no resize (``eval.py`` sets ``no_resize``), ``CenterCrop(224)``
      (the paper), or the whole image with ``--no_crop`` (README: better on most
      sets; ``demo.py`` does not crop by default), then ``ToTensor`` and ImageNet
      ``Normalize``.

    Defaults here are those, with these differences:

    * ``pretrained=False`` by default, so the detector builds offline; set
      ``pretrained=True`` (torch.hub cache, else a verified download) or
      ``pretrained_file`` for the official ImageNet start;
    * no reduce-on-plateau schedule: deepsift steps schedulers once per epoch
      without a metric; training ends by the trainer's early stopping instead;
    * JPEG is always PIL (the reference alternates OpenCV and PIL);
    * test-time: the paper's protocol, ``eval.py``'s default (no resize, the
      224 px centre crop, batchable); set ``preprocessing.crop=none`` for the
      uncropped protocol (``--no_crop``; then score one image size per batch).
      Checked against the authors' own ``resnet50``, ``eval.py`` loading and
      ``data`` loader on both official file names: ``tests/official/
      cnndetection_blur_jpg_prob0.5.json`` and ``..._prob0.1.json`` (made by
      ``tests/official/make_cnndetection.py``); the uncropped protocol is the same
      code path without the crop and has no reference of its own;
    * images are read by :func:`deepsift.core.images.load_rgb`, which composites
      transparent images on white (the reference's ``convert('RGB')`` drops alpha).

    Args:
        pretrained: start from torchvision's ImageNet weights.
        pretrained_file: a local torchvision ResNet-50 ImageNet state dict
            (its 1000-class ``fc`` is dropped); implies nothing unless
            ``pretrained`` is true.
        fc_init_std: std of the normal init of the new ``fc`` weight.
        train_preprocessing: fields of ``preprocessing`` that differ in training
            (default: the shorter side resized to 256).
        preprocessing: test-time preprocessing (and the augmentation
            probabilities), fields overriding :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`; default Adam(lr 1e-4, betas
            (0.9, 0.999)).
    """

    def __init__(
        self,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        fc_init_std: float = 0.02,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.9, 0.999))
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        imagenet = _imagenet_weights(pretrained_file) if pretrained else None
        net = resnet50(num_classes=1)
        if imagenet is not None:
            self._load_imagenet(net, imagenet)
        elif pretrained_file:
            log.warning(
                "detector.pretrained_file=%s is ignored: detector.pretrained=false", pretrained_file
            )
        nn.init.normal_(net.fc.weight, 0.0, fc_init_std)
        for name, module in net.named_children():
            self.add_module(name, module)

    @staticmethod
    def _load_imagenet(net: nn.Module, path: Path) -> None:
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
        backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        missing = sorted(set(backbone) - set(state))
        unexpected = sorted(set(state) - set(backbone))
        wrong = [k for k in backbone if k in state and state[k].shape != backbone[k].shape]
        if missing or unexpected or wrong:
            shown = ", ".join((missing or unexpected or wrong)[:5])
            raise UserError(
                f"ImageNet weights {path} do not fit torchvision's ResNet-50 ({len(missing)} missing, "
                f"{len(unexpected)} unexpected, {len(wrong)} other shapes, e.g. {shown}); pass "
                f"torchvision's {IMAGENET_FILES[0]} or set detector.pretrained=false"
            )
        net.load_state_dict({**net.state_dict(), **state})
        log.info("CNNSpot: ImageNet weights from %s", path)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(batch["image"]))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return {"logits": self.fc(x).squeeze(1)}
