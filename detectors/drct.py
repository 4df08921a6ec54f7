"""DRCT: a ConvNeXt-B embedding trained with a margin-based contrastive loss on reconstructions.

After B. Chen, J. Zeng, J. Yang and R. Yang, "DRCT: Diffusion Reconstruction Contrastive
Training towards Universal Detection of Diffusion Generated Images", ICML 2024.
Official code and weights: github.com/beibuwandeluori/DRCT (``network/models.py``
``ContrastiveModels``, ``scripts/train_contrastive.py``, ``scripts/train.py``,
``data/transform.py``; weights ``pretrained.zip`` on ModelScope,
``.../convnext_base_in22k_224_drct_amp_crop/*.pth``). Real images are labelled real;
generated images and the diffusion reconstructions (inpainting) of real and of
generated images are labelled fake. Only the ConvNeXt-B variant is built here; the
CLIP ViT-L/14 variant (``clip-ViT-L-14``, OpenAI ``clip`` package) is not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.cnndetection import cnndetection_train_transform
from detectors.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    merge_preprocessing,
    train_variant,
)

#: the official test-time input (``scripts/test_DRCT-2M.sh``: ``--input_size 224
#: --is_crop``; ``create_val_transforms``): ``PadIfNeeded(224)`` (zeros),
#: ``CenterCrop(224)``, ImageNet ``Normalize``; no resize
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "none",
    "crop": "center",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "hflip": 0.5,
}


def albumentations_center_crop(image: Image.Image, size: int) -> Image.Image:
    """albumentations 1.3's ``PadIfNeeded(size, BORDER_CONSTANT, 0)`` then
    ``CenterCrop(size)``: a side shorter than ``size`` is zero-padded with
    ``(size - n) // 2`` before it, a longer one cropped from ``(n - size) // 2``
    (floor, where torchvision's ``CenterCrop`` rounds half to even)."""
    width, height = image.size

    def start(n: int) -> int:
        return (n - size) // 2 if n >= size else -((size - n) // 2)

    left, top = start(width), start(height)
    return image.crop((left, top, left + size, top + size))  # outside the image: zeros


def contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, pos_margin: float = 0.0, neg_margin: float = 1.0
) -> torch.Tensor:
    """pytorch_metric_learning's ``ContrastiveLoss(pos_margin, neg_margin)`` with its
    defaults: Euclidean distances of L2-normalised embeddings over all pairs ``i != j``;
    ``relu(d - pos_margin)`` for same-label pairs, ``relu(neg_margin - d)`` for the
    others; each averaged over its non-zero terms (``AvgNonZeroReducer``), then summed."""
    z = F.normalize(embeddings.float(), dim=1)
    dist = torch.cdist(z, z).clamp_min(0.0)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    total = embeddings.new_zeros((), dtype=torch.float32)
    for mask, terms in (
        (same & off_diagonal, F.relu(dist - pos_margin)),
        (~same, F.relu(neg_margin - dist)),
    ):
        values = terms[mask]
        nonzero = values > 0
        if nonzero.any():
            total = total + values[nonzero].mean()
    return total


