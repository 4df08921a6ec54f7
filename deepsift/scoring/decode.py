"""Bytes to an 8-bit RGB image, with the hard cases handled or refused with a short reason.

* The format is recognised by content (Pillow's sniffing), never by extension.
* CMYK, palette, grayscale and YCbCr become RGB with Pillow's conversions; 16-bit
  and 32-bit integer images keep their high byte (``v >> 8``, as training's
  :func:`datasets.base.load_rgb` does; Pillow's own conversion would clip them);
  floating-point images are taken as [0, 1] when they fit, else clipped.
* Transparency is composited on white, as :func:`datasets.base.load_rgb` does
  for training, so scoring sees what training saw.
* EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`); width and
  height are reported as displayed.
* Animated GIF / WebP / PNG: the first frame, or frames chosen by the caller.
* Refused with :class:`ItemError`: empty data, data that is not an image,
  truncated or corrupt files, images above the pixel limit (decompression bombs,
  checked from the header before any pixel is decoded).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_FILE_BYTES = 512 * 2**20


class ItemError(Exception):
    """An input that cannot be scored; the message is the record's short ``error`` reason."""


@dataclass
class DecodedImage:
    """One decoded image: ``image`` is 8-bit RGB, EXIF-rotated, of the chosen frame."""

    image: Image.Image
    original: Image.Image  # as opened (mode, info and EXIF intact)
    stored: Image.Image  # 8-bit RGB as stored, before EXIF rotation (for watermark readers)
    format: str
    mode: str
    animated: bool


def open_image(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``raw`` (header only) and refuse it before decoding when it is above ``max_pixels``."""
    if not raw:
        raise ItemError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as exc:
        raise ItemError(
            f"decompression bomb refused: {_bomb_size(exc)} > --max-pixels {max_pixels}"
        ) from None
    except UnidentifiedImageError:
        raise ItemError("not an image (format not recognised)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ItemError(f"corrupt image header ({_first_line(exc)})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ItemError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ItemError(
            f"decompression bomb refused: {width * height} pixels ({width}x{height}) "
            f"> --max-pixels {max_pixels}"
        )
    return image


def load_frame(image: Image.Image, frame: int = 0) -> Image.Image:
    """Decode frame ``frame`` of an opened image; truncated or corrupt data raise ItemError."""
    try:
        if frame:
            image.seek(frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency"
            image.load()
    except Image.DecompressionBombError as exc:
        raise ItemError(f"decompression bomb refused ({_first_line(exc)})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, MemoryError) as exc:
        raise ItemError(f"truncated or corrupt image ({_first_line(exc)})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB (see the module docstring for the conversions)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        return image
    return image.convert("RGB")


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        values = array.astype(np.float64)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8)
    # the high byte, as datasets.base.load_rgb does for training (v / 256, truncated)
    return (np.clip(array.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def decode_image(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0) -> DecodedImage:
    """``raw`` bytes as an 8-bit RGB image of frame ``frame``, EXIF orientation applied."""
    opened = open_image(raw, max_pixels)
    loaded = load_frame(opened, frame)
    try:
        stored = to_rgb(loaded)
        method = _TRANSPOSE.get(_orientation(loaded))
        rgb = stored.transpose(method) if method is not None else stored
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise ItemError(f"cannot convert image to RGB ({_first_line(exc)})") from None
    return DecodedImage(
        image=rgb,
        original=loaded,
        stored=stored,
        format=opened.format or "unknown",
        mode=loaded.mode,
        animated=bool(getattr(opened, "is_animated", False)),
    )


def decode_frames(
    raw: bytes, indices_for: Callable[[int], list[int]], max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[DecodedImage, list[tuple[int, Image.Image]]]:
    """The first frame (as :func:`decode_image`) and the frames ``indices_for(n_frames)`` picks."""
    first = decode_image(raw, max_pixels)
    if not first.animated:
        return first, [(0, first.image)]
    opened = open_image(raw, max_pixels)
    method = _TRANSPOSE.get(_orientation(opened))
    frames = []
    for index in indices_for(frame_count(opened)):
        try:
            rgb = to_rgb(load_frame(opened, index)).copy()
        except (OSError, ValueError, EOFError) as exc:
            raise ItemError(f"truncated or corrupt frame {index} ({_first_line(exc)})") from None
        frames.append((index, rgb.transpose(method) if method is not None else rgb))
    return first, frames


def frame_count(image: Image.Image, cap: int = 10_000) -> int:
    """Number of frames of an opened image (``cap`` at most; GIF counting walks the file)."""
    try:
        return max(1, min(int(getattr(image, "n_frames", 1)), cap))
    except (OSError, ValueError, EOFError):
        return 1


# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1


def _bomb_size(exc: BaseException) -> str:
    """The pixel count in Pillow's message (its own limit, twice ``Image.MAX_IMAGE_PIXELS``,
    tripped before the header could be checked here)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{found.group(1)} pixels" if found else "too many pixels"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
