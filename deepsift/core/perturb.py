"""Test-time perturbations for robustness sweeps, applied identically to real and fake images.

A perturbation is a chain of steps written ``kind:value`` and joined by ``+``, applied
left to right to the RGB PIL image after it is loaded (and after the data source's
``reencode``), before the detector's own test-time transform:

* ``none``: the image unchanged (the baseline level of every family);
* ``jpeg:Q``: JPEG at quality ``Q`` (1-100) with Pillow, encoded and decoded in memory
  (Pillow's defaults, so 4:2:0 chroma subsampling: quality 100 is *not* lossless and is
  a real level, the unchanged image is ``none``);
* ``webp:Q``: lossy WebP at quality ``Q`` (1-100) with Pillow (needs libwebp);
* ``blur:S``: Gaussian blur of standard deviation ``S`` pixels, each channel through
  ``scipy.ndimage.gaussian_filter`` into the uint8 image, as the CNNDetection (Wang et al.,
  CVPR 2020, ``data/datasets.py::gaussian_blur``) and SIDBench (``dataset/dataset.py``)
  code do; ``blur:0`` is ``none``;
* ``noise:S``: additive Gaussian noise of standard deviation ``S`` in 0-255 pixel units,
  rounded and clipped to uint8. The noise is drawn from a generator seeded by
  ``(seed, key)`` (the key is the record's path), so an image gets the same noise
  whatever the batch order, worker or rank; all levels share one draw, scaled by ``S``;
* ``resize:F``: resize by the factor ``F`` (both sides, rounded, at least 1 px) with
  Pillow, bicubic by default (``resize:0.5:bilinear``: also ``nearest``, ``lanczos``,
  ``area`` for Pillow's box filter); the image keeps the new size;
* ``resize_back:F``: the same, then back to the original size with the same filter
  (the image is degraded but keeps its size); ``resize:1`` and ``resize_back:1`` are ``none``;
* ``crop:F``: centre crop keeping the fraction ``F`` (0-1] of each side
  (``torchvision.transforms.functional.center_crop``); ``crop:1`` is ``none``.

Examples: ``blur:2+jpeg:50`` (SIDBench's combined level: blur, then JPEG, in their
order), ``resize:0.5+jpeg:75`` (a social-network-like upload). Levels that are the
identity return the very image they got, so a sweep's ``none`` level reproduces the
plain evaluation exactly.

:func:`parse_perturbation` checks a spec and raises a one-line :class:`UserError` naming
the bad part; :class:`Perturbation` is the picklable callable the data loader applies;
:func:`perturb` is the one-shot form for notebooks and scripts.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from deepsift.core.errors import UserError

__all__ = [
    "KINDS",
    "Perturbation",
    "Step",
    "apply_step",
    "noise_seed",
    "parse_perturbation",
    "perturb",
]

#: the perturbation kinds, with what their value means
KINDS: dict[str, str] = {
    "none": "no value: the image unchanged",
    "jpeg": "quality 1-100 (Pillow)",
    "webp": "quality 1-100 (Pillow)",
    "blur": "Gaussian sigma in pixels, >= 0",
    "noise": "Gaussian sigma in 0-255 pixel units, >= 0",
    "resize": "scale factor > 0 [:bicubic|bilinear|nearest|lanczos|area]",
    "resize_back": "scale factor > 0, then back to the original size [:filter]",
    "crop": "centre-crop fraction of each side, in (0, 1]",
}

_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class Step:
    """One step of a chain: ``kind``, its ``value`` and, for resizes, the filter."""

    kind: str
    value: float = 0.0
    option: str | None = None

    @property
    def is_identity(self) -> bool:
        if self.kind in ("blur", "noise"):
            return self.value == 0
        if self.kind in ("resize", "resize_back", "crop"):
            return self.value == 1
        return self.kind == "none"

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        value = f"{self.value:g}"
        return f"{self.kind}:{value}" + (f":{self.option}" if self.option else "")


def _bad(spec: str, part: str, why: str) -> UserError:
    return UserError(f"perturbation {spec!r}: {part!r} {why}")


def _parse_step(spec: str, part: str) -> Step:
    fields = [f.strip() for f in part.split(":")]
    kind = fields[0].lower()
    if kind not in KINDS:
        raise _bad(
            spec,
            part,
            f"is not a perturbation; valid names: {', '.join(KINDS)} (write kind:value, join steps with +)",
        )
    if kind == "none":
        if len(fields) > 1:
            raise _bad(spec, part, "takes no value")
        return Step("none")
    if len(fields) < 2 or not fields[1]:
        raise _bad(spec, part, f"needs a value: {kind}:<{KINDS[kind]}>")
    try:
        value = float(fields[1])
    except ValueError:
        raise _bad(spec, part, f"has a value that is not a number ({KINDS[kind]})") from None
    option = None
    if kind in ("resize", "resize_back"):
        if len(fields) > 3:
            raise _bad(spec, part, "has too many fields: resize:<scale>[:<filter>]")
        option = fields[2].lower() if len(fields) == 3 else None
        if option is not None and option not in _FILTERS:
            raise _bad(spec, part, f"names no filter; valid ones: {', '.join(_FILTERS)}")
        if option == "bicubic":
            option = None
    elif len(fields) > 2:
        raise _bad(spec, part, f"has too many fields: {kind}:<value>")
    ok = {
        "jpeg": 1 <= value <= 100 and value.is_integer(),
        "webp": 1 <= value <= 100 and value.is_integer(),
        "blur": 0 <= value < float("inf"),
        "noise": 0 <= value < float("inf"),
        "resize": 0 < value < float("inf"),
        "resize_back": 0 < value < float("inf"),
        "crop": 0 < value <= 1,
    }[kind]
    if not ok:
        raise _bad(spec, part, f"is out of range: {kind} takes {KINDS[kind]}")
    return Step(kind, value, option)


@functools.lru_cache(maxsize=256)
def parse_perturbation(spec: str | None) -> tuple[Step, ...]:
    """The non-identity steps of ``spec`` (``()`` for ``none``/``None``/identity levels).

    ``"blur:2+jpeg:50"`` -> ``(Step("blur", 2.0), Step("jpeg", 50.0))``. A bad name or
    value raises :class:`UserError` naming it and the valid choices.
    """
    if spec is None:
        return ()
    text = str(spec).strip()
    if text.lower() in ("", "null"):
        return ()
    steps = tuple(_parse_step(text, part.strip()) for part in text.split("+"))
    return tuple(s for s in steps if not s.is_identity)


def _encode(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt, quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.convert("RGB")


def _blur(image: Image.Image, sigma: float) -> Image.Image:
    from scipy.ndimage import gaussian_filter

    array = np.array(image.convert("RGB"))
    for c in range(3):
        gaussian_filter(array[:, :, c], output=array[:, :, c], sigma=sigma)
    return Image.fromarray(array)


def noise_seed(seed: int, key: str) -> int:
    """The noise generator's seed for one image: a hash of the run's seed and the key."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _noise(image: Image.Image, sigma: float, seed: int, key: str) -> Image.Image:
    array = np.asarray(image.convert("RGB"), dtype=np.float64)
    rng = np.random.default_rng(noise_seed(seed, key))
    noisy = array + sigma * rng.standard_normal(array.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _resize(image: Image.Image, scale: float, option: str | None, back: bool) -> Image.Image:
    resample = _FILTERS[option or "bicubic"]
    width, height = image.size
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    out = image.resize(size, resample=resample)
    return out.resize((width, height), resample=resample) if back else out


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    from torchvision.transforms.functional import center_crop

    width, height = image.size
    return center_crop(image, [max(1, round(height * fraction)), max(1, round(width * fraction))])


def apply_step(image: Image.Image, step: Step, seed: int = 0, key: str = "") -> Image.Image:
    """``image`` after one step (the identity returns ``image`` itself)."""
    if step.is_identity:
        return image
    if step.kind in ("jpeg", "webp"):
        return _encode(image, step.kind.upper(), int(step.value))
    if step.kind == "blur":
        return _blur(image, step.value)
    if step.kind == "noise":
        return _noise(image, step.value, seed, key)
    if step.kind in ("resize", "resize_back"):
        return _resize(image, step.value, step.option, back=step.kind == "resize_back")
    if step.kind == "crop":
        return _crop(image, step.value)
    raise ValueError(f"unknown step {step}")  # parse_perturbation admits no other kind


@dataclass(frozen=True)
class Perturbation:
    """A parsed chain, callable on ``(image, key)``; picklable for DataLoader workers.

    ``seed`` and ``key`` only matter for ``noise``: the key (the record's path) makes the
    noise a function of the image, not of its place in a batch.
    """

    spec: str
    seed: int = 0

    def __post_init__(self) -> None:
        parse_perturbation(self.spec)  # fail at construction, not in a worker

    @property
    def steps(self) -> tuple[Step, ...]:
        return parse_perturbation(self.spec)

    @property
    def is_identity(self) -> bool:
        return not self.steps

    def __call__(self, image: Image.Image, key: str = "") -> Image.Image:
        for step in self.steps:
            image = apply_step(image, step, self.seed, key)
        return image

    def __str__(self) -> str:
        return "+".join(str(s) for s in self.steps) or "none"


def perturb(image: Image.Image, spec: str | None, seed: int = 0, key: str = "") -> Image.Image:
    """``image`` after the chain ``spec`` (see the module docstring), e.g. ``"jpeg:50"``."""
    return Perturbation(str(spec) if spec is not None else "none", seed)(image, key)
