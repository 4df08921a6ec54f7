"""AltFreezing: a 3D ResNet-50 trained with its spatial and temporal weights alternately frozen.

After Z. Wang, J. Bao, W. Zhou, W. Wang and H. Li, "AltFreezing for More General Video
Face Forgery Detection", CVPR 2023 (github.com/ZhendongWang6/AltFreezing,
``model/classifier/i3d_ori.py`` with ``setting/i3d_ori.yaml``, the alternate optimisers of
``slowfast/models/optimizer.py``). A spatio-temporal network tends to lean on one kind of
artefact only; freezing its temporal kernels for a while (so only spatial ones learn),
then its spatial kernels (so only temporal ones learn), makes it learn both.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision.transforms import v2

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.clips import (
    channels_first_clip,
    clip_sampling,
    cv2_clip_preprocessing,
    cv2_normalised_clip,
)
from detectors.layers.slowfast import STAGE_DEPTH, I3DResNet
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

Phase = Literal["spatial", "temporal"]

#: ``demo.py``: 224 x 224 aligned face crops (``imsize`` 224), ImageNet mean/std on 0-255
#: values (= on [0, 1] values)
DEFAULT_PREPROCESSING: dict[str, Any] = cv2_clip_preprocessing(
    "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
)


#: ``i3d_ori.yaml`` ``SOLVER``: SGD lr 0.05, momentum 0.9, weight decay 1e-4
_sgd = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-4)


def spatial_temporal_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the (spatial, temporal) parameters, as the authors' ``temporal_spatial_sep``.

    A ``Conv3d`` with kernel 1 x k x k (k > 1) is spatial, k x 1 x 1 (k > 1) temporal, any
    other (1 x 1 x 1, the 5 x 7 x 7 stem) both; every ``BatchNorm3d``/``Linear`` and the
    head (``head.projection``, which the authors add to both optimisers by name) are in both
    groups, so they learn in both phases.
    """
    spatial: list[str] = []
    temporal: list[str] = []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if "head" in name:
            spatial += own
            temporal += own
        elif isinstance(module, nn.Conv3d):
            kt, kh, _ = module.kernel_size
            if kt == 1 and kh > 1:
                spatial += own
            elif kt > 1 and kh == 1:
                temporal += own
            else:
                spatial += own
                temporal += own
        elif isinstance(module, nn.BatchNorm3d | nn.Linear):
            spatial += own
            temporal += own
    return spatial, temporal


