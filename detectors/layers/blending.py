"""Blending utilities shared by the blending-based face-forgery detectors (SBI, Face X-ray).

Both detectors make their training fakes from real faces: a face region (a mask
from facial landmarks, randomly deformed and blurred) is alpha-blended from a
source face into a target face. Face X-ray (Li et al., CVPR 2020) blends
another person's face in; SBI (Shiohara and Yamasaki, CVPR 2022) blends the
same face after a colour/frequency augmentation and a small shift. This module
holds what they share, written after the reference code (github.com/mapooon/
SelfBlendedImages ``src/utils/sbi.py``, ``blend.py``, ``funcs.py``;
github.com/AlgoHunt/Face-Xray ``bi_online_generation.py``, ``DeepFakeMask.py``)
with numpy, scipy, scikit-image and torch instead of OpenCV, albumentations and
imgaug:

* **landmarks**: :func:`read_landmarks` reads ``record.extra["landmarks"]`` (a
  float32 ``.npy`` of shape (68, 2), dlib-68 order, or (81, 2) from the dlib-81
  model, in the crop's pixel coordinates); :func:`flip_landmarks`,
  :func:`scale_landmarks`; :func:`template_landmarks` (an approximate dlib-68
  face for tests and demos); :func:`ellipse_mask`, the landmark-free fallback;
* **masks**: :func:`fill_convex_hull` and :func:`hull_mask` (the four hull
  variants of Face X-ray's ``DeepFakeMask.py`` that SBI's ``random_get_hull``
  draws from);
* **deformation**: :func:`random_affine`, :func:`elastic_deform`,
  :func:`grid_deform` (piecewise-affine warp of a 4 x 4 grid),
  :func:`random_erode_dilate`;
* **filters**: :func:`gaussian_blur` with OpenCV's kernel and border rules,
  :func:`resize`;
* **colour/frequency augmentation** of the source or target: :func:`rgb_shift`,
  :func:`hsv_shift`, :func:`brightness_contrast`, :func:`downscale`,
  :func:`sharpen`, :func:`jpeg`, with the reference's parameter draws in
  :func:`sample_source_augment` / :func:`source_augment` and
  :func:`sample_pair_augment` / :func:`pair_augment`;
* **blending**: :func:`alpha_blend`, :func:`blending_boundary` (``4 M (1 - M)``),
  :func:`color_transfer_mean`, :func:`feather_weights`,
  :func:`similarity_matrix` and :func:`warp_affine` (aligning one face to
  another's landmarks);
* **losses on (real, blended) pairs**: :func:`paired_inputs`,
  :func:`weighted_bce`.

Images are uint8 (H, W, 3) arrays; masks are float (H, W) arrays in [0, 1].
Every random function takes a :class:`numpy.random.Generator`, so its result is
a function of the seed (the detectors seed it from Python's ``random``, which
the engine reseeds every epoch and PyTorch reseeds in every loader worker).
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

log = logging.getLogger(__name__)

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def rng_from_python() -> np.random.Generator:
    """A numpy generator seeded from Python's ``random`` (reseeded per epoch and per worker)."""
    return np.random.default_rng(random.getrandbits(64))


# -- landmarks ------------------------------------------------------------------------
#: dlib-81's 13 forehead points in hull order, as SBI's ``reorder_landmark`` puts them
DLIB81_FOREHEAD_ORDER = (77, 75, 76, 68, 69, 70, 71, 80, 72, 73, 79, 74, 78)


def _flip_permutation(n: int) -> np.ndarray:
    """Index ``p`` with ``flipped[i] = landmarks[p[i]]`` (SBI's ``hflip``), for 68 or 81 points."""
    p = np.arange(n)
    p[0:17] = np.arange(16, -1, -1)  # jaw
    p[17:27] = np.arange(26, 16, -1)  # brows
    p[31:36] = np.arange(35, 30, -1)  # nostrils (27:31, the bridge, stays)
    p[36:40] = np.arange(45, 41, -1)  # eyes
    p[40:42] = np.arange(47, 45, -1)
    p[42:46] = np.arange(39, 35, -1)
    p[46:48] = np.arange(41, 39, -1)
    p[48:55] = np.arange(54, 47, -1)  # outer lips
    p[55:60] = np.arange(59, 54, -1)
    p[60:65] = np.arange(64, 59, -1)  # inner lips
    p[65:68] = np.arange(67, 64, -1)
    if n == 81:
        p[68:81] = np.arange(80, 67, -1)  # forehead (after reordering)
    return p


