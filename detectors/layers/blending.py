"""Blending utilities shared by the blending-based face-forgery detectors (SBI, Face X-ray).

Both detectors make their training fakes from real faces: a face region (a mask
from facial landmarks, randomly deformed and blurred) is alpha-blended from a
source face into a target face. Face X-ray (Li et al., CVPR 2020) blends
another person's face in; SBI (Shiohara and Yamasaki, CVPR 2022) blends the
same face after a colour/frequency augmentation and a small shift. This module
holds what they share, written after the reference code (github.com/mapooon/
SelfBlendedImages ``src/utils/sbi.py``, ``blend.py``, ``funcs.py``;
github.com/AlgoHunt/Face-Xray ``bi_online_generation.py``, ``DeepFakeMask.py``;
DeepfakeBench ``training/dataset/ff_blend.py``) and on the libraries they call:
OpenCV for every filter, warp, colour conversion and mask drawing (the
references call it directly or through albumentations, whose OpenCV calls and
flags are reproduced here: albumentations itself is not a dependency),
scikit-image for the Umeyama similarity and the ellipse fallback:

* **landmarks**: :func:`read_landmarks` reads ``record.extra["landmarks"]`` (a
  float32 ``.npy`` of shape (68, 2), dlib-68 order, or (81, 2) from the dlib-81
  model, in the crop's pixel coordinates); :func:`flip_landmarks`,
  :func:`scale_landmarks`; :func:`template_landmarks` (an approximate dlib-68
  face for tests and demos); :func:`ellipse_mask`, the landmark-free fallback;
* **masks**: :func:`fill_convex_hull` and :func:`hull_mask` (the four hull
  variants of Face X-ray's ``DeepFakeMask.py`` that SBI's ``random_get_hull``
  draws from), ``cv2.convexHull`` + ``cv2.fillConvexPoly``;
* **filters and resampling**: :func:`gaussian_blur` (``cv2.GaussianBlur``),
  :func:`resize` (``cv2.resize``);
* **deformation**: :func:`random_affine` (``cv2.warpAffine``, albumentations'
  ``Affine``), :func:`elastic_deform` (``cv2.remap``, its ``ElasticTransform``),
  :func:`grid_deform` (a 4 x 4 lattice warp), :func:`random_erode_dilate`
  (``cv2.erode``/``cv2.dilate``);
* **colour/frequency augmentation** of the source or target: :func:`rgb_shift`,
  :func:`hsv_shift` (``cv2.cvtColor`` 8-bit HSV), :func:`brightness_contrast`,
  :func:`downscale`, :func:`sharpen` (``cv2.filter2D``), :func:`jpeg`
  (``cv2.imencode``), with the reference's parameter draws in
  :func:`sample_source_augment` / :func:`source_augment` and
  :func:`sample_pair_augment` / :func:`pair_augment`;
* **blending and alignment**: :func:`alpha_blend`, :func:`blending_boundary`
  (``4 M (1 - M)``), :func:`color_transfer_mean`, :func:`feather_weights`
  (``cv2.distanceTransform``), :func:`similarity_matrix` (scikit-image's
  ``estimate_transform("similarity")``) and :func:`warp_affine` (aligning one
  face to another's landmarks);
* **losses on (real, blended) pairs**: :func:`paired_inputs`,
  :func:`weighted_bce`.

Images are uint8 (H, W, 3) arrays; masks are float (H, W) arrays in [0, 1].
Every random function takes a :class:`numpy.random.Generator`, so its result is
a function of the seed (the detectors seed it from Python's ``random``, which
the engine reseeds every epoch and PyTorch reseeds in every loader worker).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

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
def _fill_hull(canvas: np.ndarray, points: np.ndarray) -> None:
    """Draw the filled convex hull of integer ``points`` (x, y) on ``canvas`` with value 1.

    ``cv2.fillConvexPoly(canvas, cv2.convexHull(points), 1)``, as DeepFakeMask.py
    and SBI's no-library branch draw their hulls (8-connected edges included).
    OpenCV draws a hull of one point as that pixel and a hull of collinear points
    as the segment between the two ends.
    """
    if len(points):
        pts = np.ascontiguousarray(points, dtype=np.int32).reshape(-1, 1, 2)
        cv2.fillConvexPoly(canvas, cv2.convexHull(pts), 1)


def fill_convex_hull(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) mask, 1 on and inside the convex hull of ``points`` (x, y), 0 elsewhere.

    ``cv2.convexHull`` + ``cv2.fillConvexPoly`` (edge pixels included); points are
    rounded down to integers first (the references pass ``astype('int32')``
    landmarks). A hull of one pixel or one line is drawn as a point or a segment.
    """
    pts = np.floor(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int32)
    canvas = np.zeros(tuple(shape), dtype=np.uint8)
    _fill_hull(canvas, pts)
    return canvas.astype(np.float32)


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
    ``astype('int32')``. Each part is drawn with ``cv2.fillConvexPoly`` on one
    canvas (their union), as the reference; its ``facehull`` is anti-aliased
    (``LINE_AA``), this one is binary like the other kinds.
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
    canvas = np.zeros(tuple(shape), dtype=np.uint8)
    for part in parts:
        _fill_hull(canvas, part)
    return canvas.astype(np.float32)


