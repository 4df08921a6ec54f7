"""FreqNet: high-frequency representations and frequency convolutions on a small ResNet trunk.

After C. Tan, Y. Zhao, S. Wei, G. Gu, P. Liu and Y. Wei, "Frequency-Aware
Deepfake Detection: Improving Generalizability through Frequency Space
Learning" (FreqNet), AAAI 2024, arXiv:2403.07240. Official code and weights:
github.com/chuangchuangtan/FreqNet-DeepfakeDetection (``networks/freqnet.py``,
``test.py``, ``4-classes-freqnet.pth``). The detector never sees pixels or
features as they are: it keeps only their high frequencies (FFT, the centred
low-frequency band zeroed, inverse FFT), over space and over channels, and
learns 1x1 convolutions on the real and imaginary parts of the spectra.
"""

from __future__ import annotations

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
from detectors.layers.forensynths import (
    FORENSYNTHS_PREPROCESSING,
    FORENSYNTHS_TRAIN_PREPROCESSING,
)
from detectors.layers.resnet import bottleneck_layer, init_resnet_weights
from detectors.preprocessing import (
    Preprocessing,
    merge_preprocessing,
    train_variant,
)

#: the official test-time and training preprocessing: ForenSynths' (see
#: :mod:`detectors.layers.forensynths`)
DEFAULT_PREPROCESSING: dict[str, Any] = dict(FORENSYNTHS_PREPROCESSING)
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = dict(FORENSYNTHS_TRAIN_PREPROCESSING)

#: the band the reference zeroes: ``scale=4`` keeps all but the central half of each axis
SCALE = 4