#: why a record's landmarks could not be used: the transforms put the code in the batch
#: (``landmarks_status``) and the training step warns once per code, in the main process
#: (loader workers are re-created every epoch, so a warning there would repeat)
LANDMARKS_OK, LANDMARKS_MISSING, LANDMARKS_UNREADABLE, LANDMARKS_BAD_SHAPE = 0, 1, 2, 3
_LANDMARK_PROBLEMS = {
    LANDMARKS_MISSING: "have no landmarks (record.extra['landmarks'])",
    LANDMARKS_UNREADABLE: "have landmark files that cannot be read (paths in the DEBUG log)",
    LANDMARKS_BAD_SHAPE: "have landmarks that are not finite (68, 2) or (81, 2) arrays",
}


def read_landmarks(record: Any) -> tuple[np.ndarray | None, int]:
    """The landmarks of ``record`` as float32 (68, 2) or (81, 2) (x, y), and a status code.

    ``record.extra["landmarks"]`` is the path of a ``.npy`` (an array is accepted
    too). (1, N, 2) arrays (SBI's own landmark files) are squeezed; 81-point
    arrays are expected in the raw order of dlib's
    ``shape_predictor_81_face_landmarks.dat`` and get SBI's forehead reordering
    (:data:`DLIB81_FOREHEAD_ORDER`). Without usable landmarks: ``None`` and
    :data:`LANDMARKS_MISSING`, :data:`LANDMARKS_UNREADABLE` or
    :data:`LANDMARKS_BAD_SHAPE` (the file named in a DEBUG log line).
    """
    extra = getattr(record, "extra", None) or {}
    value = extra.get("landmarks") if isinstance(extra, Mapping) else None
    if value is None:
        return None, LANDMARKS_MISSING
    name = "an in-memory array" if isinstance(value, np.ndarray) else repr(str(value))
    try:
        array = value if isinstance(value, np.ndarray) else np.load(Path(value), allow_pickle=False)
        array = np.asarray(array, dtype=np.float32)
    except (OSError, ValueError, TypeError) as exc:
        log.debug("cannot read landmarks %s (%s: %s)", name, type(exc).__name__, exc)
        return None, LANDMARKS_UNREADABLE
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape not in ((68, 2), (81, 2)) or not np.isfinite(array).all():
        log.debug("landmarks %s have shape %s or non-finite values", name, array.shape)
        return None, LANDMARKS_BAD_SHAPE
    if len(array) == 81:
        array = array.copy()
        array[68:] = array[list(DLIB81_FOREHEAD_ORDER)]
    return array, LANDMARKS_OK


def load_landmarks(record: Any) -> np.ndarray | None:
    """:func:`read_landmarks` without the status code."""
    return read_landmarks(record)[0]


