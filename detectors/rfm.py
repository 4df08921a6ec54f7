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
two-class head, which is what the paper's FAM differentiates, so the FAM is the
same); ImageNet init only from a local file (``pretrained_file``).

DeepfakeBench's FAM is not the paper's: ``cal_fam`` unpacks ``_, output =
self.backbone(inputs)``, and its Xception returns ``(logits, features)``, so it
differentiates channels 1 - 0 of the last (rectified) feature map, not the logits (the original
code's model returns the logits second). ``fam_target="deepfakebench"`` reproduces it;
the default is the paper's. With either, :func:`rfm_erase` then erases exactly as
DeepfakeBench's ``apply_rfm_augmentation`` (same points, boxes and noise for the same
``random`` and ``torch`` seeds: ``tests/test_rfm.py`` against
``tests/official/rfm/rfm_dfb.json``, made by ``tests/official/make_rfm.py`` from their
code). The test-time network is DeepfakeBench's Xception (``rfm.yaml``'s
``backbone_config`` is ``xception.yaml``'s, and ``RFMDetector.features``/``classifier``
are ``XceptionDetector``'s), verified by ``deepfakebench_xception.json``.

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

import numpy as np
import torch
import torch.nn.functional as F

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
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


FAM_TARGETS = ("logit", "deepfakebench")


def forgery_attention_map(
    detector: BackboneClassifier, x: torch.Tensor, target: str = "logit"
) -> torch.Tensor:
    """The FAM ``|d target / d x|``, max over channels: (B, 1, H, W), computed in eval mode.

    ``target="logit"``: the fake logit ``z1 - z0`` (the paper's). ``"deepfakebench"``:
    what DeepfakeBench's ``RFMDetector.cal_fam`` differentiates at commit 8a4a7bf:
    ``_, output = self.backbone(inputs)`` takes the *second* output of its Xception,
    which is the (B, 2048, h, w) feature map, not the logits; its ``classifier`` applies
    an in-place ReLU to that map first, so the target is ``sum(relu(features)[:, 1] -
    relu(features)[:, 0])``: timm's ``forward_features`` here.
    """
    if target not in FAM_TARGETS:
        raise UserError(f"fam_target must be one of {', '.join(FAM_TARGETS)}, not {target!r}")
    was_training = detector.training
    detector.eval()
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if target == "logit":
            value = detector({"image": inputs})["logits"].sum()
        else:
            features = detector.backbone.forward_features(inputs)
            value = (features[:, 1] - features[:, 0]).sum()
        (grad,) = torch.autograd.grad(value, inputs)
    detector.train(was_training)
    return grad.abs().amax(dim=1, keepdim=True)


def rfm_erase(x: torch.Tensor, fam: torch.Tensor, points: int = ERASE_POINTS) -> torch.Tensor:
    """Replace boxes around the ``points`` highest not-yet-erased FAM points by U(-1, 1).

    As DeepfakeBench's ``apply_rfm_augmentation``: points in the order of NumPy's
    ``argsort`` reversed (so ties fall as there), box sides ``randint(1, 120)`` and
    offsets ``randint(1, side)`` from Python's ``random`` in that order, the noise one
    ``torch.rand_like`` of the whole batch.
    """
    _, _, h, w = x.shape
    limit = max(1, round(ERASE_MAX * h / ERASE_SIZE))
    keep = torch.ones_like(fam)
    for i in range(x.shape[0]):
        order = np.argsort(fam[i].detach().cpu().numpy().flatten())[::-1]
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
        fam_target: what the FAM differentiates: ``"logit"`` (the paper's, default) or
            ``"deepfakebench"`` (DeepfakeBench's ``cal_fam``: feature channels 1 - 0,
            see :func:`forgery_attention_map`), to retrain as ``rfm_best.pth`` was.
        preprocessing, optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        drop_rate: float = 0.0,
        fam_target: str = "logit",
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if fam_target not in FAM_TARGETS:
            raise UserError(
                f"fam_target must be one of {', '.join(FAM_TARGETS)}, not {fam_target!r}"
            )
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
        self.fam_target = fam_target

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
        erased = rfm_erase(x, forgery_attention_map(self, x, self.fam_target))
        logits = self({**batch, "image": erased})["logits"]
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        return {"loss": loss}
