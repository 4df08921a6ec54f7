"""Image preprocessing that belongs to a detector.

Results of synthetic-image detectors hinge on preprocessing (resize or not,
which interpolation, crop, normalisation), so each detector carries a
:class:`Preprocessing` in its config and the checkpoint stores it. Training
augmentations (flip, Gaussian blur, JPEG) follow CNNDetection's recipe and are
off unless the detector's ``DEFAULT_PREPROCESSING`` (or a config) turns them on;
a detector's YAML repeats its defaults (tests/test_config_defaults.py).
"""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import functional as TF

from deepsift.core.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: DeepfakeBench's test-time face input, produced by the data pipeline all its
#: detectors share: the face crop resized to ``resolution`` 256 x 256 with
#: ``cv2.resize`` (``INTER_CUBIC``), ``ToTensor``, ``Normalize(mean=0.5, std=0.5)``.
#: CORE, EfficientNet-B4, Face X-ray, RECCE, SPSL and SRM follow DeepfakeBench's
#: protocol, so their ``DEFAULT_PREPROCESSING`` start from this one constant: the same
#: values for the same reason. Training-only fields (flip, blur, JPEG) stay in each detector's file.
DEEPFAKEBENCH_FACE_PREPROCESSING: Mapping[str, Any] = dict(
    size=256,
    resize="square",
    interpolation="bicubic",
    resize_backend="cv2",
    crop="none",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)

_INTERPOLATION = {
    "nearest": TF.InterpolationMode.NEAREST,
    "bilinear": TF.InterpolationMode.BILINEAR,
    "bicubic": TF.InterpolationMode.BICUBIC,
    "area": None,  # cv2 only
}
#: OpenCV's flags for the same names (``cv2.resize(..., interpolation=flag)``)
_CV2_FLAGS = {
    "nearest": "INTER_NEAREST",
    "bilinear": "INTER_LINEAR",
    "bicubic": "INTER_CUBIC",
    "area": "INTER_AREA",
}
RESIZE_BACKENDS = ("pil", "cv2")


