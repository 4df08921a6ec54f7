"""Clip-consistent preprocessing for clip (video) detectors (issue #15).

A clip detector (``Detector.input_kind == "clip"``) receives ``sample["frames"]``,
a list of T PIL RGB face crops of one face track, and returns
``{"clip": (T, C, H, W)}``. Augmenting each frame independently would give every
frame its own crop, flip and compression, a temporal flicker that real videos do
not have and that a temporal model learns as a shortcut. :class:`ClipPreprocessing`
therefore draws the random parameters ONCE per clip (one crop box, one flip, one
JPEG quality, one blur sigma) and applies them to all T frames, the way the video
references do (e.g. LipForensics and FTCN apply a single ``RandomCrop`` /
horizontal flip to the stacked clip tensor). Built on ``torchvision.transforms.v2``
functional ops (``resize``, ``crop``, ``center_crop``, ``horizontal_flip``,
``jpeg``, ``gaussian_blur``, ``normalize``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image


class ClipPreprocessing:
    """Resize, crop, flip, JPEG, blur and normalise a clip with one draw per clip.

    Args:
        size: output side (square ``size`` x ``size``).
        resize: side frames are resized to before cropping (``None``: ``size``).
        crop: ``"center"`` always; ``"random"`` draws one box per clip in training
            (centre crop at evaluation).
        mean / std: per-channel normalisation after scaling to [0, 1].
        hflip: probability of one horizontal flip of the whole clip (training).
        jpeg_quality: ``(low, high)`` inclusive range of one JPEG quality per clip
            (training), ``None`` for none; ``jpeg_p`` its probability.
        blur_sigma: ``(low, high)`` range of one Gaussian blur sigma per clip
            (training), ``None`` for none; ``blur_p`` its probability.
    """

    def __init__(
        self,
        size: int,
        resize: int | None = None,
        crop: str = "center",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        hflip: float = 0.0,
        jpeg_quality: tuple[int, int] | None = None,
        jpeg_p: float = 0.0,
        blur_sigma: tuple[float, float] | None = None,
        blur_p: float = 0.0,
    ) -> None:
        if crop not in ("center", "random"):
            raise ValueError(f"ClipPreprocessing: crop={crop!r}; use 'center' or 'random'")
        self.size = int(size)
        self.resize = int(resize) if resize is not None else self.size
        if self.resize < self.size:
            raise ValueError(f"ClipPreprocessing: resize={self.resize} < size={self.size}")
        self.crop = crop
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.hflip = float(hflip)
        self.jpeg_quality = tuple(jpeg_quality) if jpeg_quality is not None else None
        self.jpeg_p = float(jpeg_p)
        self.blur_sigma = tuple(blur_sigma) if blur_sigma is not None else None
        self.blur_p = float(blur_p)

    def draw(self, train: bool, generator: torch.Generator | None = None) -> dict:
        """The random parameters of one clip (shared by all its frames)."""
        slack = self.resize - self.size

        def uniform() -> float:
            return float(torch.rand((), generator=generator))

        params: dict = {
            "top": slack // 2,
            "left": slack // 2,
            "flip": False,
            "quality": None,
            "sigma": None,
        }
        if not train:
            return params
        if self.crop == "random" and slack > 0:
            params["top"] = int(torch.randint(0, slack + 1, (), generator=generator))
            params["left"] = int(torch.randint(0, slack + 1, (), generator=generator))
        params["flip"] = uniform() < self.hflip
        if self.jpeg_quality is not None and uniform() < self.jpeg_p:
            low, high = self.jpeg_quality
            params["quality"] = int(torch.randint(int(low), int(high) + 1, (), generator=generator))
        if self.blur_sigma is not None and uniform() < self.blur_p:
            low, high = self.blur_sigma
            params["sigma"] = float(low + (high - low) * uniform())
        return params

    def apply(self, frames: Sequence[Image.Image], params: dict) -> torch.Tensor:
        """Apply one draw's parameters to every frame; returns float (T, C, H, W)."""
        if len(frames) == 0:
            raise ValueError("ClipPreprocessing: the clip has no frames")
        out = []
        for frame in frames:
            x = F.pil_to_tensor(frame.convert("RGB"))
            x = F.resize(x, [self.resize, self.resize], antialias=True)
            x = F.crop(x, params["top"], params["left"], self.size, self.size)
            if params["flip"]:
                x = F.horizontal_flip(x)
            if params["quality"] is not None:
                x = F.jpeg(x, params["quality"])
            if params["sigma"] is not None:
                sigma = params["sigma"]
                kernel = 2 * round(3 * sigma) + 1
                x = F.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
            x = F.normalize(F.to_dtype(x, torch.float32, scale=True), self.mean, self.std)
            out.append(x)
        return torch.stack(out)

    def __call__(
        self, frames: Sequence[Image.Image], train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.apply(frames, self.draw(train, generator))


#: OpenCV's resize flags by name (the 3D-convolution references resize with cv2)
CV2_INTERPOLATION = {"bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC"}


def cv2_clip_preprocessing(
    interpolation: str, mean: Sequence[float], std: Sequence[float], size: int = 224
) -> dict[str, Any]:
    """The preprocessing fields of a clip detector read by :func:`cv2_normalised_clip`: every
    frame ``cv2.resize``-d to ``size`` x ``size`` (``interpolation``), no crop, ``mean``/``std``."""
    return {
        "size": size,
        "resize": "square",
        "resize_to": size,
        "resize_backend": "cv2",
        "interpolation": interpolation,
        "crop": "none",
        "mean": tuple(mean),
        "std": tuple(std),
    }


def cv2_normalised_clip(
    frames: Sequence[Image.Image] | None,
    size: int,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    name: str = "this detector",
) -> torch.Tensor:
    """T face crops -> a (T, 3, size, size) float clip, as I3D, FTCN and AltFreezing read them.

    Each crop is resized with ``cv2.resize`` (``interpolation``: ``bilinear`` or ``bicubic``)
    on its uint8 array; ``augment`` (a torchvision v2 transform) sees the uint8 clip as one
    ``tv_tensors.Video``, so every random parameter is drawn once for all T frames; then
    ``/255`` and per-channel ``(x - mean) / std``.
    """
    import cv2
    import numpy as np
    from torchvision import tv_tensors

    from deepsift.core.errors import UserError

    if not frames:
        raise UserError(
            f"{name} reads face clips: the sample has no 'frames' (use a clip data config)"
        )
    flag = getattr(cv2, CV2_INTERPOLATION[interpolation])
    arrays = [
        cv2.resize(np.asarray(frame.convert("RGB")), (size, size), interpolation=flag)
        for frame in frames
    ]
    video = torch.from_numpy(np.ascontiguousarray(np.stack(arrays))).permute(0, 3, 1, 2)
    if augment is not None:
        video = augment(tv_tensors.Video(video)).as_subclass(torch.Tensor)
    clip = video.float().div(255.0)
    mean_t = torch.tensor(mean, dtype=clip.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=clip.dtype).view(1, 3, 1, 1)
    return (clip - mean_t) / std_t


def clip_sampling(clip_len: int, clip_stride: int) -> tuple[int, int]:
    """``detector.clip_len`` and ``detector.clip_stride`` as ints, or one UserError if < 1."""
    from deepsift.core.errors import UserError

    if clip_len < 1 or clip_stride < 1:
        raise UserError(
            f"detector.clip_len and detector.clip_stride must be >= 1, got {clip_len}, {clip_stride}"
        )
    return int(clip_len), int(clip_stride)


def checked_clip(clip: torch.Tensor, name: str = "this detector") -> torch.Tensor:
    """``batch["clip"]`` if it is (B, T, 3, H, W), else one UserError."""
    from deepsift.core.errors import UserError

    if clip.ndim != 5 or clip.shape[2] != 3:
        raise UserError(
            f"{name} expects batch['clip'] of shape (B, T, 3, H, W), got {tuple(clip.shape)}"
        )
    return clip


def channels_first_clip(clip: torch.Tensor, name: str = "this detector") -> torch.Tensor:
    """``batch["clip"]`` (B, T, 3, H, W) -> (B, 3, T, H, W) for 3D convolutions, or one UserError."""
    return checked_clip(clip, name).permute(0, 2, 1, 3, 4)


def deepfakebench_clip_augment() -> Any:
    """DeepfakeBench's video training augmentation (``abstract_dataset.py`` ``init_data_aug_method``
    with the ``data_aug`` block its video configs share), as torchvision v2 ops on a uint8
    ``tv_tensors.Video`` so every random parameter is drawn once per clip.

    Horizontal flip p 0.5; rotation +-10 degrees p 0.5 (black fill: albumentations reflects);
    one Gaussian blur of kernel 3, 5 or 7 (OpenCV's sigma for the kernel) p 0.5;
    brightness/contrast +-0.1 p 0.5 (``ColorJitter``: multiplicative brightness, without the
    FancyPCA/HSV alternatives); JPEG quality 40-100 p 0.5.
    """
    from torchvision.transforms import v2

    def sigma(kernel: int) -> float:  # cv2.GaussianBlur(ksize, sigmaX=0)
        return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8

    blurs = [v2.GaussianBlur(k, sigma(k)) for k in (3, 5, 7)]
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.RandomRotation(10)], p=0.5),
            v2.RandomApply([v2.RandomChoice(blurs)], p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.1, contrast=0.1)], p=0.5),
            v2.RandomApply([v2.JPEG((40, 100))], p=0.5),
        ]
    )
