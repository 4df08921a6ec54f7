"""UnivFD: a linear probe on frozen CLIP ViT-L/14 image embeddings.

After U. Ojha, Y. Li and Y. J. Lee, "Towards Universal Fake Image Detectors
that Generalize Across Generative Models", CVPR 2023. Official code and head
weights: github.com/WisconsinAIVision/UniversalFakeDetect
(``pretrained_weights/fc_weights.pth``: ``{'weight': (1, 768), 'bias': (1,)}``).
A feature space not trained to tell real from fake (CLIP's) separates them with
a single hyperplane, and that hyperplane generalises to unseen generators.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.layers.clip import CLIP_MEAN, CLIP_STD, ClipLinearProbe
from detectors.layers.cnndetection import cnndetection_sample
from detectors.preprocessing import Preprocessing, merge_preprocessing, train_variant

log = logging.getLogger(__name__)

#: test time (``validate.py``): ``CenterCrop(224)`` (zero-padded when smaller), no
#: resize, CLIP ``Normalize``
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "none",
    "interpolation": "bilinear",
    "crop": "center",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
    "hflip": 0.5,
    "blur_prob": 0.0,
    "blur_sigma": (0.0, 3.0),
    "jpeg_prob": 0.0,
    "jpeg_quality": (30, 100),
}

#: training (``data/datasets.py`` with ``options/base_options.py`` defaults): shorter
#: side resized to ``loadSize`` 256 (bilinear), Gaussian blur (p 0.5, sigma U(0, 3)) and
#: JPEG (p 0.5, quality U{30..100}), a random 224 crop and a horizontal flip
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = {
    "resize": "shorter",
    "resize_to": 256,
    "blur_prob": 0.5,
    "jpeg_prob": 0.5,
}

#: what ``validate.py`` feeds the network (``RealFakeDataset``), the protocol of
#: ``fc_weights.pth``: verified against the authors' code in tests/official/univfd_fc_weights.json
OFFICIAL_TEST_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "none",
    "resize_backend": "pil",
    "crop": "center",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
}

#: the official head file's keys and shapes (``model.fc.load_state_dict``)
HEAD_KEYS = ("weight", "bias")


class UnivFD(ClipLinearProbe):
    """Frozen CLIP ViT-L/14 ``encode_image`` (768-d) and ``fc = nn.Linear(768, 1)``.

    Reference defaults (github.com/WisconsinAIVision/UniversalFakeDetect):

    * model (``models/clip_models.py``): OpenAI ``clip.load("ViT-L/14")``,
      ``fc(model.encode_image(x))``: the projected image embedding, not
      L2-normalised; ``fc`` initialised N(0, 0.02) (``init_gain``);
    * training (``train.py --fix_backbone``, ``networks/trainer.py``,
      ``options/``): only ``fc.weight`` and ``fc.bias`` train,
      ``BCEWithLogitsLoss``, ``AdamW`` (``--optim adam``) lr 1e-4, betas
      (0.9, 0.999), weight decay 0; batch 256; up to 100 epochs with the lr
      divided by 10 when validation accuracy stalls for 5 epochs (early stop
      below 1e-6); images resized (shorter side) to 256 bilinear, blur/JPEG
      augmentation with the option defaults ``blur_prob``/``jpg_prob`` 0.5
      (``train.py`` never reads its ``--data_aug`` flag, so they are always
      on), random 224 crop, horizontal flip, CLIP normalisation;
    * test (``validate.py``): ``CenterCrop(224)`` without any resize, CLIP
      normalisation; ``model.fc.load_state_dict(torch.load(ckpt))`` with
      ``fc_weights.pth``.

    Where this differs: the encoder is open_clip's re-implementation of OpenAI's
    (same weights and keys, ``quick_gelu=True``), built offline and loaded from
    ``backbone_file`` (see :mod:`detectors.layers.clip`); the training
    transform keeps the reference's order (resize, blur/JPEG with PIL's JPEG
    only, random crop, flip) via :func:`detectors.layers.cnndetection.cnndetection_train_transform`;
    the plateau schedule is the trainer's business (none by default); the
    reference's OpenCV-or-PIL JPEG choice becomes PIL only.

    :meth:`load_weights` loads the official ``fc_weights.pth`` strictly (keys
    ``weight``, ``bias``), or a deepsift checkpoint/state dict of this detector, and
    keeps (or, where a user changed it, warns about) ``validate.py``'s test-time input.
    With OpenAI's ``ViT-L-14.pt`` as ``backbone_file`` the outputs match the authors'
    code (``models/clip_models.py``, ``models/clip/``, ``validate.py``) within 2e-6 in
    logit, float32 (``tests/official/univfd_fc_weights.json``, seeded weights).

    Args:
        train_preprocessing: fields of ``preprocessing`` that differ in training.
        optimizer: default AdamW(lr 1e-4, betas (0.9, 0.999), weight_decay 0).
        others: see :class:`~detectors.layers.clip.ClipLinearProbe`.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        backbone_file: str | None = None,
        random_init: bool = False,
        quick_gelu: bool = True,
        vision_cfg: Mapping[str, Any] | None = None,
        embed_dim: int | None = None,
        seed: int = 0,
        init_gain: float = 0.02,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(
                torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0
            )
        super().__init__(
            model_name=model_name,
            pretrained=pretrained,
            backbone_file=backbone_file,
            random_init=random_init,
            quick_gelu=quick_gelu,
            vision_cfg=vision_cfg,
            embed_dim=embed_dim,
            features="projected",
            normalize_features=False,
            seed=seed,
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer,
            scheduler=scheduler,
        )
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        self.fc = nn.Linear(self.feature_dim, 1)
        nn.init.normal_(self.fc.weight, 0.0, init_gain)
        nn.init.zeros_(self.fc.bias)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def load_weights(self, path: str | Path) -> None:
        """The official head (``weight`` (1, 768), ``bias`` (1,)) or this detector's state dict."""
        state = strip_prefixes(read_state_dict(path), ("module.", "model.", "fc."))
        if set(state) != set(HEAD_KEYS):
            shown = ", ".join(sorted(state)[:6]) + (" ..." if len(state) > 6 else "")
            raise UserError(
                f"weights file {path} is not a UnivFD head: expected keys weight (1, "
                f"{self.feature_dim}) and bias (1,) as in fc_weights.pth, found {shown or 'none'}; "
                f"the CLIP encoder's weights go in detector.backbone_file"
            )
        load_state_dict_strict(self.fc, state, f"weights file {path}")
        log.info("UnivFD: loaded head %s", path)
        self.use_protocol(
            "UnivFD fc_weights.pth", OFFICIAL_TEST_PREPROCESSING, DEFAULT_PREPROCESSING
        )
