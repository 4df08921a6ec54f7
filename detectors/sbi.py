"""SBI: self-blended images, training fakes made from real faces only.

After K. Shiohara and T. Yamasaki, "Detecting Deepfakes with Self-Blended
Images", CVPR 2022. Official code and weights: github.com/mapooon/
SelfBlendedImages (``src/utils/sbi.py``, ``src/utils/blend.py``,
``src/utils/funcs.py``, ``src/model.py``, ``src/train_sbi.py``; weights
``FFraw.tar`` and ``FFc23.tar``). Each real face is blended with a slightly
altered copy of itself (colour and frequency augmentation, a small shift and
rescale) inside a deformed landmark mask; a classifier trained on the (real,
self-blended) pairs generalises to unseen manipulations.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.blending import (
    HULL_KINDS,
    LANDMARKS_OK,
    alpha_blend,
    elastic_deform,
    ellipse_mask,
    flip_landmarks,
    gaussian_blur,
    hull_mask,
    pair_augment,
    paired_inputs,
    random_affine,
    read_landmarks,
    resize,
    rng_from_python,
    sample_pair_augment,
    sample_source_augment,
    source_augment,
    to_uint8,
    warn_landmark_status,
    weighted_bce,
)
from detectors.layers.efficientnet import (
    convert_efficientnet_pytorch_keys,
    efficientnet_b4_backbone,
)
from detectors.layers.sam import SAM
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: the official inference (``src/inference/preprocess.py::extract_face``): the face crop
#: resized to 380 x 380 with ``cv2.resize(crop, dsize=(380, 380))`` (OpenCV's default
#: ``INTER_LINEAR``, fixed-point on the uint8 array), pixels / 255, no mean/std
#: normalisation. The transform applies ``self.preprocessing`` (:class:`Preprocessing`)
#: to the uint8 face, so these defaults are that resize bit for bit, and an override
#: (``interpolation``, ``resize_backend``, ``size``, ``mean``/``std`` ...) changes the
#: input as it says, with the departure warning of ``use_protocol`` for official weights
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 380,
    "resize": "square",
    "interpolation": "bilinear",
    "resize_backend": "cv2",
    "crop": "none",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}
#: what SBI does with fake records of the training split (the reference trains on reals only)
FAKE_RECORDS = ("ignore", "include")
#: ``random``: Face X-ray's four hull masks (the reference with its optional library);
#: ``convex``: the convex hull of the landmarks (the reference without it)
HULLS = ("random", "convex")
#: the reference's blend ratios (``dynamic_blend``)
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)


# -- the self-blending recipe ----------------------------------------------------------
def sbi_blend_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SBI's ``get_blend_mask``: a hard mask turned into a soft one of random width.

    Resized to a random 192-256 x 192-256 (so the blur acts at a fixed face
    scale), blurred with an odd kernel of 5-25 px (sigma from the size), kept
    only where the blur reaches its maximum (an erosion), blurred again (odd
    kernel 5-25, sigma 5-45), normalised to a maximum of 1 and resized back.
    """
    h, w = mask.shape
    size = rng.integers(192, 257, size=2)
    small = resize(mask, (int(size[0]), int(size[1])))
    k1, k2 = (int(k) for k in rng.choice(np.arange(5, 26, 2), size=2))
    blurred = gaussian_blur(small, k1)
    if blurred.max() <= 0:
        return np.zeros((h, w), dtype=np.float32)
    blurred = blurred / blurred.max()
    blurred[blurred < 1] = 0
    blurred = gaussian_blur(blurred, k2, float(rng.integers(5, 46)))
    blurred = blurred / max(blurred.max(), 1e-12)
    return np.clip(resize(blurred, (h, w)), 0.0, 1.0)


