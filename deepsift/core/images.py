"""Pillow images as 8-bit RGB, upright: the one conversion that training, evaluation and
``score.py`` share, so a photo scores the same whichever of them reads it.

* CMYK, palette, grayscale and YCbCr become RGB with Pillow's conversions.
* 16-bit and 32-bit integer images keep their high byte (``v >> 8``); Pillow's own
  conversion would clip them to 255.
* Floating-point images are taken as [0, 1] when they fit, else clipped to [0, 255].
* Transparency is composited on white.
* EXIF orientation: :func:`upright_transpose` gives the transpose that displays the image
  as a viewer shows it (as :func:`PIL.ImageOps.exif_transpose`, without copying metadata).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# EXIF orientation -> the transpose that displays the image upright
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB (see the module docstring); RGB comes back as it is."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "palette images with transparency ..."
            rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        return image
    return image.convert("RGB")


def upright_transpose(image: Image.Image) -> Image.Transpose | None:
    """The transpose that shows ``image`` upright by its EXIF orientation (None: as stored)."""
    try:
        orientation = int(image.getexif().get(0x0112, 1) or 1)
    except (OSError, ValueError, SyntaxError, TypeError):
        return None
    return _TRANSPOSE.get(orientation)


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        values = array.astype(np.float64)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8)
    return (np.clip(array.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB, upright by its EXIF orientation.

    The conversions (grayscale, palette, alpha on white, 16-bit high byte) are
    :mod:`deepsift.core.images`', shared with ``score.py``.
    """
    with Image.open(path) as img:
        img.load()
        method = upright_transpose(img)
        rgb = to_rgb(img)
        if method is not None:
            return rgb.transpose(method)
        return rgb.copy() if rgb is img else rgb
