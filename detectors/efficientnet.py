"""EfficientNet-B4 on face crops: the DFDC-era baseline.

After M. Tan and Q. Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019, as used for face-forgery detection
by N. Bonettini, E. D. Cannas, S. Mandelli, L. Bondi, P. Bestagini and
S. Tubaro, "Video Face Manipulation Detection Through Ensemble of CNNs",
ICPR 2020 (github.com/polimi-ispl/icpr2020dfdc) and benchmarked by
DeepfakeBench (github.com/SCLBD/DeepfakeBench). Both build the network with
efficientnet_pytorch (lukemelas/EfficientNet-PyTorch); this module rebuilds it
on timm's ``tf_efficientnet_b4`` (same modules: BatchNorm eps 1e-3, swish,
squeeze-excitation, TF "SAME" padding), whose padding differs from
efficientnet_pytorch's except on 380 px inputs, so the strided convolutions
get efficientnet_pytorch's static padding (:func:`efficientnet_b4_backbone`),
and maps efficientnet_pytorch's keys onto timm's
(:func:`convert_efficientnet_pytorch_keys`).

Reference defaults:

* DeepfakeBench (``training/networks/efficientnetb4.py``,
  ``detectors/efficientnetb4_detector.py``, ``config/detector/
  efficientnetb4.yaml``; efficientnet-pytorch 0.7.1 per ``install.sh``):
  ``EfficientNet.from_pretrained('efficientnet-b4')`` (ImageNet), then
  ``_conv_stem`` replaced by an unpadded ``nn.Conv2d(3, 48, 3, stride=2,
  bias=False)`` (so the stem is randomly initialised), ``_fc`` by
  ``Identity``; features = ``extract_features`` (1792 channels), average
  pooling, ``last_layer`` ``Linear(1792, 2)`` (no dropout: ``dropout: false``),
  cross-entropy; 256 px, mean = std = 0.5 (not ImageNet's); Adam lr 2e-4,
  betas (0.9, 0.999), eps 1e-8, weight decay 5e-4, no schedule, 10 epochs,
  batch 32; augmentation flip 0.5, rotation +-10 degrees 0.5, Gaussian blur
  (kernel 3-7) 0.5, one of brightness/contrast, FancyPCA, hue/saturation 0.5,
  JPEG quality 40-100 0.5. Released ``effnb4_best.pth``: a state dict with
  ``backbone.efficientnet._conv_stem.weight`` ... and ``backbone.last_layer.*``
  (``module.``-prefixed when saved from DDP).
* icpr2020dfdc (``architectures/fornet.py``, ``train_binclass.py``):
  ``EfficientNetB4``: ``EfficientNet.from_pretrained('efficientnet-b4')``
  (efficientnet-pytorch unpinned in ``environment.yml``, early 2020: 0.6.x),
  ``_fc`` deleted, ``classifier`` ``Linear(1792, 1)`` after the network's own
  dropout (0.4), BCE-with-logits; 224 px face crops, ImageNet normalisation;
  Adam lr 1e-5, batch 32, up to 30,000 iterations (``scripts/train_all.sh``);
  ``bestval.pth`` training checkpoints wrap the weights as ``{'net': ...}``. Released ``EfficientNetB4_DFDC_bestval-*.pth``
  / ``EfficientNetB4_FFPP_bestval-*.pth``: state dicts with
  ``efficientnet._conv_stem.weight`` ... and ``classifier.weight`` (1, 1792).

Where this differs: one fake logit (DeepfakeBench's 2-class head loads as
``w[1] - w[0]``, ``b[1] - b[0]``: the same probability), trained with BCE
(equal to the 2-class cross-entropy on ``z1 - z0``); the defaults are
DeepfakeBench's (its unpadded stem included, so its weights reproduce; the
stem does get the ImageNet weights when ``pretrained_file`` is given, where
DeepfakeBench leaves it random); no rotation or colour jitter augmentation,
and blur/JPEG come before resizing. For icpr2020dfdc's weights set
``padding=static_v0.6 stem_padding=same drop_rate=0.4`` (the network is an
argument, not the file's to choose; a mismatch is logged).

Test-time protocol: :meth:`EfficientNetB4Detector.load_weights` recognises the
file and switches to its authors' test transform (:data:`PROTOCOLS`; a user's
preprocessing still wins, with a warning): DeepfakeBench's ``cv2.resize`` to 256 x
256 INTER_CUBIC, mean = std = 0.5; icpr2020dfdc's zero padding of a side under 224
px (``PadIfNeeded``), ``cv2.resize`` to 224 x 224 INTER_LINEAR, ImageNet mean/std.
Verified against the authors' code (``tests/official/make_efficientnet_b4.py``):
DeepfakeBench's ``EfficientDetector`` and data pipeline (efficientnet-pytorch
0.7.1) and icpr2020dfdc's ``EfficientNetB4`` and ``get_transformer('scale', 224)``
(efficientnet-pytorch 0.6.3, albumentations 1.1.0) give the same logits to 5e-5.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from detectors.base import DEEPFAKEBENCH_ADAM, BackboneClassifier
from detectors.layers.efficientnet import (
    B4_FEATURES,
    convert_efficientnet_pytorch_keys,
    efficientnet_b4_backbone,
)
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)


# -- the detector ----------------------------------------------------------------------
#: DeepfakeBench's test transform (its data pipeline's bicubic 256 px resize, mean = std
#: = 0.5) and, for training, its flip, Gaussian blur (kernel 3-7: sigma 0.8-1.4) and JPEG 40-100
DEFAULT_PREPROCESSING: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "hflip": 0.5,
    "blur_prob": 0.5,
    "blur_sigma": (0.8, 1.4),
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}
#: icpr2020dfdc's test transform (``isplutils/utils.py::get_transformer``, face policy
#: ``scale``, 224 px): albumentations' ``PadIfNeeded(224, 224, BORDER_CONSTANT, 0)``
#: and ``Resize(224, 224)`` (``cv2.resize`` INTER_LINEAR on the uint8 crop), ImageNet
#: normalisation
ICPR2020DFDC_PREPROCESSING: dict[str, Any] = dict(
    size=224,
    resize="square",
    interpolation="bilinear",
    resize_backend="cv2",
    pad="to_size",
    crop="none",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
#: the official test-time preprocessing of each recognised weight format
PROTOCOLS: dict[str, Mapping[str, Any]] = {
    "DeepfakeBench EfficientDetector": DEEPFAKEBENCH_FACE_PREPROCESSING,
    "icpr2020dfdc EfficientNetB4": ICPR2020DFDC_PREPROCESSING,
}
#: (prefix of the efficientnet_pytorch network, head prefix, origin) of community files
LAYOUTS = (
    ("backbone.efficientnet.", "backbone.last_layer.", "DeepfakeBench EfficientDetector"),
    ("efficientnet.", "classifier.", "icpr2020dfdc EfficientNetB4"),
    ("", "_fc.", "efficientnet_pytorch EfficientNet"),
)


def efficientnet_detector_state(
    state: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], str]:
    """A community EfficientNet-B4 checkpoint in :class:`EfficientNetB4Detector`'s layout.

    deepsift's own layout (``backbone.*``, ``head.*``) passes unchanged;
    DeepfakeBench's, icpr2020dfdc's (``{'net': ...}`` unwrapped) and bare
    efficientnet_pytorch state dicts (:data:`LAYOUTS`), ``module.``-prefixed or
    not, have their network keys converted (:func:`convert_efficientnet_pytorch_keys`)
    under ``backbone.`` and their 1- or 2-class head made the fake logit
    (:func:`detectors.layers.heads.fake_logit_head`). Other keys are kept, so that
    strict loading names them.
    """
    from detectors.layers.heads import fake_logit_head

    if isinstance(state.get("net"), Mapping):
        state = state["net"]
    state = strip_prefixes(state, ("module.",))
    if "head.weight" in state:
        return dict(state), "deepsift"
    layout = next((lay for lay in LAYOUTS if f"{lay[0]}_conv_stem.weight" in state), None)
    if layout is None:
        return dict(state), "unknown"
    prefix, head, origin = layout
    network = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    network = {k: v for k, v in network.items() if not k.startswith("_fc.")}
    out = {k: v for k, v in state.items() if not k.startswith((prefix, head))}
    out.update({f"backbone.{k}": v for k, v in convert_efficientnet_pytorch_keys(network).items()})
    if f"{head}weight" in state:
        out["head.weight"], out["head.bias"] = fake_logit_head(
            state[f"{head}weight"], state.get(f"{head}bias"), source
        )
    return out, origin


class EfficientNetB4Detector(BackboneClassifier):
    """EfficientNet-B4 features (1792), average pooling, dropout, one fake logit (``head``).

    State dict: ``backbone.*`` (timm ``tf_efficientnet_b4`` names) and
    ``head.weight``/``head.bias``; 17,550,409 parameters, DeepfakeBench's
    ``EfficientDetector`` (17,552,202) less one 1792 + 1 row of its 2-class
    head. :meth:`load_weights` reads DeepfakeBench's ``effnb4_best.pth``,
    icpr2020dfdc's ``EfficientNetB4_*`` weights, an efficientnet_pytorch
    state dict with a 1- or 2-class ``_fc``, and deepsift checkpoints, strictly.

    Args:
        pretrained_file: local ImageNet weights (``efficientnet-b4-6ed6700e.pth``);
            ``None``: random init.
        padding, stem_padding, drop_path_rate: see :func:`efficientnet_b4_backbone`;
            the defaults (``static``, ``valid``) are DeepfakeBench's network.
        drop_rate: dropout before the head (icpr2020dfdc: 0.4, DeepfakeBench: 0).
        preprocessing, optimizer, scheduler: see :class:`Detector`; default optimiser
            DeepfakeBench's Adam (lr 2e-4, weight decay 5e-4).
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        padding: str = "static",
        stem_padding: str = "valid",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        preprocessing = merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing)
        backbone = efficientnet_b4_backbone(
            pretrained_file,
            padding=padding,
            stem_padding=stem_padding,
            drop_path_rate=drop_path_rate,
        )
        super().__init__(backbone, B4_FEATURES, drop_rate, preprocessing, optimizer, scheduler)
        self.padding, self.stem_padding = padding, stem_padding

    def load_weights(self, path: str | Path) -> None:
        """Load a community or deepsift EfficientNet-B4 file strictly (see the class docstring)."""
        from detectors.layers.heads import fill_num_batches_tracked

        source = f"weights file {path}"
        state, origin = efficientnet_detector_state(read_state_dict(path), source)
        state = fill_num_batches_tracked(state, self.state_dict())
        load_state_dict_strict(self, state, source)
        log.info("EfficientNet-B4: loaded %s (%s layout)", path, origin)
        protocol = PROTOCOLS.get(origin)
        if protocol:
            self.use_protocol(origin, protocol, DEFAULT_PREPROCESSING)
        expected = {
            "DeepfakeBench EfficientDetector": ("static", "valid"),
            "icpr2020dfdc EfficientNetB4": ("static_v0.6", "same"),
        }.get(origin)
        ours = (self.padding, self.stem_padding)
        if expected and expected != ours:
            log.warning(
                "%s was trained with padding=%s stem_padding=%s; this detector has "
                "padding=%s stem_padding=%s (see configs/detector/efficientnet_b4.yaml)",
                origin,
                *expected,
                *ours,
            )