def self_blend(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    rng: np.random.Generator,
    hull: str = "random",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SBI's ``self_blending`` + ``dynamic_blend``: (real, self-blended fake, soft mask).

    1. mask: with probability 0.25 the landmarks are cut to their first 68
       (drops dlib-81's forehead), then a hull mask (:data:`HULLS`); without
       landmarks, :func:`detectors.layers.blending.ellipse_mask`;
    2. with probability 0.5 the source (the copy blended in), else the target
       (the image blended into, returned as the real), gets the colour and
       frequency augmentation (:func:`detectors.layers.blending.sample_source_augment`);
    3. source and mask are shifted and rescaled together, the mask gets an
       elastic deformation (:func:`~detectors.layers.blending.random_affine`,
       :func:`~detectors.layers.blending.elastic_deform`);
    4. the mask is softened (:func:`sbi_blend_mask`) and scaled by a ratio drawn
       from :data:`BLEND_RATIOS`; fake = ``mask * source + (1 - mask) * target``
       truncated to uint8.
    """
    h, w = image.shape[:2]
    if landmarks is None:
        mask = ellipse_mask((h, w), rng)
    else:
        if rng.random() < 0.25:
            landmarks = landmarks[:68]
        kind = HULL_KINDS[int(rng.integers(len(HULL_KINDS)))] if hull == "random" else "facehull"
        mask = hull_mask(landmarks, (h, w), kind)
    source, target = image.copy(), image.copy()
    augment_source = rng.random() < 0.5
    params = sample_source_augment(rng)
    if augment_source:
        source = source_augment(source, params)
    else:
        target = source_augment(target, params)
    moved_source, moved_mask = random_affine(source, mask, rng)
    moved_mask = elastic_deform(moved_mask, rng)
    if moved_mask.sum() > 0:  # a shift never empties a face mask; guard the degenerate case
        source, mask = moved_source, moved_mask
    soft = sbi_blend_mask(mask, rng) * BLEND_RATIOS[int(rng.integers(len(BLEND_RATIOS)))]
    fake = np.clip(alpha_blend(source, target, soft), 0, 255).astype(np.uint8)
    return target, fake, soft.astype(np.float32)


# -- the detector ---------------------------------------------------------------------
class SBI(Detector):
    """EfficientNet-B4 (one logit) trained on (real, self-blended) pairs with SAM.

    Reference defaults (github.com/mapooon/SelfBlendedImages):

    * data (``src/utils/sbi.py``): real FF++ frames only (``init_ff`` lists
      ``original_sequences``), 8 frames per video, dlib-81 landmarks
      (reordered, :data:`detectors.layers.blending.DLIB81_FOREHEAD_ORDER`) and
      RetinaFace boxes; per image: horizontal flip (p 0.5, landmarks renumbered),
      a crop with a wide margin, :func:`self_blend`, then the same
      ``RGBShift``/``HueSaturationValue``/``RandomBrightnessContrast``/
      ``ImageCompression(40-100)`` draw on the real and the fake
      (:func:`detectors.layers.blending.sample_pair_augment`), a random-margin crop
      from the RetinaFace box, resize to 380 x 380 (``cv2.INTER_LINEAR``),
      pixels / 255, no mean/std; the collate stacks every real and its fake;
    * model (``src/model.py``): ``EfficientNet.from_pretrained("efficientnet-b4",
      advprop=True, num_classes=2)`` (efficientnet_pytorch: TF "same" padding,
      BatchNorm eps 1e-3 momentum 0.01, dropout 0.4 before ``_fc``, drop-connect
      0.2); 17,552,202 parameters;
    * training (``src/train_sbi.py``, ``configs/sbi/base.json``): cross-entropy
      over 2 classes; SAM (rho 0.05) over SGD lr 0.001 momentum 0.9; batch 32
      (16 reals + their 16 fakes); 100 epochs; ``LinearDecayLR`` from epoch 75;
      the latest of the top-5 validation-AUC checkpoints is evaluated;
    * inference (``src/inference``): RetinaFace crop with a 1/4 margin per side,
      ``cv2.resize`` to 380 (default ``INTER_LINEAR`` on the uint8 crop), pixels /
      255, ``softmax[:, 1]``. Verified against the authors' code
      (``tests/official/make_sbi.py``: ``Detector`` with efficientnet-pytorch 0.7.1,
      ``extract_face``'s resize): the same logits to 5e-5 in float32.

    Here: one fake logit (``z1 - z0`` of the reference head: official ``.tar``
    weights load with their 2-class head converted exactly, see
    :meth:`load_weights`) and binary cross-entropy, which equals the
    reference's 2-class cross-entropy for that logit; the batch is the
    engine's batch of records, each real contributing its (real, fake) pair,
    so ``trainer.batch_size=16`` gives the reference's 32 images per step;
    SAM goes through the engine's one ``optimizer.step()`` per batch
    (:class:`SAM`); the schedule is :class:`LinearDecayLR` (set
    ``trainer.max_epochs=100`` for the reference's).

    Where this differs, and why:

    * the face crop is the one the data source provides (``record.path`` is
      already a face crop with its landmarks in ``record.extra["landmarks"]``),
      so the reference's two-stage crop (wide margin, then a random-margin crop
      of the RetinaFace box) is not repeated: the crop is blended as it is and
      resized to 380 px;
    * colour and frequency augmentations call the OpenCV functions
      albumentations calls, with its flags, instead of albumentations itself
      (same parameter ranges and draws; ``HueSaturationValue``'s +-0.3 limits
      are below one grey level in albumentations' uint8 arithmetic, and are so
      here); JPEG keeps the image's RGB order (albumentations hands OpenCV RGB
      as if it were BGR);
    * records without landmarks use a jittered ellipse
      (:func:`detectors.layers.blending.ellipse_mask`) with one warning;
    * fake records of the training split are not part of the recipe:
      ``fake_records="ignore"`` (default) gives them zero loss weight (they
      still cost a forward pass: train on reals only for speed);
      ``"include"`` adds them as ordinary fakes (label 1);
    * ``loss_unperturbed`` (the loss at ``w``, what the reference logs) is
      logged next to ``loss`` (at ``w + e``, what SAM descends).

    Args:
        backbone: ``"efficientnet_b4"`` (efficientnet_pytorch's B4 on timm, see
            :func:`detectors.layers.efficientnet.efficientnet_b4_backbone`) or any timm
            model name (the paper's backbone ablation; never downloaded).
        pretrained_file: local ImageNet weights for the backbone (the reference
            uses efficientnet_pytorch's AdvProp B4, ``adv-efficientnet-b4-44fb3a87.pth``).
        padding: efficientnet_pytorch's padding variant (``static``, ``static_v0.6``,
            ``dynamic``), see the EfficientNet module.
        drop_rate: dropout before the last layer (0.4, efficientnet_pytorch's B4).
        hull: the mask (:data:`HULLS`).
        fake_records: what to do with fake training records (:data:`FAKE_RECORDS`).
        preprocessing: test-time preprocessing fields over :data:`DEFAULT_PREPROCESSING`
            (``size``, ``mean``, ``std`` are used; images are always resized to
            ``size`` x ``size``).
        optimizer, scheduler: see :class:`Detector`; default SAM(SGD, lr 1e-3,
            momentum 0.9, rho 0.05) and no scheduler (the config sets
            :class:`LinearDecayLR`).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_b4",
        pretrained_file: str | None = None,
        padding: str = "static",
        drop_rate: float = 0.4,
        hull: str = "random",
        fake_records: str = "ignore",
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(
                SAM, base_optimizer=torch.optim.SGD, lr=1e-3, momentum=0.9, rho=0.05
            )
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if hull not in HULLS:
            raise UserError(f"detector.hull must be one of {', '.join(HULLS)}, not {hull!r}")
        if fake_records not in FAKE_RECORDS:
            raise UserError(
                f"detector.fake_records must be one of {', '.join(FAKE_RECORDS)}, not {fake_records!r}"
            )
        self.hull, self.fake_records = hull, fake_records
        self.backbone, features = build_backbone(backbone, pretrained_file, padding)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(features, 1)
        self._sam: SAM | None = None

    # -- data ---------------------------------------------------------------------
    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        """A uint8 (H, W, 3) face -> the network input, by ``self.preprocessing`` (no
        augmentation: training's randomness is SBI's own recipe, applied before)."""
        return self.preprocessing(Image.fromarray(to_uint8(image)), train=False)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """Test: the face resized to ``size``. Training: a (real, self-blended) pair.

        Training keys: ``image`` (the real, or a fake record's image),
        ``image_blended`` (its self-blended fake), ``weight_image`` and
        ``weight_blended`` (their loss weights), ``landmarks_status``
        (:data:`detectors.layers.blending.LANDMARKS_OK` or why the mask is an ellipse).
        """
        image = np.asarray(sample["image"].convert("RGB"))
        if not train:
            return {"image": self._tensor(image)}
        rng = rng_from_python()
        label = int(sample.get("label", 0))
        landmarks, status = None, LANDMARKS_OK
        if label == 0:
            landmarks, status = read_landmarks(sample.get("record"))
        if rng.random() < 0.5:
            image = image[:, ::-1].copy()
            if landmarks is not None:
                landmarks = flip_landmarks(landmarks, image.shape[1])
        if label != 0:
            x = self._tensor(image)
            weight = 1.0 if self.fake_records == "include" else 0.0
            return {
                "image": x,
                "image_blended": x.clone(),
                "weight_image": torch.tensor(weight),
                "weight_blended": torch.tensor(0.0),
                "landmarks_status": torch.tensor(status),
            }
        real, fake, _ = self_blend(image, landmarks, rng, self.hull)
        params = sample_pair_augment(rng)
        return {
            "image": self._tensor(pair_augment(real, params)),
            "image_blended": self._tensor(pair_augment(fake, params)),
            "weight_image": torch.tensor(1.0),
            "weight_blended": torch.tensor(1.0),
            "landmarks_status": torch.tensor(status),
        }

    # -- model --------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.backbone(batch["image"])
        return {"logits": self.fc(self.dropout(features)).squeeze(1)}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted BCE over the reals and their fakes; with :class:`SAM`, at ``w + e(w)``."""
        warn_landmark_status(
            batch.get("landmarks_status"), "SBI", "their masks are jittered ellipses"
        )
        images, targets, weights = paired_inputs(batch)
        sam = self._sam
        if sam is None or not torch.is_grad_enabled():
            return {"loss": weighted_bce(self({"image": images})["logits"], targets, weights)}
        sam.restore()  # an ascent left by a skipped step (e.g. a GradScaler overflow)
        loss_w = weighted_bce(self({"image": images})["logits"], targets, weights)
        grads = torch.autograd.grad(loss_w, sam.params(), allow_unused=True)
        sam.ascend(grads)
        loss = weighted_bce(self({"image": images})["logits"], targets, weights)
        return {"loss": loss, "loss_unperturbed": loss_w.detach()}

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer | None, Any]:
        optimizer, scheduler = super().configure_optimizers()
        self._sam = optimizer if isinstance(optimizer, SAM) else None
        return optimizer, scheduler

    def on_train_epoch_end(self) -> None:
        if self._sam is not None:
            self._sam.restore()

    def load_weights(self, path: str | Path) -> None:
        """Load official SBI weights (``FFraw.tar``, ``FFc23.tar``) or a deepsift state dict.

        Official files are ``{'model': ..., 'optimizer': ..., 'epoch': ...}``
        with the reference ``Detector``'s keys (``net._conv_stem.weight`` ...
        ``net._fc.weight`` (2, 1792)): efficientnet_pytorch names are mapped to
        timm's (:func:`detectors.layers.efficientnet.convert_efficientnet_pytorch_keys`)
        and the 2-class head becomes one logit, ``w1 - w0`` and ``b1 - b0``
        (sigmoid of it = the reference's ``softmax[:, 1]``). Loading is strict.
        """
        state = read_state_dict(path)
        official = not any(k.startswith(("backbone.", "fc.")) for k in state)
        if official:
            state = official_to_deepsift(state)
        load_state_dict_strict(self, state, f"weights file {path}")
        if official:  # the default is the official protocol: this warns about departures
            self.use_protocol("SBI", DEFAULT_PREPROCESSING, DEFAULT_PREPROCESSING)


def build_backbone(name: str, pretrained_file: str | None, padding: str) -> tuple[nn.Module, int]:
    """The feature extractor and its pooled width."""
    if name == "efficientnet_b4":
        if padding == "static":  # efficientnet_pytorch 0.7's, the reference's
            model = efficientnet_b4_backbone(pretrained_file)
        else:
            model = efficientnet_b4_backbone(pretrained_file, padding=padding)
        return model, int(getattr(model, "num_features", 1792))
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as exc:  # timm: "Unknown model"
        raise UserError(f"detector.backbone {name!r} is not a timm model ({exc})") from None
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"detector.pretrained_file {path} does not exist; pass a local {name} state dict "
                "or set detector.pretrained_file=null"
            )
        head = str(model.pretrained_cfg.get("classifier", "classifier"))
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(head + ".")}
        load_state_dict_strict(model, state, f"ImageNet {name} file {path}")
    return model, model.num_features


def official_to_deepsift(state: Mapping[str, Any]) -> dict[str, Any]:
    """The reference ``Detector``'s state dict (``net.`` + efficientnet_pytorch keys) in SBI's layout."""
    state = strip_prefixes(state, ("net.",))
    if any(k.startswith(("_conv_stem.", "_blocks.")) for k in state):  # efficientnet_pytorch
        state = convert_efficientnet_pytorch_keys(state)
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key in ("classifier.weight", "classifier.bias"):
            tensor = torch.as_tensor(value)
            if tensor.shape[0] == 2:  # softmax head: logit of fake = z1 - z0
                tensor = (tensor[1] - tensor[0]).unsqueeze(0)
            out["fc." + key.split(".")[1]] = tensor
        else:
            out["backbone." + key] = value
    return out
