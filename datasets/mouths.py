"""Mouth crops for lip-motion detectors (LipForensics), cut as the authors cut theirs.

LipForensics (Haliassos et al., "Lips Don't Lie", CVPR 2021; github.com/ahaliassos/LipForensics,
``preprocessing/crop_mouths.py``, after mpc001's Lipreading_using_Temporal_Convolutional_Networks)
reads 96 x 96 mouth regions of faces aligned to a mean face:

1. the 68 landmarks of each frame are smoothed over ``SMOOTH`` (12) frames: frame ``i`` uses
   the mean of the landmarks of frames ``i .. i + 11`` of the same face; the last 11 frames
   of a run, which have no full window ahead, reuse the transform of the last frame that had
   one (the authors' queue), and a run shorter than 12 frames uses the mean of all of it;
2. a similarity transform (scikit-image's ``estimate_transform("similarity")``, as the
   authors fit it) takes the smoothed stable points (landmarks 33,
   36, 39, 42, 45: nose tip and eye corners) onto the mean face's (:data:`MEAN_FACE_STABLE`,
   the same points of the authors' ``20words_mean_face.npy``, LRW's mean face, in a 256 x 256
   frame), and the frame is warped with it to 256 x 256 (``skimage.transform.warp``, bilinear,
   black outside, values truncated to uint8 as the authors' ``astype("uint8")``);
3. the frame's own landmarks, mapped by the same transform, place the crop: the 96 x 96 square
   centred on the mean of the 20 mouth points (48-67), rounded, and moved inside the 256 frame
   when it sticks out (the authors' ``cut_patch`` checks its 5 px threshold after moving the
   square, so it never refuses one; neither does this);
4. the crop is stored in grayscale (PIL ``convert("L")``: what the authors' data loader does
   with their RGB crops before the network's 88 x 88 centre crop, ``--grayscale`` by default).

Where deepsift differs: frames come from ``datasets.preprocess``'s windows of the cache
(``clip_len`` frames, ``stride`` apart; the authors smooth over consecutive video frames, so
``stride=1`` is their recipe), the faces and landmarks from its face detector (dlib's 68
points by default; the authors used RetinaFace + FAN), and identity across frames from its box
tracks (:func:`datasets.tracks.link_tracks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: landmarks 33, 36, 39, 42, 45 of the authors' mean face (``20words_mean_face.npy``, 256 px)
MEAN_FACE_STABLE = np.array(
    [
        [128.87017960974802, 137.30253355584708],
        [92.52245552947952, 94.36876013925871],
        [112.7724172413806, 94.94360869870115],
        [145.52511509158018, 94.5349986248377],
        [166.67710071343456, 93.56562295717796],
    ]
)
STABLE_POINTS = (33, 36, 39, 42, 45)
ALIGNED_SIZE = 256  # the aligned frame (STD_SIZE)
MOUTH_SIZE = 96  # crop-width / crop-height
SMOOTH = 12  # window-margin
MOUTH_POINTS = slice(48, 68)


def mouth_transforms(landmarks: Sequence[np.ndarray], smooth: int = SMOOTH) -> list[np.ndarray]:
    """The 3 x 3 frame-to-aligned similarity of each frame of one face's run of frames.

    Landmarks keep their dtype (the cache's float32, as the authors' ``.npy`` files) through
    the smoothing mean and the fit, so the transforms are the authors' to the last bit."""
    from skimage.transform import estimate_transform

    points = [np.asarray(p).reshape(68, 2) for p in landmarks]
    n = len(points)
    out = []
    for i in range(n):
        start = min(i, max(n - smooth, 0))
        smoothed = np.mean(np.stack(points[start : start + smooth]), axis=0)
        try:  # scikit-image >= 0.26 returns a falsy FailedEstimation whose attributes raise
            params = estimate_transform(
                "similarity", smoothed[list(STABLE_POINTS)], MEAN_FACE_STABLE
            ).params
        except AttributeError:
            params = np.full((3, 3), np.nan)
        out.append(np.array(params, dtype=np.float64))
    return out


def _start(centre: float, half: int, limit: int) -> int:
    """First pixel of a ``2 * half`` span centred on ``centre``, moved inside ``[0, limit)``."""
    if centre - half < 0:
        centre = half
    if centre + half > limit:
        centre = limit - half
    return round(centre) - half


def mouth_crop(
    frame: np.ndarray, landmarks: np.ndarray, matrix: np.ndarray, size: int = MOUTH_SIZE
) -> np.ndarray | None:
    """The ``size`` x ``size`` grayscale mouth crop (uint8) of an RGB uint8 ``frame`` under the
    3 x 3 frame-to-aligned ``matrix`` (:func:`mouth_transforms`); None when the transform is
    degenerate (landmarks that fix no similarity)."""
    from PIL import Image
    from skimage.transform import SimilarityTransform, warp

    m = np.asarray(matrix, np.float64)
    if not np.all(np.isfinite(m)):
        return None
    transform = SimilarityTransform(matrix=m)
    mouth = transform(np.asarray(landmarks).reshape(68, 2))[MOUTH_POINTS]
    cx, cy = np.mean(mouth, axis=0)
    half = size // 2
    left = _start(float(cx), half, ALIGNED_SIZE)
    top = _start(float(cy), half, ALIGNED_SIZE)
    aligned = warp(frame, inverse_map=transform.inverse, output_shape=(ALIGNED_SIZE,) * 2)
    aligned = (aligned * 255).astype(np.uint8)
    patch = np.ascontiguousarray(aligned[top : top + size, left : left + size])
    image = Image.fromarray(patch)
    return np.asarray(image.convert("L") if image.mode != "L" else image)


def mouth_crops(
    frames: Sequence[np.ndarray], landmarks: Sequence[np.ndarray], size: int = MOUTH_SIZE
) -> list[np.ndarray | None]:
    """The mouth crop of each frame of ONE face's run of consecutive frames (smoothed as the
    authors smooth, see the module doc); None where a mouth cannot be cut."""
    matrices = mouth_transforms(landmarks)
    return [
        mouth_crop(frame, points, matrix, size)
        for frame, points, matrix in zip(frames, landmarks, matrices, strict=True)
    ]