class AltFreezing(Detector):
    """AltFreezing's ``I3D8x8``: ``resnet`` (an :class:`I3DResNet`), one fake logit per clip.

    Reference defaults (``model/classifier/i3d_ori.py``'s SlowFast ``config_text``,
    ``setting/i3d_ori.yaml``, ``root_setting.yaml``, ``demo.py``):

    * model: SlowFast ``ResNet``, ``ARCH: i3d``, ``DEPTH: 50``, ``WIDTH_PER_GROUP`` 64,
      temporal kernels stem 5, res2 [3], res3 [3, 1], res4 [3, 1], res5 [1, 3], a temporal
      max-pool 2 after res2, ``DROPOUT_RATE`` 0.5, ``NUM_CLASSES`` 1 (``HEAD_ACT: sigmoid``
      is configured but commented out in their ``head_helper.py``: the model returns the
      logit; ``demo.py`` applies ``sigmoid``) -- the same network as DeepfakeBench's I3D;
    * input: clips of ``clip_size`` 32 consecutive frames (``NUM_FRAMES`` set from it),
      faces aligned and cropped to 224 x 224, ImageNet mean/std on 0-255 values,
      (B, C, T, H, W); ``demo.py`` thresholds the sigmoid at 0.04;
    * augmentation (``aug``, one draw per clip): colour jitter 0.4 p 0.8, Gaussian blur
      p 0.05, Gaussian noise p 0.1, JPEG quality 60-100, random-size degradation 64-317 px,
      erasing (``earse``) and the paper's video-level augmentations (clip-level
      cut-out/crop, "strong_black" erasing, mask distortion, colour match);
    * optimiser: SGD lr 0.05, momentum 0.9, weight decay 1e-4 (0 for BN), cosine schedule
      with 10 warm-up epochs from 0.005; batch 16; ``ALTER_FREQ`` 20: two optimisers, one
      over the temporal-related, one over the spatial-related parameters
      (``construct_optimizer_altertraining``), stepped in alternation -- the training loop
      that switches them is not in the released code.

    The freezing schedule here: :meth:`set_phase` freezes one group (``requires_grad``
    False) and :meth:`training_step` advances a step counter, switching the phase every
    ``alter_freq`` training steps (starting with ``alter_start``); ``alter_freq`` 0 trains
    everything at once. Groups are :func:`spatial_temporal_groups`.

    Where this differs: the loss is ``binary_cross_entropy_with_logits`` on the logit
    (the released trainer is not public; BCE is the paper's); the head averages the ``s5`` map over all
    positions (SlowFast's fixed ``AvgPool3d`` equals it at 32 frames and 224 px); one
    optimiser with frozen groups replaces the two alternating optimisers (the parameters a
    phase updates are the same; momentum buffers are shared), with one weight decay (the
    authors' is 0 for BN); the augmentation is
    torchvision's flip, colour jitter, blur and JPEG applied identically to all T frames,
    without the paper's erasing/cut-out/mask-distortion augmentations; the alternation unit
    (steps vs. epochs) of ``ALTER_FREQ`` is unconfirmed (the training loop is unreleased).

    :meth:`load_weights` reads the released ``model.pth`` (``I3D8x8.state_dict()``:
    ``resnet.s1.pathway0_stem.conv.weight`` ..., optionally under ``state_dict``, with
    ``module.``/``network.`` prefixes as the authors' ``load`` strips) strictly.
    The outputs match the authors' SlowFast ``ResNet`` (commit f76b061) within 2.4e-6 in
    logit at full size (32 x 224 x 224, float32, seeded weights;
    ``tests/official/make_altfreezing.py``, ``tests/official/video/altfreezing.json``).

    Args:
        clip_len: frames per clip (``clip_size`` 32).
        clip_stride: frame step within a clip (1: consecutive frames).
        blocks: bottlenecks per stage (3, 4, 6, 3); smaller for tests.
        width_per_group: channels of the stem (64); smaller for tests.
        dropout: before ``head.projection``.
        alter_freq: training steps per phase (0: no freezing).
        alter_start: the phase of the first ``alter_freq`` steps.
        train_augment: the training augmentation (off: the eval transform in training).
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 32,
        clip_stride: int = 1,
        blocks: Sequence[int] = STAGE_DEPTH[50],
        width_per_group: int = 64,
        dropout: float = 0.5,
        alter_freq: int = 20,
        alter_start: Phase = "spatial",
        train_augment: bool = True,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer or _sgd,
            scheduler=scheduler,
        )
        self.clip_len, self.clip_stride = clip_sampling(clip_len, clip_stride)
        if alter_freq < 0 or alter_start not in ("spatial", "temporal"):
            raise UserError(
                "detector.alter_freq must be >= 0 and detector.alter_start 'spatial' or "
                f"'temporal', got {alter_freq}, {alter_start!r}"
            )
        self.alter_freq = int(alter_freq)
        self.alter_start: Phase = alter_start
        self.train_augment = bool(train_augment)
        self.resnet = I3DResNet(blocks, width_per_group, num_classes=1, dropout=dropout)
        self.phase: Phase | None = None
        self._steps = 0
        self._augment = v2.Compose(
            [
                v2.RandomHorizontalFlip(0.5),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4)], p=0.8),
                v2.RandomApply([v2.GaussianBlur(5, (0.1, 2.0))], p=0.05),
                v2.JPEG((60, 100)),
            ]
        )

    # -- data ------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL RGB face crops) -> ``{"clip": (T, 3, size, size)}``."""
        augment = self._augment if train and self.train_augment else None
        clip = cv2_normalised_clip(
            sample.get("frames"),
            self.preprocessing.size,
            "bilinear",
            self.preprocessing.mean,
            self.preprocessing.std,
            augment,
            "AltFreezing",
        )
        return {"clip": clip}

    # -- model -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = channels_first_clip(batch["clip"], "AltFreezing")
        return {"logits": self.resnet(clip)[:, 0]}

    # -- AltFreezing ---------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        """``{"spatial": [...], "temporal": [...]}`` parameter names (see :func:`spatial_temporal_groups`)."""
        spatial, temporal = spatial_temporal_groups(self)
        return {"spatial": spatial, "temporal": temporal}

    def set_phase(self, phase: Phase | None) -> None:
        """Train only the ``phase`` group (and the head); ``None`` unfreezes everything."""
        groups = self.parameter_groups()
        if phase is not None and phase not in groups:
            raise UserError(
                f"AltFreezing phase must be 'spatial', 'temporal' or None, got {phase!r}"
            )
        train = set(groups[phase]) if phase else None
        frozen = set(groups["spatial"]) | set(groups["temporal"])
        for name, param in self.named_parameters():
            param.requires_grad_(train is None or name in train or name not in frozen)
        self.phase = phase

    def phase_at(self, step: int) -> Phase | None:
        """The phase of training step ``step`` (0-based): ``alter_start`` first, switching every ``alter_freq``."""
        if self.alter_freq == 0:
            return None
        other: Phase = "temporal" if self.alter_start == "spatial" else "spatial"
        return self.alter_start if (step // self.alter_freq) % 2 == 0 else other

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        phase = self.phase_at(self._steps)
        if phase != self.phase:
            self.set_phase(phase)
        self._steps += 1
        return super().training_step(batch)

    # -- weights -----------------------------------------------------------------
    def load_weights(self, path: str | Path) -> None:
        """The released ``model.pth`` (``I3D8x8`` state dict) or a deepsift one, strictly."""
        source = f"weights file {path}"
        state = strip_prefixes(read_state_dict(path), ("module.", "network."))
        if not any(k.startswith("resnet.") for k in state):
            raise UserError(
                f"{source} is not an AltFreezing file: no resnet.* keys as in the released "
                "model.pth (I3D8x8.state_dict())"
            )
        load_state_dict_strict(self, state, source)
        log.info("AltFreezing: loaded %s", path)