@dataclass
class Preprocessing:
    """How a detector turns a PIL image into its input tensor.

    resize: ``"none"`` keeps the pixels as they are (the safest for artifact
        detectors); ``"square"`` resizes to ``resize_to`` x ``resize_to``;
        ``"shorter"`` resizes the shorter side to ``resize_to``; ``"longest"`` the
        longer side (albumentations' ``LongestMaxSize``), aspect kept.
    resize_backend: ``"pil"`` resizes the PIL image through torchvision (Pillow's
        anti-aliased filters: CNNDetection, NPR, UnivFD); ``"cv2"`` resizes the uint8
        array with ``cv2.resize`` and the flag of ``interpolation`` (DeepfakeBench,
        icpr2020dfdc, SBI), bit for bit what those references feed their networks.
    interpolation: ``nearest``, ``bilinear``, ``bicubic``, or ``area`` (cv2 only).
    pad: ``"to_size"`` zero-pads a side shorter than ``size`` to ``size`` before
        resizing, centred (the extra pixel right/bottom), on the uint8 picture: what
        albumentations' ``PadIfNeeded(size, size, BORDER_CONSTANT, 0)`` does ahead of
        icpr2020dfdc's ``Resize``; ``"none"`` (default) does not.
    crop: ``"center"`` or ``"none"`` at test time; training always crops at a
        random position when ``crop`` is not ``"none"``.
    size: the crop side (the detector's native input size). Images smaller than
        the crop are zero-padded, as torchvision's ``CenterCrop`` does.
    mean, std: per-channel normalisation after scaling to [0, 1].
    hflip, blur_prob, jpeg_prob: training-only augmentation probabilities;
        blur sigma ~ U(blur_sigma), JPEG quality ~ U{jpeg_quality}.
    """

    size: int = 224
    resize: str = "none"
    resize_to: int | None = None
    interpolation: str = "bilinear"
    resize_backend: str = "pil"
    pad: str = "none"
    crop: str = "center"
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    hflip: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: Sequence[float] = (0.0, 3.0)
    jpeg_prob: float = 0.0
    jpeg_quality: Sequence[int] = (30, 100)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize not in ("none", "square", "shorter", "longest"):
            raise ValueError(
                f"preprocessing.resize must be none, square, shorter or longest, not {self.resize!r}"
            )
        if self.resize_backend not in RESIZE_BACKENDS:
            raise ValueError(
                f"preprocessing.resize_backend must be pil or cv2, not {self.resize_backend!r}"
            )
        if self.pad not in ("none", "to_size"):
            raise ValueError(f"preprocessing.pad must be none or to_size, not {self.pad!r}")
        if self.crop not in ("none", "center"):
            raise ValueError(f"preprocessing.crop must be none or center, not {self.crop!r}")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(
                f"preprocessing.interpolation must be one of {sorted(_INTERPOLATION)}, "
                f"not {self.interpolation!r}"
            )
        if self.resize != "none" and not self.resize_to:
            self.resize_to = self.size
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def validate(self) -> None:
        """Checks between fields that a weight file's protocol may still change.

        ``interpolation=area`` exists only in OpenCV, so it needs ``resize_backend=cv2``.
        This is not checked at construction: a detector's config is built before
        ``load_weights`` applies a file's protocol (which may switch the backend to cv2,
        see :meth:`detectors.base.Detector.use_protocol`), and a user's ``area`` must be
        judged against the backend that results. :func:`detectors.factory.build_detector`
        calls this once the weights are loaded, and :meth:`resize_image` before resizing.
        """
        if self.interpolation == "area" and self.resize_backend != "cv2":
            raise UserError(
                "preprocessing.interpolation=area needs preprocessing.resize_backend=cv2, "
                f"but the backend is {self.resize_backend}; pass preprocessing.resize_backend=cv2 "
                "or another preprocessing.interpolation (nearest, bilinear, bicubic)"
            )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["blur_sigma"], out["jpeg_quality"] = list(self.blur_sigma), list(self.jpeg_quality)
        return out

    # -- steps ---------------------------------------------------------------
    def augment(self, image: Image.Image) -> Image.Image:
        """Training-only degradations, applied before resizing (CNNDetection resizes first: see detectors.cnnspot)."""
        if self.blur_prob and random.random() < self.blur_prob:
            image = image.filter(ImageFilter.GaussianBlur(random.uniform(*self.blur_sigma)))
        if self.jpeg_prob and random.random() < self.jpeg_prob:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=random.randint(*self.jpeg_quality))
            buffer.seek(0)
            image = Image.open(buffer).convert("RGB")
        return image

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after resizing, with each reference's rounding."""
        side = int(self.resize_to or self.size)
        if self.resize == "square":
            return side, side
        if self.resize == "shorter":  # torchvision: the longer side truncated
            if width <= height:
                return side, int(side * height / width)
            return int(side * width / height), side
        if self.resize == "longest":  # albumentations LongestMaxSize: rounded
            scale = side / float(max(width, height))
            return round(width * scale), round(height * scale)
        return width, height

    def pad_image(self, image: Image.Image) -> Image.Image:
        """Zero-pad each side shorter than ``size`` to ``size``, centred (``pad="to_size"``)."""
        width, height = image.size
        if self.pad == "none" or (width >= self.size and height >= self.size):
            return image
        out = Image.new(image.mode, (max(width, self.size), max(height, self.size)))
        out.paste(image, ((out.width - width) // 2, (out.height - height) // 2))
        return out

    def resize_image(self, image: Image.Image) -> Image.Image:
        if self.resize == "none":
            return image
        self.validate()
        width, height = self.target_size(*image.size)
        if self.resize_backend == "cv2":
            import cv2
            import numpy as np

            flag = getattr(cv2, _CV2_FLAGS[self.interpolation])
            array = cv2.resize(np.asarray(image), (width, height), interpolation=flag)
            return Image.fromarray(array)
        mode = _INTERPOLATION[self.interpolation]
        if self.resize == "shorter":  # torchvision's own rule for the longer side
            return TF.resize(image, int(self.resize_to or self.size), interpolation=mode)
        return TF.resize(image, [height, width], interpolation=mode)

    def crop_image(self, image: torch.Tensor, train: bool) -> torch.Tensor:
        if self.crop == "none":
            return image
        height, width = image.shape[-2:]
        if height < self.size or width < self.size:
            return TF.center_crop(image, [self.size, self.size])  # zero-pads
        if train:
            top = random.randint(0, height - self.size)
            left = random.randint(0, width - self.size)
            return image[..., top : top + self.size, left : left + self.size]
        return TF.center_crop(image, [self.size, self.size])

    def __call__(self, image: Image.Image, train: bool = False) -> torch.Tensor:
        """PIL RGB image -> normalised float tensor of shape (3, H, W)."""
        if train:
            image = self.augment(image)
        image = self.resize_image(self.pad_image(image))
        tensor = TF.to_tensor(image)
        tensor = self.crop_image(tensor, train)
        if train and self.hflip and random.random() < self.hflip:
            tensor = tensor.flip(-1)
        return TF.normalize(tensor, self.mean, self.std)


def merge_preprocessing(
    defaults: Mapping[str, Any], value: Preprocessing | Mapping[str, Any] | None
) -> Preprocessing:
    """A detector's ``preprocessing`` argument as a :class:`Preprocessing`.

    A :class:`Preprocessing` is used as it is; a config's fields (a dict) override
    the detector's ``defaults``; ``None`` means the defaults.
    """
    if isinstance(value, Preprocessing):
        return value
    return Preprocessing(**{**defaults, **dict(value or {})})


def as_preprocessing(value: Preprocessing | Mapping[str, Any] | None) -> Preprocessing:
    """Accept a Preprocessing, a plain dict from a config, or None (defaults)."""
    return merge_preprocessing({}, value)


def train_variant(
    base: Preprocessing,
    overrides: Mapping[str, Any] | None,
    defaults: Mapping[str, Any] | None = None,
) -> Preprocessing:
    """``base`` with the fields that differ in training (e.g. a resize before the random crop).

    ``overrides`` (a detector's ``train_preprocessing`` argument) replaces the
    detector's ``defaults`` as a whole; ``None`` means the defaults.
    """
    if overrides is None:
        overrides = defaults
    fields = {f.name for f in dataclasses.fields(Preprocessing)}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise UserError(
            f"train_preprocessing has unknown fields {', '.join(unknown)}; "
            f"valid fields: {', '.join(sorted(fields))}"
        )
    return dataclasses.replace(base, **dict(overrides or {}))
