"""PDQ perceptual hash (Meta, 2017), for hash-sharing programmes such as StopNCII.

PDQ turns a picture into 256 bits that survive re-encoding, resizing and mild
edits: two hashes of the same picture differ in a few bits, hashes of unrelated
pictures in about 128. Programmes that share hashes of known abusive images
(StopNCII, the Tech Coalition, ThreatExchange) exchange PDQ hashes, so a
moderator can match deepsift's output against their lists without sharing the
pictures. Matching is by Hamming distance; ThreatExchange's ``pdq/README.md``
recommends starting with a distance of 31 or less as a match and discarding
hashes whose ``quality`` is 49 or less (flat or featureless pictures hash
unreliably).

Algorithm (the ThreatExchange reference, ``pdq/cpp/hashing/pdqhashing.cpp`` and
``pdq/python/pdqhashing/hasher/pdq_hasher.py``; paper ``pdqhash-2017-10-09.pdf``):

1. the picture is converted to RGB and, as both reference front ends do, shrunk
   to fit in 512 x 512 (the Python reference uses ``Image.thumbnail((512, 512))``;
   so do we);
2. luminance ``Y = 0.299 R + 0.587 G + 0.114 B``;
3. two passes of a horizontal then vertical box filter (Jarosz 2001: together a
   tent filter), window ``ceil(side / 128)``, edges averaged over the pixels that
   exist; then decimation to 64 x 64 by sampling at the cell centres;
4. quality: the sum over neighbouring 64 x 64 pixels of ``trunc(100 |dY| / 255)``,
   divided by 90 and capped at 100;
5. the 16 x 16 block of the 2-D DCT-II at frequencies 1..16 (the DC term is
   skipped) as ``D A D^T`` with ``D[i, j] = sqrt(2/64) cos(pi (i+1)(2j+1) / 128)``;
6. bit ``k = 16 i + j`` is set where coefficient ``(i, j)`` exceeds the median
   (the 128th smallest, as the reference's Torben median returns);
7. hex: the 256 bits as one big-endian number, bit ``k`` having weight ``2**k``
   (the reference prints its 16 16-bit words from the last to the first).

Differences from the reference: it works in float32, we work in float64 and
apply the (linear, separable) blur-and-decimate as two 64 x n matrices, so a
coefficient within rounding error of the median can fall on the other side
(seen only on a synthetic checkerboard, whose many equal coefficients tie at the
median). ThreatExchange calls an implementation correct when the C++ reference's
luminance piped into it gives the reference hash exactly; the test suite does
that with the reference C++ on generated pictures (identical hashes and
qualities). Pictures smaller than 5 pixels on a side hash to all zeros with
quality 0, as in the reference C++.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["hamming_distance", "pdq_hash", "pdq_hash_from_luma", "rgb_luma"]

_DOWNSAMPLE = 512
_MIN_SIDE = 5
_LUMA = (np.float32(0.299), np.float32(0.587), np.float32(0.114))


def _dct_matrix() -> np.ndarray:
    i = np.arange(1, 17, dtype=np.float64)[:, None]
    j = np.arange(64, dtype=np.float64)[None, :]
    return np.sqrt(2.0 / 64.0) * np.cos(np.pi / 128.0 * i * (2.0 * j + 1.0))


_DCT = _dct_matrix()


@functools.lru_cache(maxsize=64)
def _tent_rows(n: int) -> np.ndarray:
    """Two box passes along a side of ``n`` pixels, then the 64 decimation samples, as a matrix.

    One pass is the reference's ``box1DFloat``: output ``k`` is the mean of inputs
    ``lo[k] .. hi[k] - 1`` with ``lo = k - (window - half)``, ``hi = k + half``,
    ``half = (window + 2) // 2``, clipped to the side (so the mean is over the
    inputs that exist), ``window = ceil(n / 128)``. Both passes and the sampling
    are linear, so the whole chain is a 64 x n matrix ``S B B``; the 2-D filter is
    separable, giving ``64x64 = (S_r B_r B_r) luma (S_c B_c B_c)^T``.
    """
    window = (n + 127) // 128
    half = (window + 2) // 2
    k = np.arange(n)
    lo = np.maximum(k - (window - half), 0)
    hi = np.minimum(k + half, n)
    count = (hi - lo).astype(np.float64)
    samples = ((np.arange(64) + 0.5) * n / 64).astype(np.int64)
    # S B: the sampled rows of one pass.
    first = (k >= lo[samples, None]) & (k < hi[samples, None])
    first = first / count[samples, None]
    # (S B) B: column m of B is 1 / count[k] for the k with lo[k] <= m < hi[k], a
    # contiguous run of k because lo and hi never decrease.
    csum = np.zeros((64, n + 1))
    np.cumsum(first / count, axis=1, out=csum[:, 1:])
    start = np.searchsorted(hi, k, side="right")
    stop = np.searchsorted(lo, k, side="right")
    matrix = csum[:, stop] - csum[:, start]
    matrix.flags.writeable = False
    return matrix


def _jarosz_downsample(luma: np.ndarray) -> np.ndarray:
    """The reference's two X-then-Y box passes and 64 x 64 decimation."""
    rows, cols = luma.shape
    if rows == 64 and cols == 64:
        return luma.copy()
    return (_tent_rows(rows) @ luma) @ _tent_rows(cols).T


