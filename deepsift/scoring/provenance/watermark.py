"""The invisible watermark of Stable Diffusion's reference scripts (``invisible-watermark``).

Stability's and CompVis's sampling scripts mark every output with the
``dwtDct`` method of ``invisible-watermark`` (module ``imwatermark``):

- ``sd1``: the bytes of ``"StableDiffusionV1"`` (136 bits), CompVis
  ``scripts/txt2img.py`` (Stable Diffusion 1.x);
- ``sd2``: the bytes of ``"SDV2"`` (32 bits), Stability ``stablediffusion``
  ``scripts/txt2img.py`` (Stable Diffusion 2.x);
- ``sdxl``: the 48-bit message ``0b101100111110110010010000011110111011000110011110``,
  Stability ``generative-models`` (``sgm/inference/helpers.py``) and diffusers'
  ``StableDiffusionXLWatermarker``.

The scripts convert RGB to BGR before encoding; diffusers' SDXL pipeline hands
its RGB array over as if it were BGR, so both channel orders are decoded.

Decoding follows ``imwatermark.maxDct.EmbedMaxDct.decode`` with its defaults
(scales ``[0, 36, 36]``, 4 x 4 blocks), vectorised: OpenCV's BGR->YUV, the U
channel only (the Y scale is 0), cropped to a multiple of 4, one-level Haar DWT
(``pywt.dwt2``, reproduced bit for bit in numpy), then for each 4 x 4 block of the approximation band the
largest-magnitude coefficient other than the first votes 1 when
``|c| mod 36 > 18``; bit ``b`` of an ``n``-bit message is the mean vote of blocks
``b, b+n, b+2n, ...`` compared with 127/255. The test suite checks the result
equals ``imwatermark.WatermarkDecoder`` bit for bit.

Decision thresholds: SDXL uses Stability's ``scripts/demo/detect.py`` levels
(at most 27 of 48 bits: none; 28-33: partial; 34-35: likely, 0.02% of real
images in their test; 36 or more: very likely, no real image in their test), and
the mark is reported as detected from 36 bits. For the longer ``sd1`` message we
require 85% agreement (116 of 136 bits) and for the 32-bit ``sd2`` message 29 bits;
random bits reach either with probability below 1e-6.

**Absence proves nothing.** The mark lives in the chroma of 4 x 4 blocks at the
original resolution: JPEG with 4:2:0 chroma subsampling (the default of most
encoders and of every social network), resizing, cropping by an amount that is
not a multiple of 4, screenshots and most editors destroy it, and any other
generator never wrote it. A detected mark is strong evidence the file came out
of those scripts unmodified; anyone can also write the mark into any picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from deepsift.scoring.provenance._text import reason

MIN_PIXELS = 256 * 256  # imwatermark refuses smaller images (rows * cols < 256 * 256)
MAX_PIXELS = 4096 * 4096  # larger than any Stable Diffusion output; bounds time and memory
_SCALE = 36.0
_BLOCK = 4
_HAAR = 0.7071067811865476  # pywt.Wavelet("haar").dec_lo[0]
_STRIP_BLOCKS = 64  # block rows (8 pixel rows each) per strip

NOTE = (
    "absence proves nothing: JPEG 4:2:0 chroma subsampling, resizing or cropping "
    "remove the mark, and most generators never write it"
)


@dataclass(frozen=True)
class Mark:
    name: str
    bits: np.ndarray
    min_matched: int


def _bytes_bits(text: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(text.encode("utf-8"), dtype=np.uint8)).astype(bool)


SDXL_MESSAGE = 0b101100111110110010010000011110111011000110011110
MARKS = (
    Mark("sd1", _bytes_bits("StableDiffusionV1"), 116),
    Mark("sd2", _bytes_bits("SDV2"), 29),
    Mark("sdxl", np.array([c == "1" for c in bin(SDXL_MESSAGE)[2:]]), 36),
)


def sdxl_level(matched: int) -> str:
    """Stability's wording for a number of matching SDXL bits (``scripts/demo/detect.py``)."""
    if matched <= 27:
        return "none"
    if matched <= 33:
        return "partial"
    if matched <= 35:
        return "likely"
    return "very_likely"


def _haar_approx(channel: np.ndarray) -> np.ndarray:
    """The approximation band of ``pywt.dwt2(channel, "haar")``, bit for bit.

    pywt filters along axis 0 then axis 1, each output being
    ``h * x[2k + 1] + h * x[2k]`` in float64; the same operations in the same
    order give identical values. That matters: a vote compares ``|c| mod 36``
    with 18, pixel sums often land exactly on 18, and a plain ``sum / 2`` (exact)
    and pywt's result (off by an ulp) then vote differently.
    """
    x = channel.astype(np.float64)
    rows = _HAAR * x[1::2] + _HAAR * x[0::2]
    return _HAAR * rows[:, 1::2] + _HAAR * rows[:, 0::2]


