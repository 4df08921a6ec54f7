"""Bytes to an 8-bit RGB image, with the hard cases handled or refused with a short reason.

* The format is recognised by content (Pillow's sniffing), never by extension.
* Modes become 8-bit RGB and EXIF orientation is applied by :mod:`deepsift.core.images`,
  the conversion training and evaluation use too (:func:`deepsift.core.images.load_rgb`),
  so scoring sees what training saw; width and height are reported as displayed.
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

from PIL import Image, UnidentifiedImageError

from deepsift.core.images import to_rgb, upright_transpose

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


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's decompression-bomb limit to ``max_pixels`` (never lower it): Pillow
    refuses above twice its own limit, and ``--max-pixels``, checked from the header before
    decoding, must stay the binding one in every process that decodes."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)


def decode_image(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0) -> DecodedImage:
    """``raw`` bytes as an 8-bit RGB image of frame ``frame``, EXIF orientation applied."""
    opened = open_image(raw, max_pixels)
    loaded = load_frame(opened, frame)
    try:
        stored = to_rgb(loaded)
        method = upright_transpose(loaded)
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
    method = upright_transpose(opened)
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


def _bomb_size(exc: BaseException) -> str:
    """The pixel count in Pillow's message (its own limit, twice ``Image.MAX_IMAGE_PIXELS``,
    tripped before the header could be checked here)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{found.group(1)} pixels" if found else "too many pixels"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
