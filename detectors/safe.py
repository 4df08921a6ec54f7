"""SAFE: the diagonal wavelet band of a native-resolution crop, read by a truncated ResNet-50.

After O. Li, J. Cai, Y. Hao, X. Jiang, Y. Hu and F. Feng, "Improving Synthetic Image
Detection Towards Generalization: An Image Transformation Perspective", KDD 2025.
Official code and weights: github.com/Ouxiang-Li/SAFE (``models/resnet.py``,
``main_finetune.py``, ``data/datasets.py``; weights ``checkpoint/checkpoint-best.pth``).
The image is cropped, never resized (resizing blurs the artifacts), and the network
sees only the high-high (diagonal) band of a one-level ``bior1.3`` wavelet transform,
resized back to the crop's size.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from detectors.base import Detector
from detectors.layers.cnndetection import cnndetection_sample
from detectors.layers.resnet import bottleneck_layer, init_resnet_weights
from detectors.preprocessing import Preprocessing, merge_preprocessing, train_variant

#: the official test-time input (``scripts/eval.sh``: ``--input_size 256 --transform_mode
#: crop``): ``CenterCrop([256, 256])`` (zero-padded when smaller), ``ToTensor``, no normalisation
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 256,
    "resize": "none",
    "crop": "center",
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "hflip": 0.5,
}

#: ``pywt.Wavelet("bior1.3").dec_hi``: the analysis high-pass filter (the HH band needs no other)
BIOR13_DEC_HI = (0.0, 0.0, -0.7071067811865476, 0.7071067811865476, 0.0, 0.0)


def _symmetric_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``n`` axis extended by ``pad`` on each side, mirrored with the
    edge sample repeated (pywt's ``symmetric`` mode), for any ``pad``."""
    index = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(index >= n, 2 * n - 1 - index, index)


def _analysis_high(x: torch.Tensor, dim: int) -> torch.Tensor:
    """One level of pywt's ``dwt`` high band along ``dim`` (``symmetric`` mode), batched:
    full convolution of the extended signal with ``dec_hi``, odd samples kept; length
    ``(n + 5) // 2``."""
    taps = len(BIOR13_DEC_HI)
    n = x.shape[dim]
    x = x.index_select(dim, _symmetric_index(n, taps - 1, x.device)).movedim(dim, -1)
    shape = x.shape
    kernel = torch.tensor(BIOR13_DEC_HI[::-1], dtype=x.dtype, device=x.device).view(1, 1, -1)
    y = F.conv1d(x.reshape(-1, 1, shape[-1]), kernel)  # length n + taps - 1
    y = y[..., 1::2]
    return y.reshape(*shape[:-1], y.shape[-1]).movedim(-1, dim)


def dwt_hh(x: torch.Tensor) -> torch.Tensor:
    """The diagonal band ``cD`` of ``pywt.dwt2(x, "bior1.3", mode="symmetric")`` per channel
    (``pytorch_wavelets``' ``DWTForward(J=1, mode="symmetric", wave="bior1.3")`` ``Yh[0][:, :, 2]``)."""
    return _analysis_high(_analysis_high(x, -1), -2)


def safe_input(x: torch.Tensor) -> torch.Tensor:
    """``Resize([H, W])(dwt_hh(x))``: the HH band resized back (bilinear) to the input's size."""
    band = dwt_hh(x)
    return F.interpolate(band, size=x.shape[-2:], mode="bilinear", align_corners=False)


