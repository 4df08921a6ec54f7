"""Frame-averaging clip baseline: a timm image backbone per frame, logits averaged over T.

The usual video baseline of the face-forgery benchmarks (e.g. FaceForensics++,
Rössler et al., ICCV 2019, and DeepfakeBench, Yan et al., NeurIPS 2023, score a
video as the mean of per-frame scores): here the averaging is inside the model, so
one clip of T frames of one face track gives one logit and the clip pipeline
(``input_kind = "clip"``) trains and scores it end to end. No official weights:
deepsift's own baseline and the CPU-cheap clip detector of the video pipeline tests.
Backbone random-init (``pretrained=false``); input ``size`` px, ImageNet mean/std,
one flip / crop / JPEG quality per clip (:class:`detectors.layers.clips.ClipPreprocessing`),
BCE loss, AdamW (lr 1e-3, weight decay 1e-4).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from detectors.base import Detector
from detectors.layers.clips import ClipPreprocessing


class ClipMean(Detector):
    """Per-frame timm backbone with one logit, averaged over the clip's T frames."""

    input_kind = "clip"

    def __init__(
        self,
        backbone: str = "resnet18",
        clip_len: int = 8,
        clip_stride: int = 1,
        size: int = 112,
        resize: int | None = None,
        crop: str = "center",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        hflip: float = 0.5,
        jpeg_quality: tuple[int, int] | None = None,
        jpeg_p: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        import timm

        if optimizer is None:
            optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4)
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        self.clip_len = int(clip_len)
        self.clip_stride = int(clip_stride)
        self.clip_preprocessing = ClipPreprocessing(
            size, resize, crop, mean, std, hflip, jpeg_quality=jpeg_quality, jpeg_p=jpeg_p
        )
        self.backbone = timm.create_model(
            backbone, pretrained=False, num_classes=1, **backbone_kwargs
        )

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return {"clip": self.clip_preprocessing(sample["frames"], train=train)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = batch["clip"]
        b, t = clip.shape[:2]
        frame_logits = self.backbone(clip.flatten(0, 1)).view(b, t)
        return {"logits": frame_logits.mean(dim=1), "frame_logits": frame_logits}