def ellipse_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The landmark-free fallback: a filled ellipse jittered around the face's usual place.

    Face crops are centred on the face, so the ellipse is centred at (0.5 W,
    0.55 H) +- 5 %, with semi-axes 28-38 % of the width and 36-46 % of the
    height, rotated by up to +-10 degrees (``skimage.draw.ellipse``).
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


# -- filters and resampling (OpenCV) --------------------------------------------------
def _gaussian_sigma(ksize: int, sigma: float) -> float:
    """The sigma to pass OpenCV for ``GaussianBlur(ksize, sigma)`` as the references ran it.

    ``sigma <= 0`` means "from ksize": OpenCV's fixed binomial kernels for ksize
    <= 7, else its documented ``0.3 ((ksize - 1) / 2 - 1) + 0.8``, passed
    explicitly. OpenCV's bit-exact kernels (4.14 installed) also hold a fixed
    table for ksize 9 (``[4, 13, 30, 51, 60, 51, 30, 13, 4] / 256``, at most
    0.002 from the formula's); the formula kernel is this module's contract.
    Where the references use ksize 9 with sigma 0 (the first blur of SBI's
    ``get_blend_mask``, only thresholded at its maximum) both give the same mask.
    """
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd and positive, got {ksize}")
    if sigma <= 0 and ksize > 7:
        return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    return float(sigma)


def gaussian_kernel(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, sigma)`` as a 1-D float64 array (sigma <= 0: from ksize)."""
    sigma = _gaussian_sigma(ksize, sigma)
    return cv2.getGaussianKernel(int(ksize), sigma, ktype=cv2.CV_64F).ravel()


def gaussian_blur(array: np.ndarray, ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.GaussianBlur(array, (ksize, ksize), sigma)`` in float64 (``BORDER_REFLECT_101``).

    As SBI's ``get_blend_mask`` (float masks, ``sigma=0`` for the first blur) and
    DeepfakeBench's ``get_boundary`` (3 x 3) call it; the kernel is
    :func:`gaussian_kernel`'s.
    """
    sigma = _gaussian_sigma(ksize, sigma)
    a = np.ascontiguousarray(array, dtype=np.float64)
    k = (int(ksize), int(ksize))
    return cv2.GaussianBlur(a, k, sigma, borderType=cv2.BORDER_REFLECT_101)


