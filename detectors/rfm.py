"""RFM: Representative Forgery Mining, an Xception trained with FAM-guided erasing.

After C. Wang and W. Deng, "Representative Forgery Mining for Fake Face
Detection", CVPR 2021. DeepfakeBench's port (commit 8a4a7bf):
``training/detectors/rfm_detector.py`` and ``training/config/detector/rfm.yaml``.

Each training batch is first passed, in eval mode, through the network to get
the Forgery Attention Map (FAM): ``|d(z1 - z0) / d x|``, maximum over the colour
channels. Around each of the 3 highest FAM points not already erased, a box of
random height and width in ``[1, 120]`` (at 256 px; scaled here with the input
size) with the point at a random offset inside is replaced by uniform noise in
[-1, 1]; the network is then trained with cross-entropy on the erased images.
Test time is a plain Xception.

Reference defaults (DeepfakeBench): 256 x 256 face crops, mean = std = 0.5,
ImageNet ``xception-b5690688.pth`` init, cross-entropy, Adam lr 2e-4 weight
decay 5e-4, batch 32. Differences: one fake logit (``z1 - z0`` of the
two-class head, which is what the FAM differentiates, so the FAM is the same);
ImageNet init only from a local file (``pretrained_file``).

The network and state dict are :class:`~detectors.xception.XceptionDetector`'s:
DeepfakeBench's ``rfm_best.pth`` (``backbone.*``, ``backbone.last_linear``)
loads strictly and brings DeepfakeBench's test-time input.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deepsift.core.checkpoint import load_state_dict_strict
from detectors.base import DEEPFAKEBENCH_ADAM, BackboneClassifier
from detectors.layers.heads import fill_num_batches_tracked
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

#: DeepfakeBench rfm.yaml: 256 x 256 faces (cv2 INTER_CUBIC), mean = std = 0.5, flip
DEFAULT_PREPROCESSING: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "hflip": 0.5}
#: DeepfakeBench's test-time input
DEEPFAKEBENCH_PROTOCOL: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "resize_to": 256}

#: DeepfakeBench: eH = eW = 120 at 256 px; 3 erased boxes per image
ERASE_MAX, ERASE_SIZE, ERASE_POINTS = 120, 256, 3


def forgery_attention_map(detector: BackboneClassifier, x: torch.Tensor) -> torch.Tensor:
    """``|d logit / d x|``, max over channels: (B, 1, H, W), computed in eval mode."""
    was_training = detector.training
    detector.eval()
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = detector({"image": inputs})["logits"]
        (grad,) = torch.autograd.grad(logits.sum(), inputs)
    detector.train(was_training)
    return grad.abs().amax(dim=1, keepdim=True)


def rfm_erase(x: torch.Tensor, fam: torch.Tensor, points: int = ERASE_POINTS) -> torch.Tensor:
    """Replace boxes around the ``points`` highest not-yet-erased FAM points by U(-1, 1)."""
    _, _, h, w = x.shape
    limit = max(1, round(ERASE_MAX * h / ERASE_SIZE))
    keep = torch.ones_like(fam)
    for i in range(x.shape[0]):
        order = torch.argsort(fam[i, 0].flatten(), descending=True)
        done = 0
        for index in order.tolist():
            if done >= points:
                break
            px, py = divmod(index, w)
            if keep[i, 0, px, py] == 0:
                continue
            mh, mw = random.randint(1, limit), random.randint(1, limit)
            sh, sw = random.randint(1, mh), random.randint(1, mw)
            top, bot = max(px - sh, 0), min(px + (mh - sh), h)
            lef, rig = max(py - sw, 0), min(py + (mw - sw), w)
            keep[i, :, top:bot, lef:rig] = 0
            done += 1
    return keep * x + (1 - keep) * (torch.rand_like(x) * 2 - 1)


class RFM(BackboneClassifier):
    """Xception (``backbone.*``, ``head``: 2048 -> 1) trained on FAM-guided erased faces.

    Args:
        pretrained_file: local ImageNet Xception weights (``xception-b5690688.pth``).
        drop_rate: dropout before the head (0 in DeepfakeBench).
        preprocessing, optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        drop_rate: float = 0.0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        preprocessing = merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing)
        backbone = xception_backbone(3, pretrained_file)
        super().__init__(
            backbone,
            XCEPTION_FEATURES,
            drop_rate,
            preprocessing,
            optimizer or DEEPFAKEBENCH_ADAM,
            scheduler,
        )

    def load_weights(self, path: str | Path) -> None:
        """Load ``rfm_best.pth`` (or another Xception layout) strictly."""
        source = f"weights file {path}"
        state, origin = xception_detector_state(read_xception_file(path), source)
        state = fill_num_batches_tracked(state, self.state_dict())
        load_state_dict_strict(self, state, source)
        log.info("RFM: loaded %s (%s layout)", path, origin)
        if origin.startswith("DeepfakeBench"):
            self.use_protocol("DeepfakeBench", DEEPFAKEBENCH_PROTOCOL, DEFAULT_PREPROCESSING)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        erased = rfm_erase(x, forgery_attention_map(self, x))
        logits = self({**batch, "image": erased})["logits"]
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        return {"loss": loss}
