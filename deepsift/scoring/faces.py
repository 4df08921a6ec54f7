"""Face crops for detectors trained on faces (MesoNet and other deepfake detectors).

A face detector (``datasets.faces.face_detector``) finds the faces of an image,
largest first. Each face is cut exactly as the training data was: with
:func:`datasets.faces.crop_transform` and :func:`datasets.faces.apply_crop`, the
functions ``datasets.preprocess`` cuts the crop cache with, under the member's
:class:`~datasets.faces.CropSettings` (``align`` on five landmarks or the unrotated
square of the box, ``margin``, ``size``; see :mod:`.models` for where they come
from), so a frame scored gives the pixels preprocessing gave. Outside the frame
is black, as in the cache.

What is scoring's own: faces whose detector box has a shorter side below
``min_size`` pixels are not scored (too little detail to judge) and at most
``max_faces`` are; an image with none left is ``not_applicable`` with the reason
("no face found", "face too small (< N px)"); each face is scored on its own and
the image's score is the maximum over its faces (:mod:`.assemble`). The output
record gives per face the detector's ``box`` and the ``crop`` region: the
axis-aligned bounding box, in image pixels and clipped to the image, of the region
the crop was cut from (for an aligned crop a rotated square, which this box
encloses; for an unaligned one the square itself).

Whether a detector scores faces is decided by ``--faces auto|on|off``; ``auto``
follows the detector config's ``input: face`` (see :mod:`.models`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from datasets.faces import DEFAULT_DETECTOR, CropSettings, Face, apply_crop

log = logging.getLogger(__name__)

NO_FACE = "no face found"
#: crop settings of a face member that states none (tests' stub members)
DEFAULT_CROP = CropSettings()


def too_small_reason(min_size: int) -> str:
    return f"face too small (< {min_size} px)"


class FaceDetectorLike(Protocol):
    def detect(self, image: np.ndarray) -> list[Any]: ...


@dataclass
class FaceCrop:
    box: tuple[float, float, float, float]  # the detector's box (x0, y0, x1, y1)
    crop_box: tuple[int, int, int, int]  # bounding box of the region cut, clipped to the image
    confidence: float | None
    image: Image.Image


def _field(face: Any, name: str) -> Any:
    return face.get(name) if isinstance(face, dict) else getattr(face, name, None)


def as_face(face: Any) -> Face:
    """A :class:`datasets.faces.Face` from a detector's face (a ``Face``, or a mapping or
    object with ``box``, ``score`` and ``landmarks``)."""
    if isinstance(face, Face):
        return face
    landmarks = _field(face, "landmarks")
    score = _field(face, "score")
    return Face(
        tuple(float(v) for v in _field(face, "box")),  # type: ignore[arg-type]
        float("nan") if score is None else float(score),
        None if landmarks is None else np.asarray(landmarks, dtype=np.float32),
    )


def crop_region(
    matrix: np.ndarray, side: int, width: int, height: int
) -> tuple[int, int, int, int]:
    """The image-pixel bounding box (x0, y0, x1, y1) of the ``side`` square that the frame-to-crop
    ``matrix`` cuts, rounded outwards and clipped to the ``width`` x ``height`` image."""
    m = np.asarray(matrix, dtype=np.float64)
    inverse = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], dtype=np.float64)
    points = corners @ inverse.T
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    eps = 1e-6  # an unaligned crop's corners are integers up to rounding
    return (
        max(0, int(np.floor(x0 + eps))),
        max(0, int(np.floor(y0 + eps))),
        min(width, int(np.ceil(x1 - eps))),
        min(height, int(np.ceil(y1 - eps))),
    )


def find_faces(
    image: Image.Image, detector: FaceDetectorLike, min_size: int = 64, max_faces: int = 8
) -> tuple[list[Face], str | None]:
    """The faces to score in ``image`` (largest first, at most ``max_faces``) and, when
    there are none, why."""
    found = detector.detect(np.asarray(image))
    if not found:
        return [], NO_FACE
    faces = []
    for face in map(as_face, found):
        x0, y0, x1, y1 = face.box
        if min(x1 - x0, y1 - y0) < min_size:
            continue
        faces.append(face)
        if len(faces) == max_faces:
            break
    if not faces:
        return [], too_small_reason(min_size)
    return faces, None


def cut_faces(
    image: Image.Image, faces: Sequence[Face], settings: CropSettings | None = None
) -> list[FaceCrop]:
    """Each face of ``image`` cut with ``settings`` (the preprocessing's own crop functions)."""
    settings = settings or DEFAULT_CROP
    frame = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    crops = []
    for face in faces:
        matrix, side = settings.transform(face)
        score = face.score
        crops.append(
            FaceCrop(
                face.box,
                crop_region(matrix, side, image.width, image.height),
                None if score is None or np.isnan(score) else float(score),
                Image.fromarray(apply_crop(frame, matrix, side)),
            )
        )
    return crops


def face_crops(
    image: Image.Image,
    detector: FaceDetectorLike,
    settings: CropSettings | None = None,
    min_size: int = 64,
    max_faces: int = 8,
) -> tuple[list[FaceCrop], str | None]:
    """The face crops to score in ``image`` (largest first) and, when there are none, why."""
    faces, reason = find_faces(image, detector, min_size, max_faces)
    return cut_faces(image, faces, settings), reason


def crop_slots(members: Sequence[Any]) -> tuple[list[CropSettings], dict[str, int]]:
    """The distinct crop settings of the face members (objects with ``label``, ``faces`` and
    ``face_crop``) in member order, and each face member's slot in that list; members
    that crop alike share a slot (their faces are cut once)."""
    slots: list[CropSettings] = []
    of: dict[str, int] = {}
    for member in members:
        if not member.faces:
            continue
        settings = getattr(member, "face_crop", None) or DEFAULT_CROP
        if settings not in slots:
            slots.append(settings)
        of[member.label] = slots.index(settings)
    return slots, of


def _canonical(name: str | None) -> str:
    return DEFAULT_DETECTOR if name in (None, "", "default") else str(name)


def detector_options(members: Sequence[Any], name: str | None = None) -> dict[str, Any]:
    """The :func:`datasets.faces.face_detector` options scoring uses for the face members.

    The detector that found the training faces, with its options (the first face
    member's ``face_crop.detector``), unless ``name`` (``--face-detector``) names another
    one; ``face_detector``'s defaults when nothing says; landmarks only when some member
    aligns or reads mouth crops. One detector serves every member, so when
    members name different ones the first wins (with a warning).
    """
    face_members = [m for m in members if m.faces]
    stated = [
        dict(m.face_crop.detector)
        for m in face_members
        if getattr(m, "face_crop", None) and m.face_crop.detector
    ]
    options: dict[str, Any] = dict(stated[0]) if stated else {}
    if any(s != options for s in stated[1:]):
        log.warning(
            "ensemble members found their training faces with different face detectors; "
            "using %s for all",
            options,
        )
    if name is not None and _canonical(name) != _canonical(options.get("name")):
        options = {"name": name}
    options.setdefault("name", "default")
    options["landmarks"] = any(
        (getattr(m, "face_crop", None) or DEFAULT_CROP).align
        or getattr(getattr(m, "detector", None), "needs_mouth", False)  # mouth crops
        for m in face_members
    )
    return options


class Fixed:
    """A picklable factory that returns one prebuilt face detector."""

    def __init__(self, detector: FaceDetectorLike) -> None:
        self.detector = detector

    def __call__(self) -> FaceDetectorLike:
        return self.detector
