"""SPSL: the image's phase-only reconstruction as a fourth input channel of an Xception.

After H. Liu, X. Li, W. Zhou, Y. Chen, Y. He, H. Xue, W. Zhang and N. Yu,
"Spatial-Phase Shallow Learning: Rethinking Face Forgery Detection in Frequency
Domain", CVPR 2021 (arXiv:2103.01856). The authors released no code; the
reference implementation is DeepfakeBench's (github.com/SCLBD/DeepfakeBench,
``training/detectors/spsl_detector.py``, ``training/networks/xception.py``,
``training/config/detector/spsl.yaml``). Up-sampling, a step of nearly every
face-forgery pipeline, changes the phase spectrum more than the amplitude
spectrum; SPSL feeds the phase, as the image whose spectrum has the same phase
and unit magnitude, next to RGB, and argues that a *shallow* network (small
receptive field, local texture rather than semantics) transfers better.

This module also holds the helpers that read DeepfakeBench's Xception-based
checkpoints (:func:`split_deepfakebench_xception`), shared with
:mod:`detectors.srm_two_stream`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.heads import fake_logit_head
from detectors.layers.xception import (
    XCEPTION_FEATURES,
    is_deepfakebench_file,
    split_deepfakebench_xception,
    xception_backbone,
)
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
    train_variant,
)

log = logging.getLogger(__name__)

#: DeepfakeBench's test-time input: ``cv2.resize`` to 256 x 256 (``INTER_CUBIC``),
#: ``ToTensor``, ``Normalize(mean=0.5, std=0.5)``
DEFAULT_PREPROCESSING: dict[str, Any] = dict(DEEPFAKEBENCH_FACE_PREPROCESSING)

#: what ``spsl.yaml`` (``use_data_augmentation: true``) adds in training, where
#: :class:`Preprocessing` can express it: flip p=0.5, Gaussian blur p=0.5 (kernel
#: 3-7, i.e. OpenCV's default sigma 0.8-1.4), JPEG p=0.5 at quality 40-100
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = {
    "hflip": 0.5,
    "blur_prob": 0.5,
    "blur_sigma": (0.8, 1.4),
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}

#: the middle flow that DeepfakeBench's ``shallow_xception`` mode skips
MIDDLE_FLOW = tuple(f"block{i}" for i in range(4, 12))


def phase_only(image: torch.Tensor) -> torch.Tensor:
    """The phase-only reconstruction of each image's gray level: (B, C, H, W) -> (B, 1, H, W).

    ``gray = mean over channels`` (of the normalised input, as the reference),
    ``X = FFT2(gray)``, and the result is ``Re(IFFT2(exp(i * angle(X))))``: the
    image whose spectrum keeps ``X``'s phase with unit magnitude. Computed per
    image over the two spatial axes, as DeepfakeBench's ``fftn(gray, dim=(-1, -2))``
    (see :class:`SPSL` on its first release), in float64 for float64 inputs and in
    float32 otherwise (half-precision FFTs take power-of-two sizes only).
    """
    if image.dtype != torch.float64:
        image = image.float()
    gray = image.mean(dim=1, keepdim=True)
    phase = torch.angle(torch.fft.fft2(gray))
    return torch.fft.ifft2(torch.polar(torch.ones_like(phase), phase)).real


def spsl_backbone(pretrained_file: str | None) -> nn.Module:
    """A 4-channel Xception; from ImageNet weights, the stem as DeepfakeBench initialises it.

    DeepfakeBench loads the RGB ImageNet weights, then replaces ``conv1`` by a
    4-channel convolution whose every input channel holds the RGB kernels'
    mean (``conv1_data.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1)``).
    """
    model = xception_backbone(in_chans=4)
    if pretrained_file:
        state = xception_backbone(in_chans=3, pretrained_file=pretrained_file).state_dict()
        state["conv1.weight"] = state["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 4, 1, 1)
        model.load_state_dict(state, strict=True)
    return model


class SPSL(Detector):
    """RGB + phase-only image (4 channels) into Xception, one fake logit.

    State dict: ``backbone.*`` (timm ``legacy_xception``, ``conv1`` 4 -> 32)
    and ``head`` (2048 -> 1). :meth:`load_weights` reads DeepfakeBench's SPSL
    checkpoints strictly (``backbone.*`` with its 2-class ``last_linear``
    converted by :func:`detectors.layers.heads.fake_logit_head`, its unused ``adjust_channel``
    dropped) as well as this detector's own state dicts.

    Reference defaults (DeepfakeBench ``spsl.yaml`` and ``spsl_detector.py``):

    * input: face crops resized to 256 x 256 (``cv2.INTER_CUBIC``), mean = std
      = 0.5; training augmentation on (flip, rotation +-10 deg, Gaussian blur,
      isotropic resize, brightness/contrast/FancyPCA/HSV, JPEG 40-100);
    * model: ``gray = mean(image)`` of the normalised image, phase-only
      reconstruction, ``cat(image, phase)`` into Xception with ``inc: 4`` and
      ``mode: original``: the full-depth Xception. DeepfakeBench says so in
      its notes ("we have opted not to utilize the shallow Xception
      architecture"); its ``shallow_xception`` mode, the paper's shallow
      network as DeepfakeBench implements it, skips the eight middle-flow
      blocks (``block4``-``block11``): ``shallow=True`` here;
    * initialisation: ImageNet Xception (``xception-b5690688.pth``) with the
      4-channel stem of :func:`spsl_backbone`;
    * loss: cross-entropy on 2 logits; Adam lr 2e-4, betas (0.9, 0.999), eps
      1e-8, weight decay 5e-4, no schedule, batch 32, 10 epochs.

    Test-time input and phase are the reference's: ``cv2.resize`` ``INTER_CUBIC``
    on the uint8 crop (a copy when it is already 256 px), and the phase per image
    (DeepfakeBench's ``fftn(gray, dim=(-1, -2))`` since its v2, commit db3e348; its
    first release, up to 14eb0ce, called ``fftn(gray)`` over every axis, batch
    included, which mixes the images of a batch and equals this for a batch of
    one). Checked against DeepfakeBench's own code on ``spsl_best.pth``-layout
    weights (``tests/official/deepfakebench_spsl.json``, made by
    ``tests/official/make_deepfakebench_xception.py``). A DeepfakeBench file
    keeps (or, when a preprocessing was set, warns that it departs from) that
    protocol.

    Where this differs: one fake logit ``z_fake - z_real`` and binary
    cross-entropy, which equals the 2-class softmax cross-entropy on the
    logits' difference. Augmentation keeps flip, blur and JPEG (no rotation,
    isotropic resize or colour jitter) and runs through Pillow. ImageNet weights
    load only from a local ``pretrained_file`` (the reference always starts from
    them). With ``shallow=True`` blocks 4-11 are removed, so such a model has no
    keys for them.

    Args:
        pretrained_file: local ImageNet Xception state dict (Cadene's
            ``xception-b5690688.pth`` or timm's); ``None`` = random init.
        shallow: skip the middle flow (DeepfakeBench's ``shallow_xception``).
        train_preprocessing: fields of ``preprocessing`` that differ in training.
        preprocessing: test-time preprocessing over :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        shallow: bool = False,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        self.shallow = shallow
        self.backbone = spsl_backbone(pretrained_file)
        if shallow:
            for name in MIDDLE_FLOW:
                setattr(self.backbone, name, nn.Identity())
        self.head = nn.Linear(XCEPTION_FEATURES, 1)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        preprocessing = self.train_preprocessing if train else self.preprocessing
        return {"image": preprocessing(sample["image"], train=train)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        x = torch.cat([image, phase_only(image).to(image.dtype)], dim=1)
        return {"logits": self.head(self.backbone(x)).squeeze(1)}

    def load_weights(self, path: str | Path) -> None:
        """A DeepfakeBench SPSL checkpoint or this detector's state dict, strictly."""
        state = read_state_dict(path)
        if is_deepfakebench_file(state, "backbone."):
            state, head = split_deepfakebench_xception(state, "backbone.")
            state["head.weight"], state["head.bias"] = fake_logit_head(
                head["weight"], head["bias"], f"weights file {path}"
            )
            log.info("SPSL: read %s as a DeepfakeBench checkpoint (2-class head converted)", path)
            load_state_dict_strict(self, state, f"weights file {path}")
            self.use_protocol(
                "DeepfakeBench", DEEPFAKEBENCH_FACE_PREPROCESSING, DEFAULT_PREPROCESSING
            )
            return
        load_state_dict_strict(self, state, f"weights file {path}")
