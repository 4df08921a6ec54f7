"""TALL: Thumbnail Layout for deepfake video detection.

After Y. Xu, J. Liang, G. Jia, Z. Yang, Y. Zhang and R. He, "TALL: Thumbnail Layout
for Deepfake Video Detection", ICCV 2023 (code: github.com/rainy-xu/TALL4Deepfake;
DeepfakeBench ``training/detectors/tall_detector.py``).

The T face crops of one track are resized to a common size and tiled row-major into
one ``rows x cols`` thumbnail image (T = 4 -> 2 x 2 grid of 112 px frames = 224 px),
which an image backbone (Swin-B, ``swin_base_patch4_window7_224``) classifies.

Reference defaults (paper / DeepfakeBench ``tall.yaml``): clip of 4 frames (the paper
samples 4 clips of 4 frames per video; DeepfakeBench ``clip_size: 4``), 224 px
thumbnail, ImageNet normalisation, ImageNet-pretrained Swin-B, random flip and
crop applied to the whole clip, plus a random-masked patch per frame during training
(paper's "thumbnail masking"); cross-entropy on two classes; optimiser AdamW-style
(TALL4Deepfake: lr 1.5e-5 ... ; DeepfakeBench: Adam lr 2e-4, batch 16 (unconfirmed here).

Where deepsift differs: one fake logit trained with binary cross-entropy (equivalent to
the two-class cross-entropy on ``z_fake - z_real``); the thumbnail masking is not
implemented; the backbone is timm's Swin (random init by default, an ImageNet start
from a local ``pretrained_file``); official TALL4Deepfake / DeepfakeBench checkpoints
are NOT yet loadable (their layouts were not checked offline).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def thumbnail(clip: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, T, C, H, W) with T = rows * cols -> (B, C, rows * H, cols * W), frames row-major."""
    b, t, c, h, w = clip.shape
    if t != rows * cols:
        raise ValueError(f"TALL: a clip of {t} frames does not fill a {rows} x {cols} grid")
    x = clip.reshape(b, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * h, cols * w)


class TALL(Detector):
    """Thumbnail layout of ``clip_len`` frames on a timm image backbone, one fake logit.

    Args:
        clip_len: frames per clip (T, 4 in the paper); must be ``rows * cols``.
        clip_stride: frame step between sampled frames.
        rows: grid rows (``None``: ``sqrt(clip_len)``).
        frame_size: side of each tiled frame (112: a 224 px thumbnail for T = 4).
        model_name: timm backbone (``swin_base_patch4_window7_224``).
        model_kwargs: extra timm arguments (tests use a tiny Swin).
        pretrained_file: local ImageNet weights of the backbone (timm layout); ``None``:
            random init; nothing is downloaded.
        hflip: probability of one horizontal flip of the whole clip (training).
        crop_scale: random-resized-crop scale range, one crop for all frames (training).
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 4,
        clip_stride: int = 1,
        rows: int | None = None,
        frame_size: int = 112,
        model_name: str = "swin_base_patch4_window7_224",
        model_kwargs: dict[str, Any] | None = None,
        pretrained_file: str | None = None,
        hflip: float = 0.5,
        crop_scale: Sequence[float] = (0.8, 1.0),
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(None, optimizer or DEEPFAKEBENCH_ADAM, scheduler)
        self.clip_len = int(clip_len)
        self.clip_stride = int(clip_stride)
        self.rows = int(rows) if rows else round(math.sqrt(self.clip_len))
        if self.clip_len % self.rows:
            raise UserError(f"TALL: clip_len={clip_len} is not a multiple of rows={self.rows}")
        self.cols = self.clip_len // self.rows
        self.frame_size = int(frame_size)
        kwargs = dict(model_kwargs or {})
        kwargs.setdefault("img_size", (self.rows * self.frame_size, self.cols * self.frame_size))
        self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        self.head = nn.Linear(self.backbone.num_features, 1)
        if pretrained_file:
            self._load_backbone(pretrained_file)
        self.hflip = float(hflip)
        self.crop_scale = tuple(float(s) for s in crop_scale)

    def _load_backbone(self, path: str) -> None:
        if not Path(path).is_file():
            raise UserError(f"TALL: detector.pretrained_file={path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        load_state_dict_strict(self.backbone, state, f"detector.pretrained_file={path}")

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL crops) -> ``{"clip": (T, 3, frame_size, frame_size)}``.

        Training applies one flip and one resized crop to all T frames.
        """
        frames = sample["frames"]
        if len(frames) != self.clip_len:
            raise UserError(
                f"TALL: got {len(frames)} frames, the config says clip_len={self.clip_len}"
            )
        size = [self.frame_size, self.frame_size]
        clip = torch.stack([TF.to_dtype(TF.to_image(f), torch.float32, scale=True) for f in frames])
        if train:
            aug = v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True),
                    v2.RandomHorizontalFlip(self.hflip),
                ]
            )
            clip = aug(clip)
        else:
            clip = TF.resize(clip, size, antialias=True)
        return {"clip": TF.normalize(clip, IMAGENET_MEAN, IMAGENET_STD)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = thumbnail(batch["clip"], self.rows, self.cols)
        return {"logits": self.head(self.backbone(image)).squeeze(-1)}
