"""Face crops for detectors trained on faces (MesoNet and other deepfake detectors).

A face detector (``datasets.faces.face_detector``) finds the faces of an image,
largest first. Each face's box is enlarged to a square ``margin`` times its
longer side around its centre (1.3 by default, the crop of FaceForensics++ and
DeepfakeBench), clipped to the image, and scored on its own; the image's score is
the maximum over its faces. Faces whose shorter side is below ``min_size`` pixels
are not scored (too little detail to judge); an image with none left is
``not_applicable`` with the reason ("no face found", "face too small (< N px)").

Whether a detector scores faces is decided by ``--faces auto|on|off``; ``auto``
follows the detector config's ``input: face`` (see :mod:`.models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

NO_FACE = "no face found"


def too_small_reason(min_size: int) -> str:
    return f"face too small (< {min_size} px)"


class FaceDetectorLike(Protocol):
    def detect(self, image: np.ndarray) -> list[Any]: ...


@dataclass
class FaceCrop:
    box: tuple[float, float, float, float]  # the detector's box (x0, y0, x1, y1)
    crop_box: tuple[int, int, int, int]  # the square region scored, clipped to the image
    confidence: float | None
    image: Image.Image


def _field(face: Any, name: str) -> Any:
    return face.get(name) if isinstance(face, dict) else getattr(face, name, None)


def square_box(
    box: tuple[float, float, float, float], margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """A square of side ``margin`` x the box's longer side, centred on it, clipped to the image."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * margin
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    right, bottom = round(cx + side / 2), round(cy + side / 2)
    return max(0, left), max(0, top), min(width, right), min(height, bottom)


def face_crops(
    image: Image.Image,
    detector: FaceDetectorLike,
    margin: float = 1.3,
    min_size: int = 64,
    max_faces: int = 8,
) -> tuple[list[FaceCrop], str | None]:
    """The face crops to score in ``image`` (largest first) and, when there are none, why."""
    faces = detector.detect(np.asarray(image))
    if not faces:
        return [], NO_FACE
    crops: list[FaceCrop] = []
    for face in faces:
        box = tuple(float(v) for v in _field(face, "box"))
        if min(box[2] - box[0], box[3] - box[1]) < min_size:
            continue
        crop_box = square_box(box, margin, *image.size)
        if crop_box[2] - crop_box[0] < 1 or crop_box[3] - crop_box[1] < 1:
            continue
        score = _field(face, "score")
        crops.append(
            FaceCrop(box, crop_box, None if score is None else float(score), image.crop(crop_box))
        )
        if len(crops) == max_faces:
            break
    if not crops:
        return [], too_small_reason(min_size)
    return crops, None


class Fixed:
    """A picklable factory that returns one prebuilt face detector."""

    def __init__(self, detector: FaceDetectorLike) -> None:
        self.detector = detector

    def __call__(self) -> FaceDetectorLike:
        return self.detector