class DRCT(Detector):
    """timm ConvNeXt whose ``head.fc`` gives a ``embedding_size`` embedding, then ``fc`` -> 2.

    Module names are those of the reference ``ContrastiveModels`` (``model``: the timm
    network with ``head.fc`` replaced by ``Linear(1024, embedding_size)``; ``fc``:
    ``Linear(embedding_size, 2)``), so the official files load strictly: the plain state
    dict ``torch.save(model.state_dict())`` wrote (``scripts/train.py`` loads it with
    ``strict=True``). Full size (``convnext_base``, embedding 1024): 88,618,114 parameters.
    The fake logit is ``fc``'s second output minus its first (its sigmoid is the
    reference's ``Softmax(dim=1)[:, 1]``).

    Reference defaults (github.com/beibuwandeluori/DRCT at 01aa7d0):

    * model: ``timm.create_model("convnext_base_in22k", pretrained=True)`` (timm 0.6.12:
      ConvNeXt-B, ImageNet-22k weights), ``head.fc`` -> 1024, ``fc`` -> 2;
    * training (README, ``train_contrastive.py``): ``(1 - alpha) * CrossEntropy +
      alpha * ContrastiveLoss(pos_margin 0, neg_margin 1)`` on the embedding, ``alpha``
      0.3; AdamW(lr 1e-4, weight decay 4e-5), ``CosineAnnealingLR(T_max=5)`` stepped per
      epoch, 17 epochs, AMP, batch 64 per GPU; albumentations: JPEG(30-100, p 0.5),
      RandomScale, HorizontalFlip, GaussNoise, GaussianBlur, RandomRotate90,
      PadIfNeeded + RandomCrop(224), colour jitter / FancyPCA / HSV, Coarse/GridDropout,
      ToGray, ShiftScaleRotate, ImageNet Normalize;
    * test (``scripts/test_DRCT-2M.sh``, ``create_val_transforms(224, is_crop=True)``):
      images read by ``cv2.imread`` (BGR -> RGB), ``PadIfNeeded(224)`` with zeros,
      ``CenterCrop(224)``, ImageNet ``Normalize``; no resize.

    Where this differs: images are decoded by PIL, not OpenCV (identical for PNG; JPEG
    decoders may differ by a grey level); training keeps the random crop (zero-padded)
    and the flip but not the other albumentations; the schedule is the trainer's; the
    contrastive loss is written here (:func:`contrastive_loss`), deepsift does not depend
    on pytorch_metric_learning.

    Args:
        backbone: the timm ConvNeXt name (``convnext_base``; a small one such as
            ``convnext_atto`` for tests).
        embedding_size: the width of ``head.fc``'s output (1024).
        pretrained_file: a local timm ConvNeXt ImageNet state dict for training (the
            reference's ``convnext_base_in22k``, e.g. timm's ``convnext_base.fb_in22k``);
            every key but ``head.fc`` must match. ``null``: random initialisation.
        alpha: the contrastive loss's weight (0.3).
        pos_margin, neg_margin: the contrastive loss's margins (0, 1).
        train_preprocessing, preprocessing: as in :class:`Detector`; ``preprocessing``
            overrides :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`; default AdamW(lr 1e-4, weight
            decay 4e-5).
    """

    def __init__(
        self,
        backbone: str = "convnext_base",
        embedding_size: int = 1024,
        pretrained_file: str | None = None,
        alpha: float = 0.3,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        import timm

        if optimizer is None:
            optimizer = functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=4e-5)
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DRCT alpha must be in [0, 1], not {alpha}")
        if not backbone.startswith("convnext"):
            raise UserError(f"DRCT backbone must be a timm ConvNeXt (convnext_*), not {backbone!r}")
        self.alpha, self.pos_margin, self.neg_margin = float(alpha), pos_margin, neg_margin
        self.train_preprocessing = train_variant(self.preprocessing, train_preprocessing, {})
        self.model = timm.create_model(backbone, pretrained=False, num_classes=embedding_size)
        self.fc = nn.Linear(embedding_size, 2)
        if pretrained_file:
            self._load_backbone(pretrained_file)

    def _load_backbone(self, pretrained_file: str) -> None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"detector.pretrained_file {path} does not exist; pass a local timm ConvNeXt "
                f"ImageNet state dict (convnext_base.fb_in22k) or set detector.pretrained_file=null"
            )
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("head.fc.")}
        state.update({f"head.fc.{k}": v for k, v in self.model.head.fc.state_dict().items()})
        load_state_dict_strict(self.model, state, f"detector.pretrained_file {path}")

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        if train:
            return {
                "image": cnndetection_train_transform(sample["image"], self.train_preprocessing)
            }
        image, p = sample["image"], self.preprocessing
        if p.crop == "center" and p.resize == "none" and p.pad == "none":
            image = albumentations_center_crop(image, p.size)
        return {"image": p(image, train=False)}

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """The ``embedding_size`` feature the contrastive loss sees (``return_feature``)."""
        return self.model(image)

    def class_logits(self, image: torch.Tensor) -> torch.Tensor:
        """``fc``'s two outputs (real, fake), as the reference model returns them."""
        return self.fc(self.embed(image))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.class_logits(batch["image"])
        return {"logits": out[:, 1] - out[:, 0]}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``(1 - alpha) * CrossEntropy + alpha * contrastive_loss`` (the reference's)."""
        labels = batch["label"].long()
        embeddings = self.embed(batch["image"])
        out = self.fc(embeddings).float()
        loss = (1 - self.alpha) * F.cross_entropy(out, labels)
        if self.alpha:
            contrast = contrastive_loss(embeddings, labels, self.pos_margin, self.neg_margin)
            loss = loss + self.alpha * contrast
        return {"loss": loss}

    def load_weights(self, path: str | Path) -> None:
        """Load an official (or deepsift) weights file strictly; see the class docstring."""
        load_state_dict_strict(self, read_state_dict(path), f"weights file {path}")