def warn_landmark_status(status: torch.Tensor | None, who: str, fallback: str) -> None:
    """One warning per kind of landmark problem seen in a batch's ``landmarks_status``."""
    if status is None:
        return
    for code in sorted(set(status.flatten().tolist()) - {LANDMARKS_OK}):
        problem = _LANDMARK_PROBLEMS.get(int(code), f"have landmark status {code}")
        warn_once(
            f"{who}-landmarks-{code}",
            f"{who}: some real training records {problem}; {fallback} (run the face "
            "preprocessing to cache dlib landmarks)",
        )


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored image (points renumbered as SBI's ``hflip``).

    x becomes ``width - 1 - x`` (pixel centres; the reference uses ``width - x``).
    """
    out = landmarks[_flip_permutation(len(landmarks))].copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out


def scale_landmarks(
    landmarks: np.ndarray, old_size: tuple[int, int], new_size: tuple[int, int]
) -> np.ndarray:
    """Landmarks after resizing an image from ``old_size`` to ``new_size`` (both (H, W)).

    Pixel-centre convention, as ``resize`` (``align_corners=False``).
    """
    out = landmarks.astype(np.float32).copy()
    out[:, 0] = (out[:, 0] + 0.5) * new_size[1] / old_size[1] - 0.5
    out[:, 1] = (out[:, 1] + 0.5) * new_size[0] / old_size[0] - 0.5
    return out


def template_landmarks(width: int, height: int, forehead: bool = False) -> np.ndarray:
    """An approximate, left-right symmetric dlib-68 face (81 points with ``forehead``).

    Not a fitted mean shape: a hand-made layout with every point group in its
    dlib place (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67),
    filling the middle of a ``width`` x ``height`` crop. For tests and demos.
    """
    pts: list[tuple[float, float]] = []
    for i in range(17):  # jaw: lower half-ellipse from the left temple to the right
        a = np.pi + np.pi * i / 16
        pts.append((0.5 + 0.5 * np.cos(a), 0.3 - 0.7 * np.sin(a)))
    for x0 in (0.12, 0.58):  # brows, left to right
        pts += [(x0 + 0.075 * k, 0.16 - 0.05 * np.sin(np.pi * k / 4)) for k in range(5)]
    pts += [(0.5, 0.25 + 0.1 * k) for k in range(4)]  # nose bridge
    pts += [(0.4 + 0.05 * k, 0.62 + 0.03 * (1 - abs(k - 2) / 2)) for k in range(5)]  # nostrils
    for cx in (0.3, 0.7):  # eyes: corner, two upper, corner, two lower
        for a in (180, 120, 60, 0, 300, 240):
            r = np.deg2rad(a)
            pts.append((cx + 0.09 * np.cos(r), 0.3 - 0.04 * np.sin(r)))
    for rx, ry, angles in (
        (0.17, 0.07, [180, 150, 120, 90, 60, 30, 0, 330, 300, 270, 240, 210]),
        (0.10, 0.03, [180, 135, 90, 45, 0, 315, 270, 225]),
    ):  # outer and inner lips
        for a in angles:
            r = np.deg2rad(a)
            pts.append((0.5 + rx * np.cos(r), 0.78 - ry * np.sin(r)))
    if forehead:  # 13 points over the brows, in hull order (as after reordering)
        pts += [(0.5 - 0.45 * np.cos(a), 0.16 - 0.3 * np.sin(a)) for a in np.linspace(0, np.pi, 13)]
    unit = np.asarray(pts, dtype=np.float64)
    out = np.empty_like(unit, dtype=np.float32)
    out[:, 0] = (0.2 + 0.6 * unit[:, 0]) * (width - 1)  # mirror-symmetric: x -> W - 1 - x
    out[:, 1] = (0.22 + 0.62 * unit[:, 1]) * (height - 1)
    return out


# -- masks ----------------------------------------------------------------------------
def fill_convex_hull(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) mask, 1 on and inside the convex hull of ``points`` (x, y), 0 elsewhere.

    Rasterised by PIL's polygon fill (edge pixels included, as ``cv2.fillConvexPoly``).
    """
    from PIL import ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    try:
        verts = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # fewer than 3 points, or all on a line: a segment
        verts = pts[[0, -1]] if len(pts) else pts  # np.unique sorts: the two ends
    if len(verts) >= 3:
        draw.polygon([tuple(v) for v in verts], fill=1, outline=1)
    elif len(verts) == 2 and not np.array_equal(verts[0], verts[1]):
        draw.line([tuple(v) for v in verts], fill=1)
    elif len(verts):
        draw.point([tuple(verts[0])], fill=1)
    return np.asarray(canvas, dtype=np.float32)


#: Face X-ray's ``random_get_hull`` choices (``DeepFakeMask.py``), drawn uniformly
HULL_KINDS = ("dfl_full", "extended", "components", "facehull")


def _components(lm: np.ndarray) -> list[np.ndarray]:
    """The eight part hulls of ``DeepFakeMask.components`` (jaws, cheeks, ridge, eyes, nose)."""
    return [
        np.concatenate([lm[0:9], lm[17:18]]),
        np.concatenate([lm[8:17], lm[26:27]]),
        np.concatenate([lm[17:20], lm[8:9]]),
        np.concatenate([lm[24:27], lm[8:9]]),
        np.concatenate([lm[19:25], lm[8:9]]),
        np.concatenate([lm[17:22], lm[27:28], lm[31:36], lm[8:9]]),
        np.concatenate([lm[22:27], lm[27:28], lm[31:36], lm[8:9]]),
        np.concatenate([lm[27:31], lm[31:36]]),
    ]


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], kind: str = "facehull") -> np.ndarray:
    """A face mask from landmarks, after Face X-ray's ``DeepFakeMask.py``.

    ``facehull``: the convex hull of all points (with 81 points, the forehead
    too); ``dfl_full``: jaw + lips, nose ridge, brows + eyes (DeepFaceLab's full
    mask); ``components``: eight part hulls; ``extended``: ``components`` with
    the brows pushed up the forehead by half their height above the eyes.
    Landmarks are rounded down to integers first, as the reference's
    ``astype('int32')``. Parts are unions of filled convex hulls.
    """
    lm = np.asarray(landmarks).astype(np.int64)
    if kind == "facehull":
        parts = [lm]
    elif kind == "dfl_full":
        parts = [
            np.concatenate([lm[0:17], lm[48:68], lm[0:1], lm[8:9], lm[16:17]]),
            np.concatenate([lm[27:31], lm[33:34]]),
            np.concatenate([lm[17:27], lm[0:1], lm[27:28], lm[16:17], lm[33:34]]),
        ]
    elif kind == "components":
        parts = _components(lm)
    elif kind == "extended":
        lm = lm.copy()
        ml, mr = (lm[36] + lm[0]) // 2, (lm[16] + lm[45]) // 2
        ql, qr = (lm[36] + ml) // 2, (lm[45] + mr) // 2
        bot_l = np.stack([ql, lm[36], lm[37], lm[38], lm[39]])
        bot_r = np.stack([lm[42], lm[43], lm[44], lm[45], qr])
        top_l, top_r = lm[17:22].copy(), lm[22:27].copy()
        lm[17:22] = top_l + (top_l - bot_l) // 2
        lm[22:27] = top_r + (top_r - bot_r) // 2
        parts = _components(lm)
    else:
        raise ValueError(f"unknown hull kind {kind!r}; valid: {', '.join(HULL_KINDS)}")
    mask = np.zeros(shape, dtype=np.float32)
    for part in parts:
        np.maximum(mask, fill_convex_hull(part, shape), out=mask)
    return mask