_RESIZE_FLAGS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def resize(array: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """``cv2.resize`` of an (H, W) or (H, W, C) array to ``size`` = (H, W).

    ``bilinear``: ``INTER_LINEAR`` (half-pixel centres, no anti-aliasing);
    ``nearest``: ``INTER_NEAREST`` (``floor(dst * in / out)``). uint8, float32
    and float64 keep their dtype (uint8 is rounded by OpenCV's fixed-point
    arithmetic, as the references' ``cv2.resize`` of uint8 images); any other
    dtype is resized as float32.
    """
    if mode not in _RESIZE_FLAGS:
        raise ValueError(f"unknown resize mode {mode!r}; valid: {', '.join(_RESIZE_FLAGS)}")
    a = np.asarray(array)
    if a.dtype not in (np.uint8, np.float32, np.float64):
        a = a.astype(np.float32)
    h, w = (int(s) for s in size)
    if a.shape[:2] == (h, w):
        return a.copy()
    out = cv2.resize(np.ascontiguousarray(a), (w, h), interpolation=_RESIZE_FLAGS[mode])
    return out[..., None] if a.ndim == 3 and out.ndim == 2 else out


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Round and clip to uint8 (a copy of a uint8 array)."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a.copy()
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (x, y) coordinate maps of an (h, w) image, for ``cv2.remap``."""
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return x, y


# -- deformation ----------------------------------------------------------------------
def random_affine(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    translate: tuple[float, float] = (0.03, 0.015),
    scale: tuple[float, float] = (0.95, 1 / 0.95),
) -> tuple[np.ndarray, np.ndarray]:
    """SBI's ``randaffine`` first part: ``albumentations.Affine`` on image and mask alike.

    Independent x and y scales in ``scale`` about the image centre ((W - 1) / 2,
    (H - 1) / 2; Affine's ``keep_ratio=False``), shifts up to ``translate`` of the
    width and height; ``cv2.warpAffine`` as albumentations calls it:
    ``INTER_LINEAR`` for the image, ``INTER_NEAREST`` for the mask,
    ``BORDER_CONSTANT`` zeros outside.
    """
    h, w = mask.shape
    sx, sy = rng.uniform(scale[0], scale[1], size=2)
    tx = rng.uniform(-translate[0], translate[0]) * w
    ty = rng.uniform(-translate[1], translate[1]) * h
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # input (x, y) goes to (sx (x - cx) + cx + tx, sy (y - cy) + cy + ty)
    matrix = np.array([[sx, 0.0, cx + tx - sx * cx], [0.0, sy, cy + ty - sy * cy]])
    constant = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    out_image = cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR, **constant
    )
    out_mask = cv2.warpAffine(
        np.ascontiguousarray(mask, dtype=np.float32),
        matrix,
        (w, h),
        flags=cv2.INTER_NEAREST,
        **constant,
    )
    return out_image.reshape(image.shape), out_mask


def elastic_deform(
    mask: np.ndarray, rng: np.random.Generator, alpha: float = 50.0, sigma: float = 7.0
) -> np.ndarray:
    """SBI's ``randaffine`` second part: ``albumentations.ElasticTransform`` on the mask.

    Displacements ``GaussianBlur(U(-1, 1), sigma) * alpha`` per axis: the
    ``scipy.ndimage.gaussian_filter`` of albumentations 1.x's exact path (the
    ``alpha_affine`` API SBI calls), i.e. its kernel (radius ``int(4 sigma +
    0.5)``) and its default border, ``reflect`` (``BORDER_REFLECT``);
    ``alpha_affine=0``: no affine part; ``cv2.remap`` with ``INTER_NEAREST`` and
    ``BORDER_REFLECT_101`` (ElasticTransform's mask interpolation and border).
    """
    h, w = mask.shape
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    blur = {"ksize": (ksize, ksize), "sigmaX": sigma, "borderType": cv2.BORDER_REFLECT}
    # float32 as albumentations' maps (``np.float32(gaussian_filter(...) * alpha)``)
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), **blur) * alpha
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), **blur) * alpha
    x, y = _pixel_grid(h, w)
    return cv2.remap(
        np.ascontiguousarray(mask, dtype=np.float32),
        (x + dx).astype(np.float32),
        (y + dy).astype(np.float32),
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REFLECT_101,
    )


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
    the image height (rows) and width (columns); bilinear resampling
    (``cv2.remap``, ``INTER_LINEAR``), zeros outside (``BORDER_CONSTANT``). The
    displacement between lattice points is interpolated bilinearly rather than
    affinely per triangle (a smooth warp of the same amplitude, far faster than
    scikit-image's piecewise-affine warp, which imgaug calls).
    """
    h, w = mask.shape
    s = rng.uniform(*scale)
    offsets = rng.normal(0.0, s, (2, grid, grid)) * np.array([h, w]).reshape(2, 1, 1)
    field = F.interpolate(
        torch.from_numpy(offsets)[None], size=(h, w), mode="bilinear", align_corners=True
    )[0].numpy()
    x, y = _pixel_grid(h, w)
    return cv2.remap(
        np.ascontiguousarray(mask, dtype=np.float32),
        (x - field[1]).astype(np.float32),
        (y - field[0]).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def random_erode_dilate(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AlgoHunt's ``random_erode_dilate``: ``cv2.erode`` (k in 1..21) or ``cv2.dilate`` (k in 1..5).

    Odd k, square ``np.ones((k, k))`` kernels. The mask is first binarised as the
    reference's ``astype(np.uint8)`` does (values below 1 become 0); OpenCV's
    default border keeps the image border as foreground for the erosion.
    """
    binary = (mask >= 1.0 - 1e-6).astype(np.uint8)
    if rng.random() > 0.5:
        k = int(rng.integers(1, 22))
        k += k % 2 == 0
        out = cv2.erode(binary, np.ones((k, k), np.uint8))
    else:
        k = int(rng.integers(1, 6))
        k += k % 2 == 0
        out = cv2.dilate(binary, np.ones((k, k), np.uint8))
    return out.astype(np.float32)


# -- colour and frequency augmentation (albumentations' OpenCV calls) ------------------
def _lut(image: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """``cv2.LUT`` with one (256,) table for every channel or a (256, C) table per channel."""
    tables = np.ascontiguousarray(tables, dtype=np.uint8)
    if tables.ndim == 2:
        tables = tables.reshape(256, 1, tables.shape[1])
    return cv2.LUT(np.ascontiguousarray(image), tables).reshape(image.shape)


_LEVELS = np.arange(256, dtype=np.float64)


def rgb_shift(image: np.ndarray, shifts: Sequence[float]) -> np.ndarray:
    """Add a per-channel shift, clip, and truncate to uint8 (albumentations' ``cv2.LUT``)."""
    table = _LEVELS[:, None] + np.asarray(shifts, dtype=np.float64)[None, :]
    return _lut(image, np.clip(table, 0, 255).astype(np.uint8))


def hsv_shift(image: np.ndarray, hue: float, sat: float, val: float) -> np.ndarray:
    """albumentations' ``HueSaturationValue`` on uint8 images (its ``shift_hsv_uint8``).

    ``cv2.cvtColor(image, COLOR_RGB2HSV)`` (8-bit HSV: hue in 2-degree units,
    0-179), one lookup table per channel ``(x + shift)`` (hue modulo 180, the
    others clipped to 0-255) truncated to an integer (``cv2.LUT``), and
    ``COLOR_HSV2RGB`` back. With the reference's +-0.3 limits a positive draw
    changes nothing and a negative one lowers the channel by one unit; the
    8-bit HSV round trip itself moves saturated colours by a grey level or
    two, as in the reference.
    """
    tables = np.repeat(_LEVELS[:, None], 3, axis=1)
    if hue != 0:
        tables[:, 0] = np.mod(_LEVELS + hue, 180.0)
    if sat != 0:
        tables[:, 1] = np.clip(_LEVELS + sat, 0, 255)
    if val != 0:
        tables[:, 2] = np.clip(_LEVELS + val, 0, 255)
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    return cv2.cvtColor(_lut(hsv, tables.astype(np.uint8)), cv2.COLOR_HSV2RGB)


def brightness_contrast(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``image * alpha + beta * 255``, clipped and truncated (albumentations' ``cv2.LUT``,
    ``brightness_by_max``)."""
    return _lut(image, np.clip(_LEVELS * alpha + beta * 255.0, 0, 255).astype(np.uint8))


def downscale(image: np.ndarray, ratio: int) -> np.ndarray:
    """SBI's ``RandomDownScale``: ``cv2.resize`` by ``1 / ratio`` (``INTER_NEAREST``), back
    up with ``INTER_LINEAR``; uint8 in, uint8 out."""
    h, w = image.shape[:2]
    small = resize(image, (int(h / ratio), int(w / ratio)), mode="nearest")
    return resize(small, (h, w), mode="bilinear")


def sharpen(image: np.ndarray, alpha: float, lightness: float) -> np.ndarray:
    """``albumentations.Sharpen``: a 3x3 kernel ``(1 - a) I + a [[-1]*3, [-1, 8 + L, -1], [-1]*3]``.

    ``cv2.filter2D`` on the uint8 image (reflected borders, ``BORDER_REFLECT_101``;
    OpenCV rounds and saturates), the float32 kernel albumentations builds.
    """
    effect = -np.ones((3, 3), dtype=np.float32)
    effect[1, 1] = 8 + lightness
    identity = np.zeros((3, 3), dtype=np.float32)
    identity[1, 1] = 1
    kernel = ((1 - alpha) * identity + alpha * effect).astype(np.float32)
    out = cv2.filter2D(np.ascontiguousarray(image), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(image.shape)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode an RGB uint8 image as JPEG at ``quality`` and decode it (``cv2.imencode`` /
    ``cv2.imdecode``, as albumentations' ``ImageCompression`` and AlgoHunt's generator).

    The channels are handed to OpenCV in its BGR order, so the luma/chroma split is
    the image's own (the references pass their RGB arrays as if BGR, which swaps
    the red and blue weights of the YCbCr conversion).
    """
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


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


# -- blending and alignment -----------------------------------------------------------
def alpha_blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * source + (1 - mask) * target`` in float64 (mask (H, W), images (H, W, C)).

    Computed inside the bounding box of the mask's non-zero pixels only: outside
    it the formula gives ``target`` exactly.
    """
    m = np.asarray(mask, dtype=np.float64)
    out = target.astype(np.float64)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(m.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    mb = m[box][..., None]
    out[box] = mb * source[box].astype(np.float64) + (1.0 - mb) * out[box]
    return out


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
    convex hull of the mask's pixels (``cv2.convexHull``, 0 on the border),
    divided by ``amount`` times the larger side of the mask's bounding box,
    clipped to [0, 1]; 0 outside the mask. The reference measures the distance
    with ``cv2.pointPolygonTest`` one pixel at a time; here it is the exact
    Euclidean distance transform of the filled hull (``cv2.distanceTransform``,
    ``DIST_MASK_PRECISE``) less one: 0 on the hull's edge as the reference, and
    within a pixel of its distance inside.
    """
    inside = (np.asarray(mask) != 0).astype(np.uint8)
    points = cv2.findNonZero(inside)
    if points is None:
        return np.zeros(mask.shape, dtype=np.float32)
    _, _, width, height = cv2.boundingRect(points)
    face_size = max(width - 1, height - 1, 1)
    hull = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)  # a zero frame
    cv2.fillConvexPoly(hull, cv2.convexHull(points) + 1, 1)
    # distance to the nearest pixel outside the hull, less one: 0 on the hull's edge, as
    # ``cv2.pointPolygonTest`` gives for an edge pixel
    distance = cv2.distanceTransform(hull, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1] - 1.0
    weights = np.clip(distance / (amount * face_size), 0.0, 1.0) * inside
    return weights.astype(np.float32)


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (scale, rotation, shift) mapping ``source`` points onto ``target``.

    Least squares (Umeyama, no reflection): scikit-image's
    ``estimate_transform("similarity", source, target)``; DeepfakeBench's
    ``get_align_mat_new`` fits the same estimate with a copy of scikit-image's
    ``_umeyama`` (``estimate_scale=True``). Points that fix no similarity (all
    equal) give the translation between their means.
    """
    from skimage.transform import estimate_transform

    src = np.asarray(source, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    try:  # scikit-image >= 0.26 returns a falsy FailedEstimation whose attributes raise
        params = estimate_transform("similarity", src, dst).params
    except AttributeError:
        params = None
    if params is None or not np.isfinite(params).all():
        params = np.eye(3)
        params[:2, 2] = dst.mean(0) - src.mean(0)
    return np.array(params[:2], dtype=np.float64)


def warp_affine(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, shape[::-1])``: ``matrix`` maps input (x, y) to output.

    ``INTER_CUBIC`` with reflected borders (``BORDER_REFLECT``), the flags of
    DeepfakeBench's 2-D alignment in ``ff_blend.py``; uint8 in, uint8 out
    (OpenCV saturates the cubic overshoot).
    """
    h, w = (int(s) for s in shape)
    out = cv2.warpAffine(
        np.ascontiguousarray(image),
        np.asarray(matrix, dtype=np.float64),
        (w, h),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )
    return out.reshape((h, w, *image.shape[2:]))


# -- (real, blended) pairs in a batch -------------------------------------------------
def image_tensor(
    image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float (3, size, size): ``cv2.resize`` (``INTER_LINEAR``,
    no anti-aliasing) of the uint8 image, as SBI's loader, divided by 255, then
    ``(x - mean) / std``."""
    if image.shape[:2] != (size, size):
        image = resize(image, (size, size))
    chw = np.ascontiguousarray(to_uint8(image).transpose(2, 0, 1))
    t = torch.from_numpy(chw).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return t.sub_(m).div_(s)


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
