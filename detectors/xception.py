"""Xception on face crops: the FaceForensics++ baseline.

After A. Rössler, D. Cozzolino, L. Verdoliva, C. Riess, J. Thies and
M. Nießner, "FaceForensics++: Learning to Detect Manipulated Facial Images",
ICCV 2019 (code: github.com/ondyari/FaceForensics, ``classification/``), on
F. Chollet's Xception (CVPR 2017) in the Cadene/``pretrainedmodels`` port,
which is timm's ``legacy_xception``: the same modules under the same names
(``conv1``, ``bn1``, ``conv2``, ``bn2``, ``block1`` .. ``block12`` with
``rep``/``skip``/``skipbn``, ``conv3``, ``bn3``, ``conv4``, ``bn4``).

Reference defaults:

* FaceForensics++ (``network/models.py``, ``dataset/transform.py``,
  ``detect_from_video.py``): ``TransferModel`` = ImageNet Xception
  (``xception-b5690688.pth``, ``pointwise`` weights unsqueezed to 1x1) whose
  ``last_linear`` becomes ``Linear(2048, 2)`` (``Sequential(Dropout, Linear)``
  when a dropout is given; ``model_selection`` gives none); face crops of
  1.3x the dlib box, ``Resize((299, 299))``, ``Normalize([0.5] * 3, [0.5] * 3)``;
  softmax, class 1 = fake. The released models (``full_c23.p``, ``full_raw.p``,
  ``full_c40.p``) are whole pickled ``TransferModel`` objects (the code
  ``torch.load``-s them as the model). ``detect_from_video.py`` never calls
  ``model.eval()``: it runs a pickle in the mode it was saved in; deepsift always
  evaluates in eval mode. Checked against their ``preprocess_image`` and model on
  such a pickle (``tests/official/faceforensics_xception_pickle.json``, made by
  ``tests/official/make_faceforensics.py``); the default test-time input here is
  theirs (``Resize((299, 299))``: Pillow's bilinear), and an FF++ file keeps it
  (a preprocessing the user set wins, with a warning).
* DeepfakeBench (github.com/SCLBD/DeepfakeBench, ``training/detectors/
  xception_detector.py``, ``networks/xception.py``, ``config/detector/
  xception.yaml``): the same network (plus an ``adjust_channel`` 2048 -> 512
  conv/BN that mode ``original`` builds but never runs), ImageNet init from
  ``xception-b5690688.pth`` (``fc`` dropped, loaded non-strictly),
  ``last_linear`` ``Linear(2048, 2)``, cross-entropy; 256 px inputs,
  mean = std = 0.5; Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay
  5e-4, no schedule, 10 epochs, batch 32; augmentation: flip 0.5, Gaussian blur
  (kernel 3-7) 0.5, one of brightness/contrast, FancyPCA, hue/saturation 0.5,
  JPEG quality 40-100 0.5. Its released ``xception_best.pth`` is a state dict
  of ``XceptionDetector``: ``backbone.conv1.weight`` .. ``backbone.bn4.*``,
  ``backbone.adjust_channel.*`` and ``backbone.last_linear.weight`` (2, 2048),
  ``module.``-prefixed when saved from DDP.

Where this differs: one fake logit instead of two softmax classes
(``logit_fake = z1 - z0`` gives the same probability; 2-class heads load as
``w[1] - w[0]``, ``b[1] - b[0]``), trained with binary cross-entropy, which on
``z1 - z0`` is the two-class cross-entropy; 299 px inputs (the paper and
Xception's native size); a DeepfakeBench file switches to DeepfakeBench's
test-time input by itself (``load_rgb``: 256 px, ``cv2.resize`` ``INTER_CUBIC`` of
the uint8 crop, a copy when it is already 256 px; a preprocessing the user set
still wins, with a warning), checked against DeepfakeBench's own code in
``tests/official/deepfakebench_xception.json``; ``adjust_channel`` is not built (DeepfakeBench files carry it, and it
is dropped on loading); the augmentation has DeepfakeBench's flip, blur and
JPEG but not its colour jitter, and blurs/compresses before resizing; the
ImageNet start needs a local file (``pretrained_file``): nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

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

#: FaceForensics++'s test transform: Resize((299, 299)) (bilinear), ToTensor, Normalize(0.5, 0.5);
#: the augmentation fields (training only) are DeepfakeBench's
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 299,
    "resize": "square",
    "interpolation": "bilinear",
    "crop": "none",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "hflip": 0.5,
    "blur_prob": 0.5,
    "blur_sigma": (0.8, 1.4),
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}

#: DeepfakeBench's test-time input (``load_rgb``: ``cv2.resize`` to 256 x 256,
#: ``INTER_CUBIC``); ``resize_to`` named, or the 299 of the defaults would stay
DEEPFAKEBENCH_PROTOCOL: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "resize_to": 256}

#: FaceForensics++'s ``xception_default_data_transforms['test']`` (the default here)
FACEFORENSICS_PROTOCOL: dict[str, Any] = {
    k: DEFAULT_PREPROCESSING[k] for k in ("size", "resize", "interpolation", "crop", "mean", "std")
} | {"resize_to": 299, "resize_backend": "pil"}


class XceptionDetector(BackboneClassifier):
    """ImageNet Xception, global average pooling, one fake logit (``head``: 2048 -> 1).

    State dict: ``backbone.*`` (timm ``legacy_xception``, the Cadene names)
    and ``head.weight``/``head.bias``; 20,809,001 parameters, which is the
    FaceForensics++ ``TransferModel`` (20,811,050) less one 2048 + 1 row of
    its 2-class head. :meth:`load_weights` reads DeepfakeBench's
    ``xception_best.pth``, the FaceForensics++ pickled models (``full_c23.p``
    ..., read without running their code: :mod:`detectors.layers.pickled_module`),
    icpr2020dfdc's ``Xception_*`` weights and deepsift checkpoints, strictly.

    Args:
        pretrained_file: local ImageNet Xception weights (``xception-b5690688.pth``,
            the file both references start from); ``None``: random init.
        drop_rate: dropout before the head (FF++ ``TransferModel(dropout=...)``; 0 in
            both references' defaults).
        preprocessing, optimizer, scheduler: see :class:`Detector`; default optimiser
            DeepfakeBench's Adam (lr 2e-4, weight decay 5e-4).
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        drop_rate: float = 0.0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        preprocessing = merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing)
        backbone = xception_backbone(3, pretrained_file)
        super().__init__(
            backbone, XCEPTION_FEATURES, drop_rate, preprocessing, optimizer, scheduler
        )

    def load_weights(self, path: str | Path) -> None:
        """Load a community or deepsift Xception file strictly (see the class docstring)."""
        source = f"weights file {path}"
        state, origin = xception_detector_state(read_xception_file(path), source)
        state = fill_num_batches_tracked(state, self.state_dict())
        load_state_dict_strict(self, state, source)
        log.info("Xception: loaded %s (%s layout)", path, origin)
        if origin.startswith("DeepfakeBench"):
            self.use_protocol("DeepfakeBench", DEEPFAKEBENCH_PROTOCOL, DEFAULT_PREPROCESSING)
        elif origin.startswith("FaceForensics++"):
            self.use_protocol("FaceForensics++", FACEFORENSICS_PROTOCOL, DEFAULT_PREPROCESSING)