def ellipse_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The landmark-free fallback: a filled ellipse jittered around the face's usual place.

    Face crops are centred on the face, so the ellipse is centred at (0.5 W,
    0.55 H) +- 5 %, with semi-axes 28-38 % of the width and 36-46 % of the
    height, rotated by up to +-10 degrees.
    """
    from skimage.draw import ellipse

    h, w = shape
    cy = h * (0.55 + rng.uniform(-0.05, 0.05))
    cx = w * (0.5 + rng.uniform(-0.05, 0.05))
    ry, rx = h * rng.uniform(0.36, 0.46), w * rng.uniform(0.28, 0.38)
    rotation = np.deg2rad(rng.uniform(-10.0, 10.0))
    mask = np.zeros(shape, dtype=np.float32)
    rr, cc = ellipse(cy, cx, ry, rx, shape=shape, rotation=rotation)
    mask[rr, cc] = 1.0
    return mask


# -- filters --------------------------------------------------------------------------
#: OpenCV's fixed kernels for ``GaussianBlur`` with sigma <= 0 and ksize <= 7
_SMALL_GAUSSIANS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def gaussian_kernel(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """OpenCV's ``getGaussianKernel(ksize, sigma)`` (sigma <= 0: derived from ksize)."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd and positive, got {ksize}")
    if sigma <= 0 and ksize in _SMALL_GAUSSIANS:
        return np.asarray(_SMALL_GAUSSIANS[ksize], dtype=np.float64)
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(array: np.ndarray, ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.GaussianBlur(array, (ksize, ksize), sigma)`` in float64 (BORDER_REFLECT_101)."""
    kernel = gaussian_kernel(ksize, sigma)
    out = ndimage.correlate1d(np.asarray(array, dtype=np.float64), kernel, axis=0, mode="mirror")
    return ndimage.correlate1d(out, kernel, axis=1, mode="mirror")


def resize(array: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array to ``size`` = (H, W), as float32.

    ``bilinear``: half-pixel centres and no anti-aliasing (OpenCV's
    ``INTER_LINEAR``); ``nearest``: ``floor(dst * in / out)`` (``INTER_NEAREST``).
    """
    a = np.asarray(array, dtype=np.float32)
    if a.shape[:2] == tuple(size):
        return a.copy()
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t[None, None] if a.ndim == 2 else t.permute(2, 0, 1)[None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(t, size=tuple(int(s) for s in size), mode=mode, **kwargs)[0]
    return (out[0] if a.ndim == 2 else out.permute(1, 2, 0)).numpy()


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Round and clip to uint8."""
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


# -- deformation ----------------------------------------------------------------------
def random_affine(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    translate: tuple[float, float] = (0.03, 0.015),
    scale: tuple[float, float] = (0.95, 1 / 0.95),
) -> tuple[np.ndarray, np.ndarray]:
    """SBI's ``randaffine`` first part: ``albumentations.Affine`` on image and mask alike.

    Independent x and y scales in ``scale`` about the image centre (Affine's
    ``keep_ratio=False``), shifts up to ``translate`` of the width and height;
    bilinear for the image, nearest for the mask, zeros outside.
    """
    h, w = mask.shape
    sx, sy = rng.uniform(scale[0], scale[1], size=2)
    tx = rng.uniform(-translate[0], translate[0]) * w
    ty = rng.uniform(-translate[1], translate[1]) * h
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # output (y, x) samples input ((y - cy - ty) / sy + cy, (x - cx - tx) / sx + cx)
    inv = np.array([1 / sy, 1 / sx])
    offset = np.array([cy - (cy + ty) / sy, cx - (cx + tx) / sx])
    out_image = np.empty_like(image)
    for c in range(image.shape[2]):
        channel = ndimage.affine_transform(
            image[..., c].astype(np.float64), inv, offset, order=1, mode="constant", cval=0.0
        )
        out_image[..., c] = to_uint8(channel)
    out_mask = ndimage.affine_transform(mask, inv, offset, order=0, mode="constant", cval=0.0)
    return out_image, out_mask.astype(np.float32)


def elastic_deform(
    mask: np.ndarray, rng: np.random.Generator, alpha: float = 50.0, sigma: float = 7.0
) -> np.ndarray:
    """SBI's ``randaffine`` second part: ``albumentations.ElasticTransform`` on the mask.

    Displacements ``gaussian_filter(U(-1, 1), sigma) * alpha`` per axis
    (``alpha_affine=0``: no affine part), nearest-neighbour resampling,
    reflected borders.
    """
    h, w = mask.shape
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="constant") * alpha
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="constant") * alpha
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = ndimage.map_coordinates(mask, [y + dy, x + dx], order=0, mode="mirror")
    return out.astype(np.float32)


def grid_deform(
    mask: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.01, 0.15),
    grid: int = 4,
) -> np.ndarray:
    """Face X-ray's mask deformation: random offsets of a ``grid`` x ``grid`` lattice.

    After ``imgaug.augmenters.PiecewiseAffine(scale=(0.01, 0.15))`` as AlgoHunt's
    ``bi_online_generation.py`` uses it: one sigma ``s ~ U(scale)`` per image,
    every point of a 4 x 4 lattice spanning the image moved by ``N(0, s)`` times
    the image height (rows) and width (columns); bilinear resampling, zeros
    outside. The displacement between lattice points is interpolated
    bilinearly rather than affinely per triangle (a smooth warp of the same
    amplitude, ten times faster than scikit-image's piecewise-affine warp).
    """
    h, w = mask.shape
    s = rng.uniform(*scale)
    offsets = rng.normal(0.0, s, (2, grid, grid)) * np.array([h, w]).reshape(2, 1, 1)
    field = F.interpolate(
        torch.from_numpy(offsets)[None], size=(h, w), mode="bilinear", align_corners=True
    )[0].numpy()
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = ndimage.map_coordinates(
        mask.astype(np.float64), [y - field[0], x - field[1]], order=1, mode="constant", cval=0.0
    )
    return out.astype(np.float32)


def random_erode_dilate(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AlgoHunt's ``random_erode_dilate``: erode (k in 1..21) or dilate (k in 1..5), odd k.

    The mask is first binarised as the reference's ``astype(np.uint8)`` does
    (values below 1 become 0); square structuring elements; erosion keeps the
    image border as foreground (OpenCV's default border for ``erode``).
    """
    binary = mask >= 1.0 - 1e-6
    if rng.random() > 0.5:
        k = int(rng.integers(1, 22))
        k += k % 2 == 0
        out = ndimage.binary_erosion(binary, np.ones((k, k), bool), border_value=1)
    else:
        k = int(rng.integers(1, 6))
        k += k % 2 == 0
        out = ndimage.binary_dilation(binary, np.ones((k, k), bool))
    return out.astype(np.float32)


# -- colour and frequency augmentation -------------------------------------------------
def rgb_shift(image: np.ndarray, shifts: Sequence[float]) -> np.ndarray:
    """Add a per-channel shift, clip, and truncate to uint8 (albumentations' LUT)."""
    out = image.astype(np.float64) + np.asarray(shifts, dtype=np.float64)
    return np.clip(out, 0, 255).astype(np.uint8)


def _rgb_to_hsv8(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's uint8 RGB -> HSV: hue in 2-degree units (0-179), saturation and value 0-255."""
    rgb = image.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    safe = np.where(diff > 0, diff, 1.0)
    s = np.where(v > 0, np.rint(diff * 255.0 / np.where(v > 0, v, 1.0)), 0.0)
    h = np.where(
        v == r,
        60.0 * (g - b) / safe,
        np.where(v == g, 120 + 60.0 * (b - r) / safe, 240 + 60.0 * (r - g) / safe),
    )
    h = np.where(diff > 0, np.mod(h, 360.0), 0.0)
    return np.mod(np.rint(h / 2.0), 180.0), s, v


def _hsv8_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """OpenCV's uint8 HSV -> RGB (hue in 2-degree units), rounded to uint8."""
    sector_f = h * 2.0 / 60.0
    sector = np.floor(sector_f).astype(np.int64) % 6
    f = sector_f - np.floor(sector_f)
    sat, val = s / 255.0, v
    p, q, t = val * (1 - sat), val * (1 - sat * f), val * (1 - sat * (1 - f))
    r = np.choose(sector, [val, q, p, p, t, val])
    g = np.choose(sector, [t, val, val, q, p, p])
    b = np.choose(sector, [p, p, t, val, val, q])
    out = np.stack([r, g, b], axis=-1)
    return to_uint8(out)


def hsv_shift(image: np.ndarray, hue: float, sat: float, val: float) -> np.ndarray:
    """albumentations' ``HueSaturationValue`` on uint8 images (its ``shift_hsv_uint8``).

    The image goes to OpenCV's 8-bit HSV (hue in 2-degree units), each channel
    goes through albumentations' lookup table ``(x + shift)`` (hue modulo 180,
    the others clipped to 0-255) truncated to an integer, and back to RGB. With
    the reference's +-0.3 limits a positive draw changes nothing and a negative
    one lowers the channel by one unit; the 8-bit HSV round trip itself moves
    saturated colours by a grey level or two, as in the reference.
    """
    h, s, v = _rgb_to_hsv8(image)
    if hue != 0:
        h = np.floor(np.mod(h + hue, 180.0))
    if sat != 0:
        s = np.floor(np.clip(s + sat, 0, 255))
    if val != 0:
        v = np.floor(np.clip(v + val, 0, 255))
    return _hsv8_to_rgb(h, s, v)


def brightness_contrast(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``image * alpha + beta * 255``, clipped and truncated (albumentations, ``brightness_by_max``)."""
    out = image.astype(np.float64) * alpha + beta * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def downscale(image: np.ndarray, ratio: int) -> np.ndarray:
    """SBI's ``RandomDownScale``: nearest down-sampling by ``ratio``, bilinear back up."""
    h, w = image.shape[:2]
    small = resize(image, (int(h / ratio), int(w / ratio)), mode="nearest")
    return to_uint8(resize(small, (h, w), mode="bilinear"))


def sharpen(image: np.ndarray, alpha: float, lightness: float) -> np.ndarray:
    """``albumentations.Sharpen``: a 3x3 kernel ``(1 - a) I + a [[-1]*3, [-1, 8 + L, -1], [-1]*3]``.

    Applied per channel with reflected borders (``cv2.filter2D``), rounded and clipped.
    """
    effect = -np.ones((3, 3))
    effect[1, 1] = 8 + lightness
    identity = np.zeros((3, 3))
    identity[1, 1] = 1
    kernel = (1 - alpha) * identity + alpha * effect
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        filtered = ndimage.correlate(image[..., c].astype(np.float64), kernel, mode="mirror")
        out[..., c] = to_uint8(filtered)
    return out


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` and decode (PIL)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def sample_source_augment(rng: np.random.Generator) -> dict[str, Any]:
    """Draw SBI's ``get_source_transforms`` parameters.

    ``RGBShift(+-20, p=0.3)``, ``HueSaturationValue(+-0.3, p=1)``,
    ``RandomBrightnessContrast(+-0.1, +-0.1, p=1)``, then one of
    ``RandomDownScale`` (ratio 2 or 4) and ``Sharpen(alpha 0.2-0.5, lightness 0.5-1)``.
    """
    return {
        "rgb": rng.uniform(-20, 20, 3) if rng.random() < 0.3 else None,
        "hsv": rng.uniform(-0.3, 0.3, 3),
        "bc": (1 + rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)),
        "frequency": (
            ("downscale", int(rng.choice([2, 4])))
            if rng.random() < 0.5
            else ("sharpen", rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0))
        ),
    }


def source_augment(image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Apply :func:`sample_source_augment`'s parameters (colour, then frequency)."""
    if params["rgb"] is not None:
        image = rgb_shift(image, params["rgb"])
    image = hsv_shift(image, *params["hsv"])
    image = brightness_contrast(image, *params["bc"])
    kind, *args = params["frequency"]
    return downscale(image, *args) if kind == "downscale" else sharpen(image, *args)


def sample_pair_augment(rng: np.random.Generator) -> dict[str, Any]:
    """Draw SBI's ``get_transforms`` parameters, applied alike to the real and the fake.

    ``RGBShift(+-20, p=0.3)``, ``HueSaturationValue(+-0.3, p=0.3)``,
    ``RandomBrightnessContrast(+-0.3, +-0.3, p=0.3)``,
    ``ImageCompression(40-100, p=0.5)``.
    """
    return {
        "rgb": rng.uniform(-20, 20, 3) if rng.random() < 0.3 else None,
        "hsv": rng.uniform(-0.3, 0.3, 3) if rng.random() < 0.3 else None,
        "bc": (1 + rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)) if rng.random() < 0.3 else None,
        "jpeg": int(rng.integers(40, 101)) if rng.random() < 0.5 else None,
    }


def pair_augment(image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Apply :func:`sample_pair_augment`'s parameters."""
    if params["rgb"] is not None:
        image = rgb_shift(image, params["rgb"])
    if params["hsv"] is not None:
        image = hsv_shift(image, *params["hsv"])
    if params["bc"] is not None:
        image = brightness_contrast(image, *params["bc"])
    if params["jpeg"] is not None:
        image = jpeg(image, params["jpeg"])
    return image


# -- blending -------------------------------------------------------------------------
def alpha_blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * source + (1 - mask) * target`` in float64 (mask (H, W), images (H, W, C))."""
    m = np.asarray(mask, dtype=np.float64)[..., None]
    return m * source.astype(np.float64) + (1.0 - m) * target.astype(np.float64)


def blending_boundary(mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The face X-ray of a blend with soft mask ``M``: ``B = 4 M (1 - M)`` (0 where M is 0 or 1)."""
    return 4.0 * mask * (1.0 - mask)


def color_transfer_mean(reference: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``image``'s mean colour inside ``mask`` to ``reference``'s (AlgoHunt's ``colorTransfer``).

    Pixels outside the mask are unchanged; inside, ``image - mean(image) +
    mean(reference)`` per channel, clipped and truncated to uint8.
    """
    inside = np.asarray(mask) != 0
    out = image.copy()
    if not inside.any():
        return out
    src = reference[inside].astype(np.float64)
    dst = image[inside].astype(np.float64)
    out[inside] = np.clip(dst - dst.mean(axis=0) + src.mean(axis=0), 0, 255).astype(np.uint8)
    return out


def feather_weights(mask: np.ndarray, amount: float = 0.2) -> np.ndarray:
    """AlgoHunt's ``blendImages`` weights: distance into the hull over ``amount`` x face size.

    For each pixel of the (binary) mask, its distance to the border of the
    convex hull of the mask's pixels (0 on the border), divided by ``amount`` times the larger
    side of the mask's bounding box, clipped to [0, 1]; 0 outside the mask.
    """
    inside = np.asarray(mask) != 0
    if not inside.any():
        return np.zeros(mask.shape, dtype=np.float32)
    rows, cols = np.nonzero(inside)
    face_size = max(rows.max() - rows.min(), cols.max() - cols.min(), 1)
    hull = fill_convex_hull(np.stack([cols, rows], axis=1), mask.shape)
    # distance to the nearest pixel outside the hull, less one: 0 on the hull's edge, as
    # ``cv2.pointPolygonTest`` gives for an edge pixel
    distance = ndimage.distance_transform_edt(np.pad(hull, 1))[1:-1, 1:-1] - 1.0
    weights = np.clip(distance / (amount * face_size), 0.0, 1.0) * inside
    return weights.astype(np.float32)


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (scale, rotation, shift) mapping ``source`` points onto ``target``.

    Least squares (Umeyama, no reflection), as scikit-image's ``SimilarityTransform``.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    var = (s**2).sum() / len(src)
    scale = (sv * sign).sum() / var if var > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def warp_affine(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, shape[::-1])``-like: ``matrix`` maps input (x, y) to output.

    Bilinear, reflected borders (``BORDER_REFLECT``); uint8 in, uint8 out.
    """
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    # scipy works in (row, col) = (y, x): swap the axes of the inverse map
    rc = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
    offset = np.array([inv[1, 2], inv[0, 2]])
    out = np.empty(tuple(shape) + image.shape[2:], dtype=np.uint8)
    for c in range(image.shape[2]):
        channel = ndimage.affine_transform(
            image[..., c].astype(np.float64),
            rc,
            offset,
            output_shape=tuple(shape),
            order=1,
            mode="reflect",
        )
        out[..., c] = to_uint8(channel)
    return out


# -- (real, blended) pairs in a batch -------------------------------------------------
def image_tensor(
    image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float (3, size, size): bilinear resize (no anti-aliasing),
    rounded to 8 bits (as ``cv2.resize`` on uint8), divided by 255, then ``(x - mean) / std``."""
    if image.shape[:2] != (size, size):
        image = to_uint8(resize(image, (size, size)))
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


def paired_inputs(
    batch: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, targets and per-image loss weights of a batch of (real, blended) pairs.

    ``image`` (label ``batch["label"]``, weight ``weight_image``) is stacked on
    ``image_blended`` (label 1, weight ``weight_blended``), as the references
    concatenate the reals and their blended fakes into one batch.
    """
    images = torch.cat([batch["image"], batch["image_blended"]])
    label = batch["label"].float()
    targets = torch.cat([label, torch.ones_like(label)])
    weights = torch.cat([batch["weight_image"], batch["weight_blended"]]).float()
    return images, targets, weights


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted mean of per-image binary cross-entropy (0, with a graph, when all weights are 0)."""
    per_image = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (per_image * weights).sum() / weights.sum().clamp_min(1.0)