class SAFE(Detector):
    """HH wavelet band into ResNet-50's 3x3 stem, ``layer1`` and ``layer2``, then ``fc1`` 512 -> 2.

    Module names and shapes are those of the reference ``models/resnet.py``
    (``resnet50(num_classes=2)``: ``conv1`` 3x3 stride 2, ``bn1``, ``maxpool``, ``layer1``,
    ``layer2``, global average pooling, ``fc1``): 1,438,274 parameters. The fake logit is
    ``fc1``'s second output minus its first (its sigmoid is the reference's
    ``softmax[:, 1]``). :meth:`load_weights` reads ``checkpoint-best.pth`` strictly: the
    reference's ``utils.save_model`` container ``{'model', 'optimizer', 'epoch', 'scaler',
    'args'}``, whose ``args`` (an ``argparse.Namespace``) is the one non-tensor class the
    safe loader is allowed to rebuild.

    Reference defaults (github.com/Ouxiang-Li/SAFE at 722620a):

    * model: ``x = Resize([H, W])(DWTForward(J=1, mode='symmetric', wave='bior1.3')(x)
      [1][0][:, :, 2])`` (``pytorch_wavelets``; torchvision's tensor ``Resize``, bilinear,
      an upsampling), then the truncated ResNet-50; torchvision's initialisation (Kaiming
      fan-out, BatchNorm 1 and 0); no ImageNet weights;
    * training (``scripts/train.sh``, ``main_finetune.py``, ``data/datasets.py``): 2-class
      ``LabelSmoothingCrossEntropy(0.1)``; AdamW, ``blr 1e-2`` x total batch / 256 (4 GPUs
      x 32: lr 5e-3), weight decay 0.01, 1 warm-up epoch then cosine to ``min_lr 1e-6``,
      20 epochs; ``RandomCrop(256, pad_if_needed)``, ``RandomHorizontalFlip``,
      ``RandomRotation(180)``, ``ColorJitter(0.5, 0.5, 0.5)``, ``ToTensor``,
      ``RandomMask(0-0.75, 16 px patches, p 0.5)``;
    * test (``scripts/eval.sh``): ``CenterCrop(256)``, ``ToTensor``, no normalisation.

    Where this differs: the wavelet band is computed in torch here (the same
    filter bank and ``symmetric`` extension as pywt / pytorch_wavelets, which deepsift
    does not depend on); training keeps the random crop and flip but not the rotation,
    colour jitter and patch masking (deepsift's shared augmentations do not have them);
    the label smoothing is kept (``BCE`` on the logit difference with targets 0.05 /
    0.95, which is the 2-class smoothed cross-entropy); the schedule is the trainer's.

    Args:
        train_preprocessing: fields of ``preprocessing`` that differ in training
            (default: none; ``crop="center"`` is a random 256 px crop in training).
        preprocessing: test-time preprocessing, fields overriding
            :data:`DEFAULT_PREPROCESSING` (``{"crop": "none"}`` keeps whole images:
            then score one size per batch, which ``predict`` does).
        label_smoothing: the reference's 0.1.
        optimizer, scheduler: see :class:`Detector`; default AdamW(lr 5e-3, weight decay 0.01).
    """

    def __init__(
        self,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        label_smoothing: float = 0.1,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.AdamW, lr=5e-3, weight_decay=0.01)
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"SAFE label_smoothing must be in [0, 1), not {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.train_preprocessing = train_variant(self.preprocessing, train_preprocessing, {})
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = bottleneck_layer(64, 64, blocks=3, stride=1)
        self.layer2 = bottleneck_layer(256, 128, blocks=4, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Linear(512, 2)
        init_resnet_weights(self)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def class_logits(self, image: torch.Tensor) -> torch.Tensor:
        """``fc1``'s two outputs (real, fake), as the reference model returns them."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(safe_input(image)))))
        x = self.layer2(self.layer1(x))
        return self.fc1(torch.flatten(self.avgpool(x), 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.class_logits(batch["image"])
        return {"logits": out[:, 1] - out[:, 0]}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's 2-class label-smoothed cross-entropy, on the logit difference."""
        target = batch["label"].float() * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        logits = self(batch)["logits"].float()
        return {"loss": F.binary_cross_entropy_with_logits(logits, target)}

    def load_weights(self, path: str | Path) -> None:
        """Load an official (or deepsift) weights file strictly; see the class docstring."""
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = read_state_dict(path)
        load_state_dict_strict(self, state, f"weights file {path}")
