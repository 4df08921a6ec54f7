"""CORE: consistent representations of two augmented views, on an Xception.

After Y. Ni, D. Meng, C. Yu, C. Quan, D. Ren and Y. Zhao, "CORE: COnsistent
REpresentation Learning for Face Forgery Detection", CVPR Workshops 2022
(arXiv:2206.02749). Official code: github.com/niyunsheng/CORE (``src/``);
DeepfakeBench's port: ``training/detectors/core_detector.py`` with
``training/loss/consistency_loss.py`` and ``training/config/detector/core.yaml``.
Erasing-style augmentations only *implicitly* ask for the same representation
of differently augmented images; CORE asks for it explicitly: each face is seen
twice, under two independent draws of the same augmentation, and the cosine
similarity of the two representations is pushed to 1.

**Loss** (official ``main.py``, ``trainer.py``, ``consistency_loss.py``). With
``f`` the 2048-d Xception representation (global average of the last ReLU map,
the input of the classifier), ``z`` the classifier output, ``y`` the label and
the two views of the ``N`` images stacked into one batch of ``2N``::

    L = CE_w(z, [y; y]) + lambda * (1/N) * sum_i (cos(f_i^(1), f_i^(2)) - 1)^2

``cos`` is the dot product of the L2-normalised representations; the second
term is ``MSELoss(cos, 1)``: no margin, no threshold. ``CE_w`` is
``nn.CrossEntropyLoss(weight=[real_weight, 1])``, a weighted mean
``sum_i w_{y_i} ce_i / sum_i w_{y_i}`` with ``real_weight`` 4 (``--real-weight``,
for FaceForensics++'s four fakes per real). ``lambda`` (``--consistency-rate``)
is 1.0 with the ``RE`` augmentation (the README's in-dataset command and
DeepfakeBench's ``consistency_rate``) and 100 with ``RaAug`` or ``DFDC_selim``
(the README's cross-dataset commands). Here the classifier has one logit, the
fake logit ``z1 - z0`` of the reference's two-class head, so ``CE_w`` is the
equally weighted binary cross-entropy (softmax CE over two classes equals BCE on
their logit difference).

Reference defaults:

* official: ImageNet Xception (tstandley's, the layout of Cadene's and timm's
  ``legacy_xception``), two-class ``fc``; input ``Resize(299)``, normalisation
  mean = std = 0.5; augmentations (``transform.py``, ``get_augs``) ``None``
  (resize, horizontal flip), ``RE`` (plus ``RandomErasing(p=0.8, scale=(0.02,
  0.2), ratio=(0.5, 2))`` on the [0, 1] tensor, i.e. erased to black),
  ``RandCrop`` (``RandomResizedCrop(299, scale=(1/1.3, 1), ratio=(0.9, 1.1))``
  and flip), ``RaAug`` (one of the three, erasing with p=1) and ``DFDC_selim``
  (albumentations); ``TwoTransform`` draws the base augmentation twice; Adam lr
  2e-4 (no weight decay), batch 32, 30 epochs, seed 3407; test ``Resize(299)``
  (and, a quirk, a random flip);
* DeepfakeBench: 256 x 256 inputs (``cv2.resize`` ``INTER_CUBIC`` of the uint8
  crop, a copy when it is already 256 px), mean = std = 0.5, Adam lr
  2e-4 betas (0.9, 0.999) eps 1e-8 weight decay 5e-4, batch 32, 10 epochs, no
  scheduler, unweighted CE, ``consistency_rate`` 1.0, ImageNet
  ``xception-b5690688.pth``.

Where this differs, and why:

* The two views are real augmented views, made by :meth:`CORE.transform` as
  ``image`` and ``image_view2`` (as the official ``TwoTransform``).
  DeepfakeBench's port has no second view: its loss splits an ordinary batch
  into halves and pulls the representations of two *different* faces together.
* Input size, normalisation and optimiser follow DeepfakeBench (the reference of
  this zoo, and the layout of its released ``core_best.pth``); the loss, the
  two views, the augmentations and ``real_weight`` follow the official code.
  ``DFDC_selim`` (albumentations) is not offered; the test-time random flip is
  dropped.
* ImageNet initialisation only from a local file (``pretrained_file``, see
  :func:`detectors.layers.xception.xception_backbone`); the references download it.
* The batch of ``2N`` goes through BatchNorm as one batch, as in the reference.
  Without ``image_view2`` (a batch made by the test-time transform),
  training falls back to the weighted cross-entropy on ``image`` alone, with a
  one-time warning.

:meth:`CORE.load_weights` loads, with strict key matching, DeepfakeBench's
``core_best.pth`` (``backbone.*`` Cadene Xception, ``backbone.last_linear``
two-class head; the unused ``backbone.adjust_channel`` 2048->512 block is
dropped), an official CORE checkpoint (``trainer.py``'s ``{'model', 'optimizer', 'acc', 'auc',
'epoch'}``, the metrics NumPy scalars; keys ``conv1`` ... ``bn4``, two-class ``fc``),
the other Xception layouts of :mod:`detectors.xception`, or a deepsift state
dict. A file brings its test-time input (a preprocessing the user set wins, with a
warning): DeepfakeBench's (the default here), checked against DeepfakeBench's own
code in ``tests/official/deepfakebench_core.json`` (made by
``tests/official/make_deepfakebench_xception.py``); the authors' (``Resize(299)``,
Pillow bilinear, mean = std = 0.5), checked against their code in
``tests/official/core_official.json`` (``tests/official/make_core.py``). The network and its state-dict layout (``backbone.*``, ``head.*``) are
:class:`~detectors.xception.XceptionDetector`'s: only the training differs.
Two-class heads become the fake logit exactly: ``w = w[1] - w[0]``, ``b = b[1] - b[0]``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.xception import (
    XCEPTION_FEATURES,
    read_xception_file,
    xception_backbone,
    xception_detector_state,
)
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench: faces resized to 256 x 256 (``cv2.INTER_CUBIC``), mean = std = 0.5;
#: the flip is the official augmentations' ``RandomHorizontalFlip``
DEFAULT_PREPROCESSING: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "hflip": 0.5}
#: DeepfakeBench's test-time input (``load_rgb``: ``cv2.resize`` to 256 x 256, ``INTER_CUBIC``)
DEEPFAKEBENCH_PROTOCOL: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "resize_to": 256}
#: the official ``main.py`` input size (``--size 299``, ``Resize(299)``)
OFFICIAL_SIZE = 299
#: the authors' test-time input (``main.py`` ``get_augs(name="None", norm="0.5", size=299)``):
#: ``transforms.Resize(299)`` (the shorter side to 299, Pillow bilinear; their crops are
#: square), ``ToTensor``, ``Normalize(0.5, 0.5)``; checked against their code in
#: ``tests/official/core_official.json``
OFFICIAL_PROTOCOL: dict[str, Any] = {
    "size": OFFICIAL_SIZE,
    "resize": "shorter",
    "resize_to": OFFICIAL_SIZE,
    "interpolation": "bilinear",
    "resize_backend": "pil",
    "crop": "none",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}
#: the official ``get_augs`` names (``DFDC_selim`` needs albumentations: not offered)
AUGMENTATIONS = ("none", "RE", "RandCrop", "RaAug")
#: ``RandomErasing(p=0.8, scale=(0.02, 0.20), ratio=(0.5, 2.0))`` (p=1.0 inside RaAug)
ERASE_PROB, ERASE_SCALE, ERASE_RATIO = 0.8, (0.02, 0.20), (0.5, 2.0)
#: ``RandomResizedCrop(size, scale=(1/1.3, 1.0), ratio=(0.9, 1.1))``
CROP_SCALE, CROP_RATIO = (1 / 1.3, 1.0), (0.9, 1.1)


# -- the two views ------------------------------------------------------------------------
def core_view(image: Image.Image, p: Preprocessing, augmentation: str) -> torch.Tensor:
    """One augmented view, as the official ``get_augs(augmentation)`` at ``p.size``.

    Resize (``p.resize``) or ``RandomResizedCrop`` -> horizontal flip (``p.hflip``)
    -> tensor in [0, 1] -> ``RandomErasing`` (value 0) -> normalise.
    """
    erase_prob = ERASE_PROB if augmentation == "RE" else 0.0
    if augmentation == "RaAug":  # OneOfTrans: plain, erasing with p=1, resized crop
        augmentation = random.choice(("none", "RE", "RandCrop"))
        erase_prob = 1.0 if augmentation == "RE" else 0.0
    image = p.augment(image)  # blur / JPEG, off unless configured
    if augmentation == "RandCrop":
        top, left, height, width = T.RandomResizedCrop.get_params(image, CROP_SCALE, CROP_RATIO)
        image = TF.resized_crop(
            image,
            top,
            left,
            height,
            width,
            [p.size, p.size],
            interpolation=TF.InterpolationMode[p.interpolation.upper()],
        )
        tensor = TF.to_tensor(image)
    else:
        tensor = p.crop_image(TF.to_tensor(p.resize_image(image)), train=True)
    if p.hflip and random.random() < p.hflip:
        tensor = tensor.flip(-1)
    if erase_prob and random.random() < erase_prob:
        tensor = T.RandomErasing(p=1.0, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0)(tensor)
    return TF.normalize(tensor, p.mean, p.std)


# -- the detector -------------------------------------------------------------------------
class CORE(Detector):
    """Xception (timm ``legacy_xception``) + ``head = Linear(2048, 1)``, trained on two views.

    Args:
        pretrained_file: local ImageNet Xception weights (``xception-b5690688.pth``);
            ``None`` starts from random weights (the references start from ImageNet).
        augmentation: the official augmentation drawn for each view: ``RE``
            (default), ``RaAug``, ``RandCrop`` or ``none``.
        consistency_weight: ``lambda`` of the consistency term (1.0; 100 with RaAug
            in the official cross-dataset runs).
        real_weight: weight of real images in the cross-entropy (official 4.0;
            DeepfakeBench 1.0).
        preprocessing: test-time preprocessing (fields over DeepfakeBench's
            defaults); its ``size``, ``resize``, ``hflip`` and normalisation also
            shape the training views.
        optimizer: default Adam(lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 5e-4).
        scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        augmentation: str = "RE",
        consistency_weight: float = 1.0,
        real_weight: float = 4.0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if augmentation not in AUGMENTATIONS:
            raise UserError(
                f"CORE augmentation must be one of {', '.join(AUGMENTATIONS)}, not {augmentation!r}"
            )
        if real_weight <= 0:
            raise UserError(f"CORE real_weight must be positive, not {real_weight}")
        self.augmentation = augmentation
        self.consistency_weight = float(consistency_weight)
        self.real_weight = float(real_weight)
        self.backbone = xception_backbone(pretrained_file=pretrained_file)
        self.head = nn.Linear(XCEPTION_FEATURES, 1)
        self._warned_single_view = False

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        image = sample["image"]
        if not train:
            return {"image": self.preprocessing(image, train=False)}
        return {
            "image": core_view(image, self.preprocessing, self.augmentation),
            "image_view2": core_view(image, self.preprocessing, self.augmentation),
        }

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the (B, 2048) representation: global average of the last ReLU map."""
        return self.backbone(images)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.features(batch["image"])).squeeze(1)}

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``CrossEntropyLoss(weight=[real_weight, 1])`` on the fake logit (a weighted mean)."""
        labels = labels.float()
        weights = torch.where(labels > 0.5, 1.0, self.real_weight)
        losses = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        return (weights * losses).sum() / weights.sum()

    @staticmethod
    def consistency_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``MSE(cos(first_i, second_i), 1)`` over the pairs (official ``ConsistencyCos``)."""
        cos = (F.normalize(first.float(), dim=1) * F.normalize(second.float(), dim=1)).sum(1)
        return ((cos - 1.0) ** 2).mean()

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["label"]
        view2 = batch.get("image_view2")
        if view2 is None:
            if not self._warned_single_view:
                log.warning(
                    "CORE: the batch has no image_view2 (made by transform(sample, train=True)); "
                    "training on the weighted cross-entropy alone, without the consistency loss"
                )
                self._warned_single_view = True
            logits = self(batch)["logits"]
            loss = self.classification_loss(logits, labels)
            return {"loss": loss, "loss_cls": loss.detach(), "loss_consistency": loss.new_zeros(())}
        features = self.features(torch.cat([batch["image"], view2]))
        logits = self.head(features).squeeze(1)
        cls = self.classification_loss(logits, torch.cat([labels, labels]))
        first, second = features.chunk(2)
        consistency = self.consistency_loss(first, second)
        return {
            "loss": cls + self.consistency_weight * consistency,
            "loss_cls": cls.detach(),
            "loss_consistency": consistency.detach(),
        }

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench ``core_best.pth``, an official CORE checkpoint or a deepsift state dict.

        The layouts are those of Xception detectors (CORE's network *is* an Xception):
        :func:`detectors.layers.xception.xception_detector_state` maps them to ``backbone.*``
        and a fake-logit ``head``; keys left over fail strict loading by name.
        """
        source = f"weights file {path}"
        state, origin = xception_detector_state(read_xception_file(path), source)
        load_state_dict_strict(self, state, source)
        log.info("CORE: weights from %s (%s layout)", path, origin)
        if origin.startswith("DeepfakeBench"):
            self.use_protocol("DeepfakeBench", DEEPFAKEBENCH_PROTOCOL, DEFAULT_PREPROCESSING)
        if origin == "Xception":
            self.use_protocol(
                "CORE (the authors' checkpoint)", OFFICIAL_PROTOCOL, DEFAULT_PREPROCESSING
            )