def _full_precision(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run a spectral step in float32 (float64 stays float64) with autocast off: the
    reference runs in float32, and half-precision FFTs (cuFFT) only take power-of-two
    sizes."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args: Any) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(x if x.dtype == torch.float64 else x.float(), *args)

    return wrapper


@_full_precision
def high_freq_spatial(x: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """``hfreqWH``: zero the centred low band of the 2-D spectrum, back to space, real part, ReLU.

    Orthonormal FFT over (H, W); after ``fftshift`` the rows ``h//2 - h//scale``
    to ``h//2 + h//scale`` (excluded) and the same columns are set to zero.
    """
    if scale <= 2:
        raise ValueError(f"scale must be > 2, got {scale}")
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    h, w = spectrum.shape[-2:]
    spectrum = spectrum.clone()
    spectrum[
        ..., h // 2 - h // scale : h // 2 + h // scale, w // 2 - w // scale : w // 2 + w // scale
    ] = 0
    spectrum = torch.fft.ifftshift(spectrum, dim=(-2, -1))
    return F.relu(torch.fft.ifft2(spectrum, norm="ortho").real)


@_full_precision
def high_freq_channels(x: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """``hfreqC``: the same along the channel axis (1-D FFT over C)."""
    if scale <= 2:
        raise ValueError(f"scale must be > 2, got {scale}")
    spectrum = torch.fft.fftshift(torch.fft.fft(x, dim=1, norm="ortho"), dim=1)
    c = spectrum.shape[1]
    spectrum = spectrum.clone()
    spectrum[:, c // 2 - c // scale : c // 2 + c // scale] = 0
    spectrum = torch.fft.ifftshift(spectrum, dim=1)
    return F.relu(torch.fft.ifft(spectrum, dim=1, norm="ortho").real)


@_full_precision
def frequency_conv(x: torch.Tensor, real_conv: nn.Module, imag_conv: nn.Module) -> torch.Tensor:
    """The frequency convolution layer (FCL): 1x1 convolutions on the real and imaginary
    parts of the centred 2-D spectrum, then back to space, real part, ReLU."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    spectrum = torch.complex(real_conv(spectrum.real), imag_conv(spectrum.imag))
    spectrum = torch.fft.ifftshift(spectrum, dim=(-2, -1))
    return F.relu(torch.fft.ifft2(spectrum, norm="ortho").real)


def _conv1x1(inplanes: int, planes: int) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)


class FreqNet(Detector):
    """FreqNet with the reference's module names, so ``4-classes-freqnet.pth`` loads strictly.

    Forward (``networks/freqnet.py``): high-frequency image (HFRI) -> 1x1 conv
    ``weight1``/``bias1`` 3 -> 64 + ReLU -> channel high-pass (HFRFC) -> FCL
    (``realconv1``/``imagconv1``) -> spatial high-pass (HFRFS) -> 1x1 conv
    ``weight2`` stride 2 + ReLU -> HFRFC -> FCL 2 -> max-pool -> ResNet-50
    ``layer1`` (64 -> 256) -> HFRFS -> 1x1 ``weight3`` + ReLU -> FCL 3 -> HFRFS
    -> 1x1 ``weight4`` stride 2 + ReLU -> FCL 4 -> ResNet-50 ``layer2`` (256 ->
    512) -> global average pooling -> ``fc1`` 512 -> 1. The high-passes use
    ``scale=4`` (the central half of each axis zeroed), orthonormal FFTs. The
    reference model has 1,850,433 parameters; so does this one.

    Reference defaults (github.com/chuangchuangtan/FreqNet-DeepfakeDetection):

    * model: the raw 1x1 kernels ``weight1..4``/``bias1..4`` drawn from
      ``torch.randn`` (std 1); every ``nn.Conv2d`` Kaiming-normal (fan-out),
      BatchNorm weight 1 and bias 0; no ImageNet weights;
    * training (``networks/trainer.py``, ``train.py``, README command):
      ``BCEWithLogitsLoss``; Adam, lr 1e-3 (README ``--lr 0.001``), betas
      (0.9, 0.999); batch size 32; 85 epochs (``--niter 85``); the learning
      rate multiplied by 0.8 at the end of epochs 11, 21, ..., 81
      (``epoch % delr_freq == 0`` counted from 0, ``--delr_freq 10``);
      ``Resize((256, 256))`` bilinear, ``RandomCrop(224)``,
      ``RandomHorizontalFlip``, ImageNet ``Normalize``; no blur or JPEG;
    * test (``test.py``): ForenSynths ``Resize((256, 256))`` and no crop;
      GANGen-Detection no resize and no crop; ImageNet ``Normalize``;
      ``model.load_state_dict(torch.load(path), strict=True)`` (a plain state
      dict; ``{'model': ...}`` training checkpoints with ``module.`` prefixes
      load as well).

    Where this differs: the reference creates its raw kernels on the GPU
    (``.cuda()``) and applies ReLU in place on the real view of a complex
    tensor; here they live on the module's device and every step is out of
    place (the same numbers); the spectral steps run in float32 even under
    mixed precision (half-precision FFTs take only power-of-two sizes). Images are
    read by :func:`deepsift.core.images.load_rgb` (transparency composited on white).
    The default test-time input is the reference's ForenSynths protocol, checked
    against the authors' ``freqnet``, ``test.py`` loading and ``data`` loader on a
    plain state dict (``tests/official/freqnet.json``, made by
    ``tests/official/make_cnndetection.py``). The schedule in
    ``configs/detector/freqnet.yaml`` reproduces the reference's decay for its
    85 epochs; batch size and epochs are the trainer's
    (``trainer.batch_size=32 trainer.max_epochs=85``).

    Args:
        train_preprocessing: fields of ``preprocessing`` that differ in training
            (default: a random 224 px crop of the resized image).
        preprocessing: test-time preprocessing, fields overriding
            :data:`DEFAULT_PREPROCESSING` (``{"resize": "none"}`` for the
            GANGen-Detection protocol; then score one image size per batch).
        optimizer, scheduler: see :class:`Detector`; default Adam(lr 1e-3,
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
            optimizer = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.9, 0.999))
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        for i, (cin, cout) in enumerate(((3, 64), (64, 64), (256, 256), (256, 256)), start=1):
            setattr(self, f"weight{i}", nn.Parameter(torch.randn(cout, cin, 1, 1)))
            setattr(self, f"bias{i}", nn.Parameter(torch.randn(cout)))
            setattr(self, f"realconv{i}", _conv1x1(cout, cout))
            setattr(self, f"imagconv{i}", _conv1x1(cout, cout))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = bottleneck_layer(64, 64, blocks=3, stride=1)
        self.layer2 = bottleneck_layer(256, 128, blocks=4, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Linear(512, 1)
        init_resnet_weights(self)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def _pointwise(self, x: torch.Tensor, i: int, stride: int) -> torch.Tensor:
        weight, bias = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
        return F.relu(F.conv2d(x, weight, bias, stride=stride))

    def _fcl(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return frequency_conv(x, getattr(self, f"realconv{i}"), getattr(self, f"imagconv{i}"))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        x = self._pointwise(high_freq_spatial(x), 1, stride=1)  # HFRI + 1x1 conv
        x = self._fcl(high_freq_channels(x), 1)  # HFRFC + FCL
        x = self._pointwise(high_freq_spatial(x), 2, stride=2)  # HFRFS + 1x1 conv
        x = self._fcl(high_freq_channels(x), 2)  # HFRFC + FCL
        x = self.layer1(self.maxpool(x))
        x = self._fcl(self._pointwise(high_freq_spatial(x), 3, stride=1), 3)
        x = self._fcl(self._pointwise(high_freq_spatial(x), 4, stride=2), 4)
        x = self.layer2(x)
        x = torch.flatten(self.avgpool(x), 1)
        return {"logits": self.fc1(x).squeeze(1)}

    def load_weights(self, path: str | Path) -> None:
        """Load an official (or deepsift) weights file strictly: a plain state dict or a
        ``{'model': ...}`` training checkpoint, with or without ``module.`` prefixes."""
        load_state_dict_strict(self, read_state_dict(path), f"weights file {path}")