def _quality(small: np.ndarray) -> int:
    vertical = np.trunc((small[:-1, :] - small[1:, :]) * 100.0 / 255.0)
    horizontal = np.trunc((small[:, :-1] - small[:, 1:]) * 100.0 / 255.0)
    gradient_sum = int(np.abs(vertical).sum() + np.abs(horizontal).sum())
    return min(gradient_sum // 90, 100)


def _bits_to_hex(bits: np.ndarray) -> str:
    value = 0
    for k in np.flatnonzero(bits):
        value |= 1 << int(k)
    return f"{value:064x}"


def pdq_hash_from_luma(luma: np.ndarray) -> dict[str, Any]:
    """PDQ of a 2-D luminance array (rows x columns, values 0..255), no resizing.

    Returns ``{"hash": 64 hex digits, "quality": 0..100}``.
    """
    luma = np.asarray(luma, dtype=np.float64)
    if luma.ndim != 2:
        raise ValueError(f"luma must be 2-D, got shape {luma.shape}")
    if min(luma.shape) < _MIN_SIDE:
        return {"hash": "0" * 64, "quality": 0}
    small = _jarosz_downsample(luma)
    coefficients = _DCT @ small @ _DCT.T
    flat = coefficients.ravel()
    median = np.partition(flat, 127)[127]
    return {"hash": _bits_to_hex(flat > median), "quality": _quality(small)}


def rgb_luma(image: Image.Image) -> np.ndarray:
    """The reference's float32 luminance of an RGB picture."""
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.float32)
    r, g, b = _LUMA
    return r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]


def pdq_hash(image: Image.Image) -> dict[str, Any]:
    """PDQ hash of a decoded picture: ``{"hash": "<64 hex digits>", "quality": int}``.

    The picture is used as given (apply EXIF orientation first if the displayed
    orientation is wanted); it is not modified. Alpha is dropped as the
    reference does (``convert("RGB")``).
    """
    work = image if image.mode == "RGB" else image.convert("RGB")
    if work.width > _DOWNSAMPLE or work.height > _DOWNSAMPLE:
        work = work.copy() if work is image else work  # thumbnail() works in place
        work.thumbnail((_DOWNSAMPLE, _DOWNSAMPLE))
    return pdq_hash_from_luma(rgb_luma(work))


def hamming_distance(hash_a: str, hash_b: str) -> int:
    """Number of differing bits between two PDQ hashes given as hex strings."""
    return (int(hash_a, 16) ^ int(hash_b, 16)).bit_count()