def block_votes(image: np.ndarray, conversion: int | None = None) -> np.ndarray:
    """Per-block 0/1 votes of ``EmbedMaxDct.decode`` in raster order (U channel only).

    ``image`` is 8-bit, 3 channels; ``conversion`` is the OpenCV colour code
    (``cv2.COLOR_BGR2YUV`` by default: the array is read as BGR, as imwatermark
    does). Works on strips of rows so memory stays bounded on large pictures.
    """
    import cv2

    code = cv2.COLOR_BGR2YUV if conversion is None else conversion
    # Each 4 x 4 block of the half-resolution band covers 8 x 8 pixels; the
    # rows and columns past the last whole block never vote.
    n_rows, n_cols = image.shape[0] // 8, image.shape[1] // 8
    votes = []
    for top in range(0, n_rows, _STRIP_BLOCKS):
        bottom = min(top + _STRIP_BLOCKS, n_rows)
        strip = np.ascontiguousarray(image[top * 8 : bottom * 8, : n_cols * 8])
        approx = _haar_approx(cv2.cvtColor(strip, code)[..., 1])
        blocks = (
            approx.reshape(bottom - top, _BLOCK, n_cols, _BLOCK)
            .transpose(0, 2, 1, 3)
            .reshape(-1, _BLOCK * _BLOCK)
        )
        magnitude = np.abs(blocks[:, 1:])
        value = magnitude[np.arange(len(magnitude)), np.argmax(magnitude, axis=1)]
        votes.append(np.mod(value, _SCALE) > 0.5 * _SCALE)
    return np.concatenate(votes) if votes else np.zeros(0, dtype=bool)


def decode_bits(votes: np.ndarray, length: int) -> np.ndarray:
    """The ``length``-bit message the votes spell, as ``EmbedMaxDct.decode`` averages them."""
    slot = np.arange(len(votes)) % length
    counts = np.bincount(slot, minlength=length)
    sums = np.bincount(slot, weights=votes.astype(np.float64), minlength=length)
    means = np.divide(sums, counts, out=np.zeros(length), where=counts > 0)
    return means * 255 > 127


def size_problem(width: int, height: int) -> dict[str, Any] | None:
    """A ``not_checked`` result when a picture of this size cannot be checked, else None."""
    if width * height < MIN_PIXELS:
        return {
            "status": "not_checked",
            "reason": f"image too small ({width}x{height}); the decoder needs 256x256 pixels",
        }
    if width * height > MAX_PIXELS:
        return {
            "status": "not_checked",
            "reason": f"image too large ({width}x{height}) to carry an unmodified mark",
        }
    return None


def detect_sd_watermark(image: Image.Image) -> dict[str, Any]:
    """Decode the three Stable Diffusion marks from ``image``; never raises."""
    problem = size_problem(*image.size)
    if problem is not None:
        return problem
    try:
        import cv2

        rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
        # "bgr": the scripts' RGB->BGR conversion before encoding (read back
        # without copying as RGB->YUV); "rgb": diffusers' RGB array taken as BGR.
        votes = {
            "bgr": block_votes(rgb, cv2.COLOR_RGB2YUV),
            "rgb": block_votes(rgb, cv2.COLOR_BGR2YUV),
        }
    except ImportError as exc:
        return {"status": "not_checked", "reason": f"opencv-python is not installed ({exc.name})"}
    except Exception as exc:
        return {"status": "error", "reason": reason(exc)}
    candidates = [_best_match(mark, votes) for mark in MARKS]
    found = [c for c in candidates if c["detected"]]
    match = max(found, key=lambda c: c["agreement"])["name"] if found else None
    result: dict[str, Any] = {
        "status": "detected" if match else "not_detected",
        "match": match,
        "candidates": candidates,
    }
    if match is None:
        result["note"] = NOTE
    return result


def _best_match(mark: Mark, votes: dict[str, np.ndarray]) -> dict[str, Any]:
    """How well the better of the two channel orders spells ``mark``."""
    matched, order = max(
        (int((decode_bits(block, len(mark.bits)) == mark.bits).sum()), order)
        for order, block in votes.items()
    )
    entry: dict[str, Any] = {
        "name": mark.name,
        "matched_bits": matched,
        "bits": len(mark.bits),
        "agreement": round(matched / len(mark.bits), 3),
        "channel_order": order,
        "detected": matched >= mark.min_matched,
    }
    if mark.name == "sdxl":
        entry["level"] = sdxl_level(matched)
    return entry
